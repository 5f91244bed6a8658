import GRDB

/// What a provider did with a pending request.
public enum ProviderStep: Sendable, Equatable {
    case wait
    /// The request was handed to an external provisioner.
    case submitted
    /// The provider made a node; spotd registers it.
    case fulfilled(nodeId: String, gpus: Int)
    case failed(String)
}

extension SQLiteStore {
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

    /// Pending requests with their pools, oldest first.
    func pendingProvisioning() async throws -> [(ProvisioningRequest, Pool?)] {
        try await read { db in
            try Row.fetchAll(
                db.cachedStatement(
                    sql: "SELECT \(ProvisioningRequest.columns) FROM provisioning_requests WHERE state = 'pending' ORDER BY seq")
            ).map { row in
                let request = ProvisioningRequest(row: row)
                return (request, try db.fetchPool(request.pool))
            }
        }
    }

    /// Applies what the provider did, in one transaction; a failed spot replacement falls back to on-demand.
    @discardableResult
    func applyProvisioning(_ requestId: String, _ step: ProviderStep, actor: String) async throws -> Bool {
        try await write { [self] db in
            let now = clock.now()
            guard
                let request = try ProvisioningRequest.fetchOne(
                    db.cachedStatement(
                        sql: "SELECT \(ProvisioningRequest.columns) FROM provisioning_requests WHERE id = ? AND state = 'pending'"),
                    arguments: [requestId]
                )
            else { return false }
            switch step {
            case .wait:
                return false
            case .submitted:
                try db.cachedStatement(sql: "UPDATE provisioning_requests SET submitted_at = ? WHERE id = ?").execute(arguments: [
                    now, requestId,
                ])
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
                try db.cachedStatement(sql: "UPDATE provisioning_requests SET state = 'failed', error = ?, resolved_at = ? WHERE id = ?")
                    .execute(arguments: [message, now, requestId])
                try db.appendEvent(
                    "provisioning.failed", subject: "provisioning-requests/\(requestId)", actor: actor, at: now,
                    data: ["pool": .string(request.pool), "error": .string(message)])
                if let interruptionId = request.interruptionId {
                    try db.appendStep(interruptionId, "replacement_failed", at: now, detail: "\(request.pool): \(message)")
                }
                if let lostId = request.replacesNodeId, let lost = try db.fetchNode(lostId) {
                    let interruption = try request.interruptionId.flatMap { try db.fetchInterruption($0) }
                    let tried = Set(
                        try String.fetchAll(
                            db.cachedStatement(sql: "SELECT pool FROM provisioning_requests WHERE replaces_node_id = ?"),
                            arguments: [lostId]))
                    var capacity: CapacitySnapshot?
                    _ = try requestReplacement(
                        db, for: lost, interruption: interruption, attemptNumber: request.attemptNumber + 1, now: now, actor: actor,
                        excluding: tried, onDemandOnly: true, capacity: &capacity)
                }
                return true
            }
        }
    }

    static let maxPendingFloorRequests = 20

    /// Keeps each pool at its `min_nodes` floor; a pool whose floor request failed lately waits a minute.
    func ensureMinimums(actor: String) async throws -> Int {
        try await write { [self] db in
            let now = clock.now()
            let pools = try Pool.fetchAll(db.cachedStatement(sql: "SELECT \(Pool.columns) FROM pools WHERE min_nodes > 0"))
            guard !pools.isEmpty else { return 0 }
            let stats = try Self.poolStats(db, now: now)
            var created = 0
            for pool in pools {
                let missing = pool.minNodes - (stats[pool.name]?.committedNodes ?? 0)
                guard missing > 0 else { continue }
                let recentFailure =
                    try Int.fetchOne(
                        db.cachedStatement(
                            sql:
                                "SELECT COUNT(*) FROM provisioning_requests WHERE pool = ? AND reason = 'min_nodes' AND state = 'failed' AND resolved_at > ?"
                        ),
                        arguments: [pool.name, now - 60_000]) ?? 0
                guard recentFailure == 0 else { continue }
                // At most `maxPendingFloorRequests` in flight per pool, as cluster autoscalers cap a scale-up.
                let pending =
                    try Int.fetchOne(
                        db.cachedStatement(
                            sql: "SELECT COUNT(*) FROM provisioning_requests WHERE pool = ? AND reason = 'min_nodes' AND state = 'pending'"),
                        arguments: [pool.name]) ?? 0
                let batch = min(missing, Self.maxPendingFloorRequests - pending)
                guard batch > 0 else { continue }
                for _ in 0..<batch {
                    let id = Ids.new("prov")
                    try db.cachedStatement(
                        sql:
                            "INSERT INTO provisioning_requests (id, pool, reason, state, created_at) VALUES (?, ?, 'min_nodes', 'pending', ?)"
                    ).execute(arguments: [id, pool.name, now])
                    try db.appendEvent(
                        "provisioning.requested", subject: "provisioning-requests/\(id)", actor: actor, at: now,
                        data: ["pool": .string(pool.name), "reason": .string("min_nodes")])
                    created += 1
                }
            }
            return created
        }
    }

    /// Releases on-demand fallback nodes idle for `idleSeconds` once spot capacity of their GPU type is back.
    func scaleDown(idleSeconds: Int64, actor: String) async throws -> Int {
        try await write { [self] db in
            let now = clock.now()
            let idle = try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT n.id AS id, n.gpus AS gpus, p.gpu_type AS gpu_type, p.name AS pool, p.min_nodes AS min_nodes
                        FROM nodes n JOIN pools p ON p.name = n.pool
                        JOIN provisioning_requests r ON r.id = n.provisioning_request_id AND r.reason = 'fallback'
                        WHERE p.capacity_type = 'on_demand' AND n.state = 'ready' AND n.gpus_allocated = 0
                          AND n.idle_since IS NOT NULL AND n.idle_since <= ?
                        """), arguments: [now - idleSeconds * 1000])
            var released = 0
            for row in idle {
                let gpus: Int = row["gpus"]
                let spotFree =
                    try Int.fetchOne(
                        db.cachedStatement(
                            sql: """
                                SELECT COALESCE(SUM(n.gpus - n.gpus_allocated), 0) FROM nodes n JOIN pools p ON p.name = n.pool
                                WHERE p.capacity_type = 'spot' AND p.gpu_type = ? AND n.state = 'ready'
                                """), arguments: [row["gpu_type"] as String]) ?? 0
                let live =
                    try Int.fetchOne(
                        db.cachedStatement(sql: "SELECT COUNT(*) FROM nodes WHERE pool = ? AND state <> 'terminated'"),
                        arguments: [row["pool"] as String])
                    ?? 0
                guard spotFree >= gpus, live > row["min_nodes"] as Int, let node = try db.fetchNode(row["id"]) else { continue }
                try Self.terminate(db, node: node, at: now, actor: actor, reason: "scaled down: idle on-demand fallback, spot is back")
                released += 1
            }
            return released
        }
    }
}
