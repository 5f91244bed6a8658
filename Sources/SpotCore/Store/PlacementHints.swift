import Synchronization

/// The soft inputs of a placement (pool risk, best-effort spread), recomputed at most once a second.
/// They steer the choice; they never decide capacity, which is always read fresh from the nodes.
/// They are computed from a read snapshot, never inside the write transaction: the aggregates take ~15 ms at 10k
/// nodes and 40k jobs, and the single writer must not stall for that. While one caller refreshes, the others use
/// the previous snapshot.
final class PlacementHints: Sendable {
    struct Snapshot: Sendable {
        var at: Millis
        var stats: [String: PoolStats]
        var bestEffortJobs: [String: Int]
    }

    private struct State {
        var snapshot: Snapshot?
        /// The refresh in flight, shared by every caller that has no usable snapshot meanwhile.
        var refresh: Task<Snapshot, any Error>?
    }

    private let state = Mutex(State())
    let maxAgeMillis: Millis

    init(maxAgeMillis: Millis = 1000) {
        self.maxAgeMillis = maxAgeMillis
    }

    /// The current hints. A stale snapshot is recomputed once: the caller that finds it stale waits for the
    /// refresh, callers meanwhile keep using the previous snapshot (or, at the very start, wait for the same one).
    func current(_ store: SpotStore, now: Millis) async throws -> Snapshot {
        let (cached, refresh) = state.withLock { state -> (Snapshot?, Task<Snapshot, any Error>?) in
            if let snapshot = state.snapshot, now >= snapshot.at, now - snapshot.at < maxAgeMillis { return (snapshot, nil) }
            if let running = state.refresh { return (state.snapshot, state.snapshot == nil ? running : nil) }
            let task = Task {
                try await store.read { db in
                    Snapshot(at: now, stats: try SpotStore.poolStats(db, now: now), bestEffortJobs: try SpotStore.bestEffortByPool(db))
                }
            }
            state.refresh = task
            return (nil, task)
        }
        guard let refresh else { return cached! }
        let result = await refresh.result
        state.withLock { state in
            if state.refresh == refresh {
                state.refresh = nil
                if case .success(let fresh) = result { state.snapshot = fresh }
            }
        }
        return try result.get()
    }

    /// Counts a best-effort job just placed, so that spreading holds between refreshes.
    func placedBestEffort(pool: String) {
        state.withLock { $0.snapshot?.bestEffortJobs[pool, default: 0] += 1 }
    }
}

extension SpotStore {
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
