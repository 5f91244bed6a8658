import GRDB
import Synchronization

/// The soft inputs of a placement (pool risk, best-effort spread), recomputed at most once a second.
/// They steer the choice; they never decide capacity, which is always read fresh from the nodes.
final class PlacementHints: Sendable {
    struct Snapshot: Sendable {
        var at: Millis
        var stats: [String: PoolStats]
        var bestEffortJobs: [String: Int]
    }

    private let snapshot = Mutex<Snapshot?>(nil)
    let maxAgeMillis: Millis

    init(maxAgeMillis: Millis = 1000) {
        self.maxAgeMillis = maxAgeMillis
    }

    /// The current hints, recomputed inside the caller's transaction when stale.
    func current(_ db: Database, now: Millis) throws -> Snapshot {
        if let cached = snapshot.withLock({ $0 }), now >= cached.at, now - cached.at < maxAgeMillis { return cached }
        let fresh = Snapshot(at: now, stats: try AppDatabase.poolStats(db, now: now), bestEffortJobs: try AppDatabase.bestEffortByPool(db))
        snapshot.withLock { $0 = fresh }
        return fresh
    }

    /// Counts a best-effort job just placed, so that spreading holds between refreshes.
    func placedBestEffort(pool: String) {
        snapshot.withLock { $0?.bestEffortJobs[pool, default: 0] += 1 }
    }
}

extension AppDatabase {
    /// Running best-effort jobs per pool.
    static func bestEffortByPool(_ db: Database) throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for row in try Row.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT n.pool AS pool, COUNT(*) AS n FROM jobs j JOIN nodes n ON n.id = j.node_id
                    WHERE j.tier = 'best_effort' AND j.state IN ('running', 'checkpointing') GROUP BY n.pool
                    """))
        {
            counts[row["pool"]] = row["n"]
        }
        return counts
    }
}
