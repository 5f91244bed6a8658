import Foundation

/// What one demand pass did.
struct DemandReport: Sendable, Equatable {
    var requested = 0
    var cancelled = 0
}

extension SpotStore {
    /// At most this many queued jobs are weighed per pass (the head of the queue, in the scheduler's order).
    static let demandHorizon = 5000

    /// One demand pass, in one transaction: reads the queue's head (jobs and pending service replicas), the free
    /// capacity, the pending requests and the pools; `plan` (from `Domain/`) decides; this writes the new demand
    /// requests, cancels the demand requests nobody needs, and records each queued job's `pending_reason` where it
    /// changed.
    func planDemand(lease: Lease, actor: String, autoPlace: Bool, plan: @escaping @Sendable (DemandInput) -> DemandPlan)
        async throws -> DemandReport
    {
        guard
            try await anyRow(
                """
                SELECT 1 FROM jobs WHERE state = 'queued'
                UNION ALL SELECT 1 FROM service_replicas WHERE state = 'pending'
                UNION ALL SELECT 1 FROM provisioning_requests WHERE state = 'pending' AND reason = 'demand'
                LIMIT 1
                """)
        else { return DemandReport() }
        // Decided on a read first: a steady queue (nothing to ask, cancel or reword) never takes the writer.
        let steady = try await read { [self] db in
            let (input, current) = try Self.demandInput(
                db, now: clock.now(), autoPlace: autoPlace, admissionLimit: admissionLimit, catalog: catalog)
            let decided = plan(input)
            return decided.requests.isEmpty && decided.cancel.isEmpty && decided.reasons.allSatisfy { current[$0.key] == $0.value }
        }
        guard !steady else { return DemandReport() }
        return try await write { [self] db in
            let now = clock.now()
            try Self.checkFence(db, lease, now: now)
            let (input, _) = try Self.demandInput(db, now: now, autoPlace: autoPlace, admissionLimit: admissionLimit, catalog: catalog)
            let decided = plan(input)
            var report = DemandReport()
            var ids: [String] = []
            for request in decided.requests {
                let id = Ids.new("prov")
                ids.append(id)
                try db.cachedStatement(
                    sql: "INSERT INTO provisioning_requests (id, pool, reason, state, created_at) VALUES (?, ?, 'demand', 'pending', ?)"
                ).execute(arguments: [id, request.pool, now])
                try db.appendEvent(
                    "provisioning.requested", subject: "provisioning-requests/\(id)", actor: actor, at: now,
                    data: ["pool": .string(request.pool), "reason": .string(Autoscaler.demandReason), "for": .string(request.forWork)])
                report.requested += 1
            }
            for id in decided.cancel {
                try db.cachedStatement(
                    sql: """
                        UPDATE provisioning_requests SET state = 'cancelled', error = 'the demand went away', resolved_at = ?
                        WHERE id = ? AND state = 'pending'
                        """
                ).execute(arguments: [now, id])
                guard db.changesCount == 1 else { continue }
                try db.appendEvent("provisioning.cancelled", subject: "provisioning-requests/\(id)", actor: actor, at: now)
                report.cancelled += 1
            }
            for (job, planned) in decided.reasons {
                var reason = planned
                if let text = reason, text.contains("{request ") {
                    for (index, id) in ids.enumerated() { reason = reason?.replacingOccurrences(of: Demand.placeholder(index), with: id) }
                }
                try db.cachedStatement(
                    sql: "UPDATE jobs SET pending_reason = ? WHERE id = ? AND state = 'queued' AND pending_reason IS NOT ?"
                ).execute(arguments: [reason, job, reason])
            }
            return report
        }
    }
}

