/// Nodes given back through the provider, and the simulated provider's cloud.
extension SpotStore: SimulatedCloud {
    /// Why a reclaimed node's release is sent (the cloud takes it anyway; the release makes sure).
    static let reclaimedRelease = "reclaimed: taken by the cloud"

    /// Asks for `node` to be given back, inside the caller's transaction: a release row (kept until acknowledged,
    /// with one idempotency key for every try) and, for a node still up, the state `drained` (no new work; it is
    /// `terminated` once the release is acknowledged). A second ask for the same node changes nothing.
    static func requestRelease(_ db: Database, node: Node, reason: String, at now: Millis, actor: String) throws {
        try db.cachedStatement(
            sql: """
                INSERT INTO node_releases (node_id, pool, reason, idempotency_key, state, attempts, next_attempt_at, created_at)
                VALUES (?, ?, ?, ?, 'pending', 0, ?, ?) ON CONFLICT DO NOTHING
                """
        ).execute(arguments: [node.id, node.pool, reason, Ids.new("rel"), now, now])
        guard db.changesCount == 1 else { return }
        try db.cachedStatement(sql: "UPDATE nodes SET state = 'drained', updated_at = ? WHERE id = ? AND state <> 'terminated'")
            .execute(arguments: [now, node.id])
        try db.appendEvent("node.release_requested", subject: "nodes/\(node.id)", actor: actor, at: now, data: ["reason": .string(reason)])
    }

    /// Releases due for a call (new, or past their backoff), with their pools.
    func dueReleases(limit: Int = 256) async throws -> [(NodeRelease, Pool?)] {
        try await read { [self] db in
            try NodeRelease.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT \(NodeRelease.columns) FROM node_releases WHERE state = 'pending' AND next_attempt_at <= ?
                        ORDER BY next_attempt_at, node_id LIMIT ?
                        """), arguments: [clock.now(), limit]
            ).map { ($0, try db.fetchPool($0.pool)) }
        }
    }

    /// Records what the provider said to a release: acknowledged, the node is `terminated` (once: a node already
    /// terminated, as a reclaimed one is at its deadline, stays as it is); otherwise asked again after a backoff.
    @discardableResult
    func applyRelease(_ nodeId: String, _ step: ReleaseStep, lease: Lease, actor: String) async throws -> Bool {
        try await write { [self] db in
            let now = clock.now()
            try Self.checkFence(db, lease, now: now)
            guard
                let release = try NodeRelease.fetchOne(
                    db.cachedStatement(sql: "SELECT \(NodeRelease.columns) FROM node_releases WHERE node_id = ? AND state = 'pending'"),
                    arguments: [nodeId])
            else { return false }
            switch step {
            case .acknowledged:
                try db.cachedStatement(
                    sql: "UPDATE node_releases SET state = 'acknowledged', attempts = attempts + 1, acknowledged_at = ? WHERE node_id = ?"
                ).execute(arguments: [now, nodeId])
                try db.appendEvent(
                    "node.released", subject: "nodes/\(nodeId)", actor: actor, at: now,
                    data: ["reason": .string(release.reason), "idempotency_key": .string(release.idempotencyKey)])
                if let node = try db.fetchNode(nodeId), node.state != .terminated {
                    try Self.terminate(db, node: node, at: now, actor: actor, reason: "released: \(release.reason)")
                }
            case .retry(let message):
                let attempts = release.attempts + 1
                try db.cachedStatement(
                    sql: "UPDATE node_releases SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE node_id = ?"
                ).execute(arguments: [attempts, now + Autoscaler.retryDelay(afterAttempt: attempts), message, nodeId])
                if attempts == 1 || attempts % 10 == 0 {
                    try db.appendEvent(
                        "node.release_retrying", subject: "nodes/\(nodeId)", actor: actor, at: now,
                        data: ["attempt": .int(Int64(attempts)), "error": .string(message)])
                }
            }
            return true
        }
    }

    // MARK: - The simulated cloud

    public func launchInstance(_ id: String, pool: String, at now: Millis) async throws {
        try await write { db in
            try db.cachedStatement(sql: "INSERT INTO sim_instances (id, pool, launched_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
                .execute(arguments: [id, pool, now])
        }
    }

    public func releaseInstance(_ id: String, at now: Millis) async throws {
        try await write { db in
            try db.cachedStatement(sql: "UPDATE sim_instances SET released_at = ? WHERE id = ? AND released_at IS NULL")
                .execute(arguments: [now, id])
        }
    }

    public func liveInstances() async throws -> Int {
        try await read { db in
            try Int.fetchOne(db.cachedStatement(sql: "SELECT COUNT(*) FROM sim_instances WHERE released_at IS NULL")) ?? 0
        }
    }
}
