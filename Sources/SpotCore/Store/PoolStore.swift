/// Read-only figures shown on a pool.
public struct PoolStats: Sendable, Equatable {
    public var nodesByState: [NodeState: Int] = [:]
    public var gpusTotal = 0
    public var gpusAllocated = 0
    /// GPUs a job could be placed on now: unallocated GPUs of `ready` nodes only (a cordoned, draining or drained
    /// node's GPUs are not free, whatever its allocation).
    public var gpusFree = 0
    /// Live nodes plus pending provisioning requests: what counts against `max_nodes`.
    public var committedNodes = 0
    /// Notices per node-hour over the recent window.
    public var interruptionRate = 0.0
    /// Rebalance notices on live nodes within the window.
    public var rebalanceSignals = 0
}

/// How far back the interruption rate looks.
let riskWindowMillis: Millis = 6 * 3600 * 1000

/// Fields of a pool that `PATCH` may change.
struct PoolPatch: Sendable {
    var hourlyPrice: Double?
    var minNodes: Int?
    var maxNodes: Int?
    var stockout: Bool?
    var zone: String?
    var instanceType: String?
}

extension SpotStore {
    func createPool(_ pool: Pool, actor: String) async throws -> Pool {
        try await write { db in
            if try db.fetchPool(pool.name) != nil { throw StoreError.conflict("pool '\(pool.name)' already exists") }
            try db.cachedStatement(
                sql: """
                    INSERT INTO pools (name, capacity_type, gpu_type, gpus_per_node, zone, instance_type, hourly_price,
                        min_nodes, max_nodes, stockout, created_at, updated_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """
            ).execute(arguments: [
                pool.name, pool.capacityType.rawValue, pool.gpuType, pool.gpusPerNode, pool.zone, pool.instanceType,
                pool.hourlyPrice, pool.minNodes, pool.maxNodes, pool.stockout, pool.createdAt, pool.updatedAt,
            ])
            try db.appendEvent(
                "pool.created", subject: "pools/\(pool.name)", actor: actor, at: pool.createdAt,
                data: ["capacity_type": .string(pool.capacityType.rawValue), "gpu_type": .string(pool.gpuType)])
            return pool
        }
    }

    func listPools(_ page: PageRequest) async throws -> Page<Pool> {
        try await read { db in
            let rows = try Row.fetchAll(
                db.cachedStatement(sql: "SELECT \(Pool.columns) FROM pools WHERE seq > ? ORDER BY seq LIMIT ?"),
                arguments: [page.after, page.limit + 1])
            return Self.page(rows, limit: page.limit, map: Pool.init(row:))
        }
    }

    func pool(_ name: String) async throws -> Pool? {
        try await read { db in try db.fetchPool(name) }
    }

    func updatePool(_ name: String, _ patch: PoolPatch, actor: String) async throws -> Pool {
        try await write { [self] db in
            guard var pool = try db.fetchPool(name) else { throw StoreError.notFound(what: "pool", id: name) }
            if let value = patch.hourlyPrice { pool.hourlyPrice = value }
            if let value = patch.minNodes { pool.minNodes = value }
            if let value = patch.maxNodes { pool.maxNodes = value }
            if let value = patch.stockout { pool.stockout = value }
            if let value = patch.zone { pool.zone = value }
            if let value = patch.instanceType { pool.instanceType = value }
            guard pool.minNodes <= pool.maxNodes else {
                throw StoreError.unprocessable(
                    field: patch.minNodes != nil ? "min_nodes" : "max_nodes",
                    "would put min_nodes (\(pool.minNodes)) above max_nodes (\(pool.maxNodes))")
            }
            pool.updatedAt = clock.now()
            try db.cachedStatement(
                sql: """
                    UPDATE pools SET hourly_price = ?, min_nodes = ?, max_nodes = ?, stockout = ?, zone = ?, instance_type = ?,
                        updated_at = ? WHERE name = ?
                    """
            ).execute(arguments: [
                pool.hourlyPrice, pool.minNodes, pool.maxNodes, pool.stockout, pool.zone, pool.instanceType,
                pool.updatedAt, name,
            ])
            try db.appendEvent(
                "pool.updated", subject: "pools/\(name)", actor: actor, at: pool.updatedAt,
                data: ["stockout": .bool(pool.stockout), "min_nodes": .int(Int64(pool.minNodes)), "max_nodes": .int(Int64(pool.maxNodes))])
            return pool
        }
    }

