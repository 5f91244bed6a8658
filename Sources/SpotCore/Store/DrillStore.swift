import Foundation

/// Drills: notices injected by spotd itself, through the same recording as a cloud's.
extension SpotStore {
    /// The pool's nodes a drill may take: ready, with no termination under way.
    private static func drillable(_ db: Database, pool: String) throws -> [String] {
        try String.fetchAll(
            db,
            sql: """
                SELECT id FROM nodes WHERE pool = ? AND state = 'ready' AND id NOT IN (
                    SELECT node_id FROM interruptions WHERE kind = 'termination' AND state IN ('received', 'draining', 'drained'))
                ORDER BY id
                """, arguments: [pool])
    }

    private static func chosen(_ db: Database, _ request: DrillRequest) throws -> [String] {
        guard try db.fetchPool(request.pool) != nil else { throw StoreError.notFound(what: "pool", id: request.pool) }
        let eligible = try drillable(db, pool: request.pool)
        let count = request.nodeCount(eligible: eligible.count)
        guard count <= eligible.count else {
            throw StoreError.unprocessable(
                field: { if case .count = request.size { "count" } else { "fraction" } }(),
                "asks for \(count) node(s), more than the \(eligible.count) ready node(s) of pool \(request.pool) without an interruption")
        }
        return DrillRequest.choose(eligible, count: count)
    }

