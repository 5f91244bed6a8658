import Hummingbird

/// `/v1/jobs` and `/v1/placements`: workloads and where they run.
struct JobController {
    let store: any ResourceStore
    let clock: any SpotClock
    let signal: WorkerSignal
    let metrics: SpotMetrics

    func register(on routes: RouteBook) {
        routes.add(.post, "/v1/jobs", .schedule, use: create)
        routes.add(.get, "/v1/jobs", .readWork, use: list)
        routes.add(.get, "/v1/jobs/:id", .readWork, use: get)
        routes.add(.post, "/v1/jobs/:id/checkpoints", .report, use: checkpoint)
        routes.add(.post, "/v1/jobs/:id/complete", .report, use: complete)
        routes.add(.post, "/v1/jobs/:id/fail", .report, use: fail)
        routes.add(.post, "/v1/jobs/:id/cancel", .schedule, use: cancel)
        routes.add(.post, "/v1/placements", .schedule, use: place)
    }

    @Sendable func create(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let body = try await request.jsonObject(context)
        try body.rejectUnknown(["id", "tier", "gpus", "gpu_type", "checkpointable", "expected_duration_seconds", "priority", "nodes"])
        let submission = JobSubmission(
            id: try body.string("id", maxLength: 128, pattern: .identifier) ?? Ids.new("job"),
            tier: try body.enumeration("tier", Tier.self, required: true)!,
            gpus: Int(try body.int("gpus", required: true, range: 1...64)!),
            gpuType: try body.string("gpu_type", maxLength: 64, pattern: .identifier),
            checkpointable: try body.bool("checkpointable") ?? false,
            expectedDurationSeconds: try body.int("expected_duration_seconds", range: 1...31_536_000),
            priority: try body.int("priority", range: -1_000_000...1_000_000) ?? 0,
            nodes: Int(try body.int("nodes", range: 1...64) ?? 1))
        let job = try await store.submitJob(submission, actor: context.caller.name)
        signal.poke()
        var response = View.job(job).response(.created)
        response.headers[.location] = "/v1/jobs/\(job.id)"
        return response
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let query = try Query(request, allowed: ["state", "tier", "node", "limit", "cursor"])
        let filter = JobFilter(
            state: try query.enumeration("state", JobState.self), tier: try query.enumeration("tier", Tier.self),
            node: try query.string("node"))
        return await View.page(try store.listJobs(filter, try query.page())) { View.job($0) }.response()
    }

    @Sendable func get(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let id = try context.pathParameter("id")
        guard let (job, history) = try await store.job(id) else { throw Problem.notFound("job", id) }
        return View.job(job, history: history).response()
    }

    @Sendable func checkpoint(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let body = try await request.jsonObject(context)
        try body.rejectUnknown(["uri", "step", "attempt"])
        let job = try await store.reportCheckpoint(
            jobId: try context.pathParameter("id"), uri: try body.string("uri", required: true, maxLength: 2048)!,
            step: try body.int("step", required: true, range: 0...Int64(1) << 53)!,
            attempt: try body.int("attempt", range: 0...1_000_000_000), actor: context.caller.name)
        signal.poke()
        return View.job(job).response()
    }

    @Sendable func complete(_ request: Request, context: AppRequestContext) async throws -> Response {
        try await finish(request, context: context, outcome: .completed)
    }

    @Sendable func fail(_ request: Request, context: AppRequestContext) async throws -> Response {
        try await finish(request, context: context, outcome: .failed)
    }

    @Sendable func cancel(_ request: Request, context: AppRequestContext) async throws -> Response {
        try await finish(request, context: context, outcome: .cancelled)
    }

    private func finish(_ request: Request, context: AppRequestContext, outcome: JobOutcome) async throws -> Response {
        _ = try Query(request, allowed: [])
        let body = try await request.optionalJSONObject(context)
        try body.rejectUnknown(["attempt", "reason"])
        let job = try await store.finishJob(
            try context.pathParameter("id"), outcome: outcome, attempt: try body.int("attempt", range: 0...1_000_000_000),
            reason: try body.string("reason", maxLength: 1024), actor: context.caller.name)
        signal.poke()
        return View.job(job).response()
    }

    @Sendable func place(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let body = try await request.jsonObject(context)
        try body.rejectUnknown(["job_id", "dry_run"])
        let jobId = try body.string("job_id", required: true, maxLength: 128, pattern: .identifier)!
        let dryRun = try body.bool("dry_run") ?? false
        do {
            let result = try await store.place(jobId: jobId, dryRun: dryRun, actor: context.caller.name)
            metrics.placement(dryRun ? "dry_run" : "placed")
            return JSONValue.object([
                "job_id": .string(result.jobId), "node_id": .string(result.nodeId),
                "node_ids": .array(result.nodeIds.map(JSONValue.string)), "pool": .string(result.pool),
                "capacity_type": .string(result.capacityType.rawValue), "attempt": .int(result.attempt),
                "reasons": .array(result.reasons.map(JSONValue.string)), "dry_run": .bool(dryRun),
            ]).response(dryRun ? .ok : .created)
        } catch let error as StoreError {
            if case .noCapacity = error {
                metrics.placement("no_capacity")
                signal.poke()
            }
            throw error
        }
    }
}