    func deletePool(_ name: String, actor: String) async throws {
        try await write { [self] db in
            guard try db.fetchPool(name) != nil else { throw StoreError.notFound(what: "pool", id: name) }
            let live =
                try Int.fetchOne(
                    db.cachedStatement(sql: "SELECT COUNT(*) FROM nodes WHERE pool = ? AND state <> 'terminated'"), arguments: [name]) ?? 0
            guard live == 0 else {
                throw StoreError.conflict("pool '\(name)' still has \(live) live node(s); delete or terminate them first")
            }
            let pending =
                try Int.fetchOne(
                    db.cachedStatement(sql: "SELECT COUNT(*) FROM provisioning_requests WHERE pool = ? AND state = 'pending'"),
                    arguments: [name]) ?? 0
            guard pending == 0 else {
                throw StoreError.conflict("pool '\(name)' has \(pending) pending provisioning request(s)")
            }
            try db.cachedStatement(sql: "DELETE FROM pools WHERE name = ?").execute(arguments: [name])
            try db.appendEvent("pool.deleted", subject: "pools/\(name)", actor: actor, at: clock.now())
        }
    }

    /// Figures for every pool, keyed by name.
    func poolStats() async throws -> [String: PoolStats] {
        try await read { [self] db in try Self.poolStats(db, now: clock.now()) }
    }

    static func poolStats(_ db: Database, now: Millis) throws -> [String: PoolStats] {
        var stats: [String: PoolStats] = [:]
        for row in try Row.fetchAll(
            db.cachedStatement(
                sql: "SELECT pool, state, COUNT(*) AS n, SUM(gpus) AS g, SUM(gpus_allocated) AS a FROM nodes GROUP BY pool, state"))
        {
            let pool: String = row["pool"]
            guard let state = NodeState(rawValue: row["state"]) else { continue }
            let count: Int = row["n"]
            stats[pool, default: PoolStats()].nodesByState[state] = count
            if state == .ready {
                stats[pool, default: PoolStats()].gpusFree += (row["g"] as Int) - (row["a"] as Int)
            }
            if state.live {
                stats[pool, default: PoolStats()].committedNodes += count
                stats[pool, default: PoolStats()].gpusTotal += row["g"] as Int
                stats[pool, default: PoolStats()].gpusAllocated += row["a"] as Int
            }
        }
        for row in try Row.fetchAll(
            db.cachedStatement(sql: "SELECT pool, COUNT(*) AS n FROM provisioning_requests WHERE state = 'pending' GROUP BY pool"))
        {
            stats[row["pool"] as String, default: PoolStats()].committedNodes += row["n"] as Int
        }
        let since = now - riskWindowMillis
        for row in try Row.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT i.pool AS pool, COUNT(*) AS n,
                        SUM(CASE WHEN i.kind = 'rebalance' AND nd.state IS NOT NULL AND nd.state <> 'terminated' THEN 1 ELSE 0 END) AS r
                    FROM interruptions i LEFT JOIN nodes nd ON nd.id = i.node_id
                    WHERE i.pool IS NOT NULL AND i.received_at >= ? AND i.source <> 'operator' GROUP BY i.pool
                    """), arguments: [since])
        {
            let pool: String = row["pool"]
            let notices: Int = row["n"]
            let exposed =
                try Int.fetchOne(
                    db.cachedStatement(sql: "SELECT COUNT(*) FROM nodes WHERE pool = ? AND (terminated_at IS NULL OR terminated_at >= ?)"),
                    arguments: [pool, since]) ?? 0
            let hours = Double(riskWindowMillis) / 3_600_000
            stats[pool, default: PoolStats()].interruptionRate = Double(notices) / (Double(max(exposed, 1)) * hours)
            stats[pool, default: PoolStats()].rebalanceSignals = row["r"]
        }
        return stats
    }

    /// Splits a fetched `limit + 1` rows into a page and its next cursor.
    static func page<T>(_ rows: [Row], limit: Int, map: (Row) -> T) -> Page<T> {
        let items = rows.prefix(limit).map(map)
        let next = rows.count > limit ? PageRequest.cursor(after: rows[limit - 1]["seq"]) : nil
        return Page(items: Array(items), nextCursor: next)
    }
}
