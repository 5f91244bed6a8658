extension SpotStore {
    func listProvisioningRequests(state: ProvisioningState?, _ page: PageRequest) async throws -> Page<ProvisioningRequest> {
        try await read { db in
            var query = ListQuery("SELECT \(ProvisioningRequest.columns) FROM provisioning_requests", after: page)
            query.equals("state", state?.rawValue)
            return Self.page(try query.fetch(db, limit: page.limit), limit: page.limit, map: ProvisioningRequest.init(row:))
        }
    }

    func provisioningRequest(_ id: String) async throws -> ProvisioningRequest? {
        try await read { db in
            try ProvisioningRequest.fetchOne(
                db.cachedStatement(sql: "SELECT \(ProvisioningRequest.columns) FROM provisioning_requests WHERE id = ?"), arguments: [id]
            )
        }
    }

    /// Pending requests with their pools, oldest first, except those waiting out a backoff.
    func pendingProvisioning() async throws -> [(ProvisioningRequest, Pool?)] {
        try await read { [self] db in
            try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT \(ProvisioningRequest.columns) FROM provisioning_requests
                        WHERE state = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY seq
                        """), arguments: [clock.now()]
            ).map { row in
                let request = ProvisioningRequest(row: row)
                return (request, try db.fetchPool(request.pool))
            }
        }
    }

    /// Applies what the provider did, in one transaction. A call that failed for now (`retry`) is tried again after
    /// `Autoscaler.retryDelay`, up to `maxAttempts` calls in all; then, or at once when the provider refused, the
    /// request fails, and for a replacement `fallback` (from `Domain/`) chooses the pool to ask instead, given the
    /// pools already tried for that node.
    @discardableResult
    func applyProvisioning(
        _ requestId: String, _ step: ProviderStep, maxAttempts: Int, lease: Lease, actor: String,
        fallback: @escaping @Sendable (_ lostPool: String, _ tried: Set<String>, CapacityView) -> Pool?
    ) async throws -> Bool {
        try await write { [self] db in
            let now = clock.now()
            try Self.checkFence(db, lease, now: now)
            guard
                let request = try ProvisioningRequest.fetchOne(
                    db.cachedStatement(sql: "SELECT \(ProvisioningRequest.columns) FROM provisioning_requests WHERE id = ?"),
                    arguments: [requestId]
                )
            else { return false }
            guard request.state == .pending else {
                // Cancelled (its demand went away) while the provider was starting its node: the node is taken and
                // given back at once, so that nothing is left running.
                guard case .fulfilled(let nodeId, let gpus) = step, try db.fetchNode(nodeId) == nil else { return false }
                try db.cachedStatement(
                    sql: """
                        INSERT INTO nodes (id, pool, gpus, gpus_allocated, state, provisioning_request_id, created_at, updated_at, idle_since)
                        VALUES (?, ?, ?, 0, 'ready', ?, ?, ?, ?)
                        """
                ).execute(arguments: [nodeId, request.pool, gpus, requestId, now, now, now])
                try Self.requestRelease(
                    db, node: try db.fetchNode(nodeId)!, reason: "late: its provisioning request was \(request.state.rawValue)", at: now,
                    actor: actor)
                return true
            }
            switch step {
            case .wait:
                return false
            case .submitted:
                try db.cachedStatement(
                    sql: "UPDATE provisioning_requests SET submitted_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?"
                ).execute(arguments: [now, requestId])
                return true
            case .retry(let message):
                let attempts = request.attempts + 1
                guard attempts >= maxAttempts else {
                    try db.cachedStatement(
                        sql: "UPDATE provisioning_requests SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?"
                    ).execute(arguments: [attempts, now + Autoscaler.retryDelay(afterAttempt: attempts), message, requestId])
                    try db.appendEvent(
                        "provisioning.retrying", subject: "provisioning-requests/\(requestId)", actor: actor, at: now,
                        data: ["pool": .string(request.pool), "attempt": .int(Int64(attempts)), "error": .string(message)])
                    return true
                }
                try db.cachedStatement(sql: "UPDATE provisioning_requests SET attempts = ?, last_error = ? WHERE id = ?")
                    .execute(arguments: [attempts, message, requestId])
                try Self.failRequest(
                    db, request, "gave up after \(attempts) attempt(s): \(message)", at: now, actor: actor, fallback: fallback)
                return true
            case .fulfilled(let nodeId, let gpus):
                guard try db.fetchNode(nodeId) == nil else { return false }
                try db.cachedStatement(
                    sql: """
                        INSERT INTO nodes (id, pool, gpus, gpus_allocated, state, provisioning_request_id, created_at, updated_at, idle_since)
                        VALUES (?, ?, ?, 0, 'ready', ?, ?, ?, ?)
                        """
                ).execute(arguments: [nodeId, request.pool, gpus, requestId, now, now, now])
                try db.appendEvent(
                    "node.registered", subject: "nodes/\(nodeId)", actor: actor, at: now,
                    data: ["pool": .string(request.pool), "gpus": .int(Int64(gpus)), "provisioning_request_id": .string(requestId)])
                try Self.fulfill(db, requestId: requestId, nodeId: nodeId, at: now, actor: actor)
                return true
            case .failed(let message):
                try Self.failRequest(db, request, message, at: now, actor: actor, fallback: fallback)
                return true
            }
        }
    }

    /// A request fails for good; a replacement's fallback is asked for, if one can be.
    static func failRequest(
        _ db: Database, _ request: ProvisioningRequest, _ message: String, at now: Millis, actor: String,
        fallback: (_ lostPool: String, _ tried: Set<String>, CapacityView) -> Pool?
    ) throws {
        let requestId = request.id
        try db.cachedStatement(sql: "UPDATE provisioning_requests SET state = 'failed', error = ?, resolved_at = ? WHERE id = ?")
            .execute(arguments: [message, now, requestId])
        try db.appendEvent(
            "provisioning.failed", subject: "provisioning-requests/\(requestId)", actor: actor, at: now,
            data: ["pool": .string(request.pool), "error": .string(message)])
        if let interruptionId = request.interruptionId {
            try db.appendStep(interruptionId, "replacement_failed", at: now, detail: "\(request.pool): \(message)")
        }
        guard let lostId = request.replacesNodeId, let lost = try db.fetchNode(lostId) else { return }
        let tried = Set(
            try String.fetchAll(
                db.cachedStatement(sql: "SELECT pool FROM provisioning_requests WHERE replaces_node_id = ?"), arguments: [lostId]))
        let capacity = CapacityView(
            pools: try Pool.fetchAll(db.cachedStatement(sql: "SELECT \(Pool.columns) FROM pools ORDER BY seq")),
            stats: try Self.poolStats(db, now: now))
        if let target = fallback(lost.pool, tried, capacity) {
            _ = try Self.requestReplacement(
                db, nodeId: lostId, pool: target, interruptionId: request.interruptionId, attemptNumber: request.attemptNumber + 1,
                now: now, actor: actor)
        } else if let gpuType = capacity.pools.first(where: { $0.name == lost.pool })?.gpuType {
            if let interruptionId = request.interruptionId {
                try db.appendStep(interruptionId, "replacement_unavailable", at: now, detail: "no pool with room for \(gpuType)")
            }
            try db.appendEvent(
                "provisioning.unavailable", subject: "nodes/\(lostId)", actor: actor, at: now, data: ["gpu_type": .string(gpuType)])
        }
    }

    /// Asks for nodes for pools below their `min_nodes` floor, as many as `decide` (from `Domain/`) says, given each
    /// pool's committed nodes, its floor requests in flight, and whether one failed in the last minute.
    func ensureMinimums(lease: Lease, actor: String, decide: @escaping @Sendable ([FloorFacts]) -> [(pool: String, count: Int)])
        async throws -> Int
    {
        // Pools below their floor counting live nodes and pending requests (what `committedNodes` counts).
        guard
            try await anyRow(
                """
                SELECT 1 FROM pools p WHERE p.min_nodes > 0 AND p.min_nodes >
                    (SELECT COUNT(*) FROM nodes n WHERE n.pool = p.name AND n.state <> 'terminated')
                    + (SELECT COUNT(*) FROM provisioning_requests r WHERE r.pool = p.name AND r.state = 'pending')
                """)
        else { return 0 }
        return try await write { [self] db in
            let now = clock.now()
            try Self.checkFence(db, lease, now: now)
            let pools = try Pool.fetchAll(db.cachedStatement(sql: "SELECT \(Pool.columns) FROM pools WHERE min_nodes > 0"))
            guard !pools.isEmpty else { return 0 }
            let stats = try Self.poolStats(db, now: now)
            var facts: [FloorFacts] = []
            for pool in pools {
                let committed = stats[pool.name]?.committedNodes ?? 0
                guard committed < pool.minNodes else {
                    facts.append(FloorFacts(pool: pool, committedNodes: committed, pendingFloorRequests: 0, failedLately: false))
                    continue
                }
                let failedLately =
                    try Int.fetchOne(
                        db.cachedStatement(
                            sql:
                                "SELECT COUNT(*) FROM provisioning_requests WHERE pool = ? AND reason = 'min_nodes' AND state = 'failed' AND resolved_at > ?"
                        ),
                        arguments: [pool.name, now - Autoscaler.floorRetryAfter]) ?? 0
                let pending =
                    try Int.fetchOne(
                        db.cachedStatement(
                            sql: "SELECT COUNT(*) FROM provisioning_requests WHERE pool = ? AND reason = 'min_nodes' AND state = 'pending'"),
                        arguments: [pool.name]) ?? 0
                facts.append(
                    FloorFacts(pool: pool, committedNodes: committed, pendingFloorRequests: pending, failedLately: failedLately > 0))
            }
            var created = 0
            for (pool, count) in decide(facts) {
                for _ in 0..<count {
                    let id = Ids.new("prov")
                    try db.cachedStatement(
                        sql:
                            "INSERT INTO provisioning_requests (id, pool, reason, state, created_at) VALUES (?, ?, 'min_nodes', 'pending', ?)"
                    ).execute(arguments: [id, pool, now])
                    try db.appendEvent(
                        "provisioning.requested", subject: "provisioning-requests/\(id)", actor: actor, at: now,
                        data: ["pool": .string(pool), "reason": .string("min_nodes")])
                    created += 1
                }
            }
            return created
        }
    }

    /// Gives back the on-demand fallback nodes that `decide` (from `Domain/`) picks among those idle for
    /// `idleSeconds`, given the free spot GPUs of each type and the live nodes of each pool.
    func scaleDown(
        idleSeconds: Int64, lease: Lease, actor: String,
        decide: @escaping @Sendable ([IdleFallback], _ spotFree: [String: Int], _ liveNodes: [String: Int]) -> [String]
    ) async throws -> Int {
        let idleQuery = """
            SELECT n.id AS id, n.gpus AS gpus, p.gpu_type AS gpu_type, p.name AS pool, p.min_nodes AS min_nodes
            FROM nodes n JOIN pools p ON p.name = n.pool
            JOIN provisioning_requests r ON r.id = n.provisioning_request_id AND r.reason = 'fallback'
            WHERE p.capacity_type = 'on_demand' AND n.state = 'ready' AND n.gpus_allocated = 0
              AND n.idle_since IS NOT NULL AND n.idle_since <= ?
            """
        guard try await anyRow(idleQuery, [clock.now() - idleSeconds * 1000]) else { return 0 }
        return try await write { [self] db in
            let now = clock.now()
            try Self.checkFence(db, lease, now: now)
            let idle = try Row.fetchAll(
                db.cachedStatement(sql: idleQuery + " ORDER BY n.seq"), arguments: [now - idleSeconds * 1000]
            ).map { IdleFallback(nodeId: $0["id"], pool: $0["pool"], gpus: $0["gpus"], gpuType: $0["gpu_type"], minNodes: $0["min_nodes"]) }
            guard !idle.isEmpty else { return 0 }
            var spotFree: [String: Int] = [:]
            for row in try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT p.gpu_type AS gpu_type, COALESCE(SUM(n.gpus - n.gpus_allocated), 0) AS free
                        FROM nodes n JOIN pools p ON p.name = n.pool
                        WHERE p.capacity_type = 'spot' AND n.state = 'ready' GROUP BY p.gpu_type
                        """))
            {
                spotFree[row["gpu_type"]] = row["free"]
            }
            var liveNodes: [String: Int] = [:]
            for pool in Set(idle.map(\.pool)) {
                liveNodes[pool] =
                    try Int.fetchOne(
                        db.cachedStatement(sql: "SELECT COUNT(*) FROM nodes WHERE pool = ? AND state <> 'terminated'"), arguments: [pool])
                    ?? 0
            }
            var released = 0
            for nodeId in decide(idle, spotFree, liveNodes) {
                guard let node = try db.fetchNode(nodeId) else { continue }
                try Self.requestRelease(db, node: node, reason: "scaled down: idle on-demand fallback, spot is back", at: now, actor: actor)
                released += 1
            }
            return released
        }
    }
}
