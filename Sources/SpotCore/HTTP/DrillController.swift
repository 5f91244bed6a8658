import Hummingbird

/// `/v1/drills`: rehearse a reclaim. A real drill injects termination notices (source `drill`) and the whole workflow
/// runs; a dry run answers what would happen and changes nothing (operator to start; any reader to look).
struct DrillController {
    let store: any DrillStore
    let signal: WorkerSignal
    let metrics: SpotMetrics
    let marginSeconds: Int64

    func register(on routes: RouteBook) {
        routes.add(.post, "/v1/drills", .operate, use: create)
        routes.add(.get, "/v1/drills", .read, use: list)
        routes.add(.get, "/v1/drills/:id", .read, use: get)
    }

    static let maxNodes: Int64 = 1000

    @Sendable func create(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let body = try await request.jsonObject(context)
        try body.rejectUnknown(["pool", "count", "fraction", "notice_seconds", "dry_run"])
        let pool = try body.string("pool", required: true, maxLength: 63, pattern: .dnsLabel)!
        let count = try body.int("count", range: 1...Self.maxNodes)
        let fraction = try body.double("fraction", range: 0...1)
        let size: DrillRequest.Size
        switch (count, fraction) {
        case (let count?, nil): size = .count(Int(count))
        case (nil, let fraction?):
            guard fraction > 0 else { throw Problem.invalidField("fraction", "must be more than 0 and at most 1") }
            size = .fraction(fraction)
        case (nil, nil): throw Problem.invalidField("count", "is required (or give fraction instead)")
        case (_?, _?): throw Problem.invalidField("fraction", "cannot be given with count: give one of them")
        }
        let drillRequest = DrillRequest(
            pool: pool, size: size, noticeSeconds: try body.int("notice_seconds", range: 1...3600) ?? 120,
            dryRun: try body.bool("dry_run") ?? false)
        if drillRequest.dryRun {
            let margin = marginSeconds
            let plan = try await store.planDrill(drillRequest) { cases, capacity, now in
                Drain.decide(cases, capacity: capacity, now: now, marginSeconds: margin)
            }
            return View.drillPlan(plan).response()
        }
        let started = ContinuousClock.now
        let drill = try await store.startDrill(drillRequest, actor: context.caller.name)
        signal.poke()
        // Drill notices count as notices (source `drill`), cordoned in the transaction that recorded them.
        let elapsed = ContinuousClock.now - started
        for _ in drill.interruptionIds {
            metrics.notice(source: "drill", kind: InterruptionKind.termination.rawValue)
            metrics.cordonLatency(elapsed)
        }
        guard let report = try await store.drillReport(drill.id) else { throw Problem.notFound("drill", drill.id) }
        var response = View.drillReport(report).response(.created)
        response.headers[.location] = "/v1/drills/\(drill.id)"
        return response
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let page = try Query(request, allowed: ["limit", "cursor"]).page()
        return View.page(try await store.listDrills(page), View.drill).response()
    }

    @Sendable func get(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let id = try context.pathParameter("id")
        guard let report = try await store.drillReport(id) else { throw Problem.notFound("drill", id) }
        return View.drillReport(report).response()
    }
}

extension View {
    static func drill(_ drill: Drill) -> JSONValue {
        .object([
            "id": .string(drill.id), "pool": .string(drill.pool), "node_ids": .array(drill.nodeIds.map(JSONValue.string)),
            "interruption_ids": .array(drill.interruptionIds.map(JSONValue.string)), "notice_seconds": .int(drill.noticeSeconds),
            "started_at": time(drill.startedAt), "created_by": .string(drill.createdBy),
        ])
    }

    /// Seconds, with millisecond precision, or null.
    static func seconds(_ millis: Millis?) -> JSONValue { millis.map { .double(Double($0) / 1000) } ?? .null }

    static let maxDrillSteps = 1000

    static func drillReport(_ report: DrillReport) -> JSONValue {
        guard case .object(var fields) = drill(report.drill) else { return .null }
        fields["state"] = .string(report.completed ? "completed" : "running")
        fields["outcome"] = .object([
            "time_to_cordon_seconds": seconds(report.timeTo("cordoned")),
            "time_to_requeue_seconds": seconds(report.timeTo("requeued")),
            "time_to_drain_seconds": seconds(report.timeTo("node_drained")),
            "time_to_full_capacity_seconds": seconds(report.fullCapacityAt.map { $0 - report.drill.startedAt }),
            "jobs_requeued": int(report.jobsRequeued), "premium_jobs_requeued": int(report.premiumJobsRequeued),
            "gpu_minutes_lost": .double((Double(report.lostGPUMillis) / 60_000 * 100).rounded() / 100),
            "replacements_ready": int(report.replacementsReady), "interruptions_active": int(report.active),
        ])
        fields["timeline"] = .array(
            report.steps.prefix(maxDrillSteps).map { step in
                .object([
                    "at": time(step.at), "node_id": .string(step.nodeId), "step": .string(step.step), "job_id": string(step.jobId),
                    "detail": string(step.detail),
                ])
            })
        fields["timeline_truncated"] = .bool(report.steps.count > maxDrillSteps)
        return .object(fields)
    }

    static func drillPlan(_ plan: DrillPlan) -> JSONValue {
        .object([
            "dry_run": .bool(true), "pool": .string(plan.pool), "node_ids": .array(plan.nodeIds.map(JSONValue.string)),
            "notice_seconds": .int(plan.noticeSeconds),
            "jobs_hit": .array(
                plan.jobs.map { hit in
                    .object([
                        "job_id": .string(hit.jobId), "node_id": .string(hit.nodeId), "tier": .string(hit.tier.rawValue),
                        "gpus": int(hit.gpus), "action": .string(hit.action),
                    ])
                }),
            "replacements": .array(
                plan.replacements.map { replacement in
                    .object([
                        "node_id": .string(replacement.nodeId), "pool": string(replacement.pool),
                        "capacity_type": string(replacement.capacityType?.rawValue),
                    ])
                }),
            "summary": .object([
                "nodes": int(plan.nodeIds.count), "jobs": int(plan.jobs.count),
                "premium_jobs": int(plan.jobs.filter { $0.tier == .premium }.count), "gpus": int(plan.jobs.map(\.gpus).reduce(0, +)),
                "replacements_unavailable": int(plan.replacements.filter { $0.pool == nil }.count),
            ]),
        ])
    }
}
