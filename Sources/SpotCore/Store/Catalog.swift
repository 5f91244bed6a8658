import Synchronization

/// Pools and stored policies, kept in memory for the placement path and checked against the store's catalog token
/// (migration 0004) on every use: one single-row read instead of decoding every pool and policy per placement.
/// A cached copy and its token always come from the same snapshot, so a reader on an older snapshot can only store an
/// older pair, which the next writer sees as stale and reloads.
final class Catalog: Sendable {
    struct Snapshot: Sendable {
        var token: Int64
        /// Every pool, in creation order.
        var pools: [Pool]
        /// The stored policies (defaults fill in missing tiers at use).
        var policies: [Policy]
    }

    private let cached = Mutex<Snapshot?>(nil)

    /// The pools and policies as of the caller's transaction.
    func current(_ db: Database) throws -> Snapshot {
        let token = try Int64.fetchOne(db.cachedStatement(sql: "SELECT token FROM catalog_token WHERE id = 1")) ?? 0
        if let snapshot = cached.withLock({ $0 }), snapshot.token == token { return snapshot }
        let fresh = Snapshot(
            token: token, pools: try Pool.fetchAll(db.cachedStatement(sql: "SELECT \(Pool.columns) FROM pools ORDER BY seq")),
            policies: try Row.fetchAll(db.cachedStatement(sql: "SELECT * FROM policies")).map(Policy.init(row:)))
        cached.withLock { $0 = fresh }
        return fresh
    }
}