extension SpotStore {
    /// What the demand pass weighs, read in `db` at `now`; with each queued job's current `pending_reason`.
    static func demandInput(_ db: Database, now: Millis, autoPlace: Bool, admissionLimit: Int64, catalog: Catalog)
        throws -> (DemandInput, [String: String?])
    {
        let jobs = try Job.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT \(Job.columns) FROM jobs WHERE state = 'queued'
                    ORDER BY CASE tier WHEN 'premium' THEN 0 WHEN 'standard' THEN 1 ELSE 2 END, priority DESC, seq LIMIT ?
                    """), arguments: [Self.demandHorizon])
        var items = jobs.map { DemandItem(id: $0.id, kind: .job, job: $0) }
        for row in try Row.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT r.service_id, r.id, s.tier, s.gpus_per_replica, s.gpu_type FROM service_replicas r
                    JOIN services s ON s.id = r.service_id WHERE r.state = 'pending' ORDER BY s.seq, r.seq LIMIT ?
                    """), arguments: [Self.demandHorizon])
        {
            let service: String = row[0]
            let replica: String = row[1]
            let job = Job(
                id: "\(service)/\(replica)", seq: 0, tier: Tier(rawValue: row[2]) ?? .bestEffort, gpus: row[3], gpuType: row[4],
                checkpointable: true, priority: 0, state: .queued, attempt: 0, requeueCount: 0, submittedAt: now, updatedAt: now)
            items.append(DemandItem(id: job.id, kind: .replica(service: service), job: job))
        }
        // The scheduler's order: by tier, a tier's replicas before its jobs (the service pass places them first).
        items = items.enumerated().sorted { lhs, rhs in
            let left = (lhs.element.job.tier.rank, lhs.element.kind == .job ? 1 : 0, lhs.offset)
            let right = (rhs.element.job.tier.rank, rhs.element.kind == .job ? 1 : 0, rhs.offset)
            return left < right
        }.map(\.element)
        let catalog = try catalog.current(db)
        let input = DemandInput(
            items: items,
            freeNodes: try Node.fetchAll(
                db.cachedStatement(
                    sql: "SELECT \(Node.columns) FROM nodes WHERE state = 'ready' AND gpus_allocated < gpus ORDER BY seq")),
            pending: try ProvisioningRequest.fetchAll(
                db.cachedStatement(
                    sql: "SELECT \(ProvisioningRequest.columns) FROM provisioning_requests WHERE state = 'pending' ORDER BY seq")),
            pools: catalog.pools,
            policies: Dictionary(
                Self.withDefaults(catalog.policies, admissionLimit: admissionLimit, now: now).map { ($0.tier, $0) },
                uniquingKeysWith: { first, _ in first }),
            stats: try Self.poolStats(db, now: now),
            failedLately: Set(
                try String.fetchAll(
                    db.cachedStatement(
                        sql: """
                            SELECT DISTINCT pool FROM provisioning_requests
                            WHERE reason = 'demand' AND state = 'failed' AND resolved_at > ?
                            """), arguments: [now - Autoscaler.floorRetryAfter])),
            autoPlace: autoPlace)
        return (input, Dictionary(jobs.map { ($0.id, $0.pendingReason) }, uniquingKeysWith: { first, _ in first }))
    }

    /// Gives back the idle nodes `decide` (from `Domain/`) picks among those idle for `idleSeconds`: nodes asked for
    /// demand that went away, and any idle node of a pool above its `max_nodes`. Each is released through the
    /// provider (`requestRelease`).
    func releaseIdle(idleSeconds: Int64, lease: Lease, actor: String, decide: @escaping @Sendable ([IdleNode]) -> [(String, String)])
        async throws -> Int
    {
        // Idle nodes asked for demand (found from the few demand requests, not by reading every node), and idle
        // nodes of pools above their max_nodes (a count per pool).
        let query = """
            SELECT n.id, n.pool, 1, n.seq FROM provisioning_requests r JOIN nodes n ON n.id = r.node_id
            WHERE r.reason = 'demand' AND r.state = 'fulfilled'
              AND n.state = 'ready' AND n.gpus_allocated = 0 AND n.idle_since IS NOT NULL AND n.idle_since <= ?
            UNION
            SELECT n.id, n.pool, 0, n.seq FROM pools p JOIN nodes n ON n.pool = p.name
            WHERE p.max_nodes < (SELECT COUNT(*) FROM nodes m WHERE m.pool = p.name AND m.state <> 'terminated')
              AND n.state = 'ready' AND n.gpus_allocated = 0 AND n.idle_since IS NOT NULL AND n.idle_since <= ?
            """
        let cutoff = clock.now() - idleSeconds * 1000
        guard try await anyRow(query, [cutoff, cutoff]) else { return 0 }
        return try await write { [self] db in
            let now = clock.now()
            try Self.checkFence(db, lease, now: now)
            var idle: [IdleNode] = []
            var live: [String: Int] = [:]
            let cutoff = now - idleSeconds * 1000
            var seen: Set<String> = []
            for row in try Row.fetchAll(db.cachedStatement(sql: query + " ORDER BY 4, 3"), arguments: [cutoff, cutoff]) {
                let nodeId: String = row[0]
                guard seen.insert(nodeId).inserted else { continue }
                let poolName: String = row[1]
                guard let pool = try db.fetchPool(poolName) else { continue }
                if live[poolName] == nil {
                    live[poolName] =
                        try Int.fetchOne(
                            db.cachedStatement(sql: "SELECT COUNT(*) FROM nodes WHERE pool = ? AND state <> 'terminated'"),
                            arguments: [poolName]) ?? 0
                }
                idle.append(IdleNode(nodeId: nodeId, pool: pool, forDemand: row[2] as Bool, liveNodes: live[poolName] ?? 0))
            }
            var released = 0
            for (nodeId, reason) in decide(idle) {
                guard let node = try db.fetchNode(nodeId), node.state == .ready, node.gpusAllocated == 0 else { continue }
                try Self.requestRelease(db, node: node, reason: reason, at: now, actor: actor)
                released += 1
            }
            return released
        }
    }
}