    /// Starts a drill: one termination notice (source `drill`, deadline in `noticeSeconds`) per chosen node, and the
    /// drill row, in one transaction.
    func startDrill(_ request: DrillRequest, actor: String) async throws -> Drill {
        try await write { [self] db in
            let now = clock.now()
            let nodes = try Self.chosen(db, request)
            let id = Ids.new("drill")
            let afterEvent = try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(id), 0) FROM events") ?? 0
            var interruptions: [String] = []
            for node in nodes {
                let notice = Notice(
                    nodeId: node, kind: .termination, deadline: now + request.noticeSeconds * 1000, source: "drill",
                    eventId: "\(id):\(node)")
                interruptions.append(try Self.record(db, notice, at: now, actor: actor).0)
            }
            try db.execute(
                sql: """
                    INSERT INTO drills (id, pool, node_count, notice_seconds, node_ids, interruption_ids, after_event, started_at, created_by)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    id, request.pool, nodes.count, request.noticeSeconds, nodes.joined(separator: ","),
                    interruptions.joined(separator: ","), afterEvent, now, actor,
                ])
            try db.appendEvent(
                "drill.started", subject: "drills/\(id)", actor: actor, at: now,
                data: [
                    "pool": .string(request.pool), "node_ids": .array(nodes.map(JSONValue.string)),
                    "notice_seconds": .int(request.noticeSeconds),
                ])
            return Drill(
                id: id, pool: request.pool, nodeIds: nodes, interruptionIds: interruptions, noticeSeconds: request.noticeSeconds,
                startedAt: now, createdBy: actor)
        }
    }

    /// A dry run: what a drill would do now, decided by `decide` (the drain's own decision) on a read; writes nothing.
    func planDrill(_ request: DrillRequest, decide: @escaping @Sendable ([DrainCase], CapacityView, Millis) -> [DrainDecision])
        async throws -> DrillPlan
    {
        try await read { [self] db in
            let now = clock.now()
            let nodes = try Self.chosen(db, request)
            let deadline = now + request.noticeSeconds * 1000
            let cases = try nodes.compactMap { id -> DrainCase? in
                guard let node = try db.fetchNode(id) else { return nil }
                let interruption = Interruption(
                    id: "dry-run:\(id)", seq: 0, nodeId: id, pool: node.pool, kind: .termination, source: "drill", eventId: "dry-run",
                    state: .received, deadline: deadline, receivedAt: now, completedAt: nil, nodeWasLive: true)
                return DrainCase(interruption: interruption, node: node, jobs: try db.jobsOnNode(id))
            }
            let capacity = CapacityView(
                pools: try Pool.fetchAll(db.cachedStatement(sql: "SELECT \(Pool.columns) FROM pools ORDER BY seq")),
                stats: try Self.poolStats(db, now: now),
                policies: Dictionary(
                    try Self.policies(db, defaults: admissionLimit, now: now).map { ($0.tier, $0) }, uniquingKeysWith: { first, _ in first }
                ))
            return DrillPlan(
                pool: request.pool, nodeIds: nodes, noticeSeconds: request.noticeSeconds, decisions: decide(cases, capacity, now))
        }
    }

    static func drill(_ row: Row) -> Drill {
        let list = { (text: String) in text.split(separator: ",").map(String.init) }
        return Drill(
            id: row["id"], pool: row["pool"], nodeIds: list(row["node_ids"]), interruptionIds: list(row["interruption_ids"]),
            noticeSeconds: row["notice_seconds"], startedAt: row["started_at"], createdBy: row["created_by"])
    }

    static let drillColumns = "seq, id, pool, notice_seconds, node_ids, interruption_ids, after_event, started_at, created_by"

    func listDrills(_ page: PageRequest) async throws -> Page<Drill> {
        try await read { db in
            Self.page(
                try Row.fetchAll(
                    db, sql: "SELECT \(Self.drillColumns) FROM drills WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                    arguments: [page.after == 0 ? Int64.max : page.after, page.limit + 1]), limit: page.limit, map: Self.drill)
        }
    }

    /// A drill and what has come of it so far.
    func drillReport(_ id: String) async throws -> DrillReport? {
        try await read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT \(Self.drillColumns) FROM drills WHERE id = ?", arguments: [id]) else {
                return nil
            }
            let drill = Self.drill(row)
            var steps: [DrillReport.Step] = []
            var active = 0
            var requeued: [String] = []
            for interruptionId in drill.interruptionIds {
                guard let detail = try Self.interruptionDetail(db, id: interruptionId) else { continue }
                if ![.completed, .unmatched].contains(detail.interruption.state) { active += 1 }
                for step in detail.timeline {
                    steps.append(
                        .init(at: step.at, nodeId: detail.interruption.nodeId, step: step.step, jobId: step.jobId, detail: step.detail))
                    if step.step == "requeued", let job = step.jobId { requeued.append(job) }
                }
            }
            steps.sort { ($0.at, $0.nodeId) < ($1.at, $1.nodeId) }
            // Work lost: recorded on each requeue this drill's interruptions caused (the events since the drill, through
            // the type index).
            var lost: Int64 = 0
            var premium = 0
            let ids = Set(drill.interruptionIds)
            for event in try Row.fetchAll(
                db, sql: "SELECT data FROM events WHERE type = 'job.requeued' AND id > ? ORDER BY id",
                arguments: [row["after_event"] as Int64])
            {
                let data = (try? JSONValue.parse(Data((event["data"] as String).utf8))) ?? .null
                guard case .string(let interruption)? = data[demo: "interruption_id"], ids.contains(interruption) else { continue }
                if case .int(let millis)? = data[demo: "lost_gpu_ms"] { lost += millis }
            }
            for job in Set(requeued) where try db.fetchJob(job)?.tier == .premium { premium += 1 }
            // Full capacity: every drilled node has a fulfilled replacement; the time is the last of them.
            let fulfilled = try Row.fetchAll(
                db,
                sql: """
                    SELECT replaces_node_id, MIN(resolved_at) AS at FROM provisioning_requests
                    WHERE interruption_id IN (SELECT value FROM json_each(?)) AND state = 'fulfilled' GROUP BY replaces_node_id
                    """, arguments: [JSONValue.array(drill.interruptionIds.map(JSONValue.string)).jsonText])
            let ready = fulfilled.count
            let fullAt: Millis? = ready >= drill.nodeIds.count ? fulfilled.compactMap { $0["at"] as Millis? }.max() : nil
            return DrillReport(
                drill: drill, steps: steps, active: active, jobsRequeued: Set(requeued).count, premiumJobsRequeued: premium,
                lostGPUMillis: lost, replacementsReady: ready, fullCapacityAt: fullAt)
        }
    }
}
