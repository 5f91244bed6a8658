import GRDB

extension SQLiteStore {
    /// One pass of the scheduling loop: places queued jobs in order of tier, priority and age, in one transaction.
    /// A pass places at most `maxPlacements` jobs, so the single writer is never held long (notices and API calls
    /// interleave between passes; `more` asks for the next pass at once). It reads the queue a page at a time, up
    /// to `maxPages` pages: a queue head that cannot fit (a GPU type with no capacity, say) does not starve jobs
    /// behind it, and it stops early once no GPU is free. Also returns the newest event id this pass had seen when
    /// it started: a later event (a new job, a freed GPU) means the next pass has something to look at.
    func placeQueued(
        maxPlacements: Int = 1000, pageSize: Int = 2000, maxPages: Int = 10, admissionLimit: Int64 = 3600,
        actor: String = "scheduler-loop"
    ) async throws -> (placed: Int, seenEventId: Int64, more: Bool) {
        // Risk and spread come from the shared hints (computed from a read snapshot, at most once a second): recounting
        // every pool and running job inside the pass held the single writer for ~15 ms at 10k nodes and 40k jobs.
        let hints = try await placementHints.current(self, now: clock.now())
        return try await write { [self] db in
            let now = clock.now()
            let seen = try Int64.fetchOne(db.cachedStatement(sql: "SELECT COALESCE(MAX(id), 0) FROM events")) ?? 0
            let nodes = try Node.fetchAll(
                db.cachedStatement(sql: "SELECT \(Node.columns) FROM nodes WHERE state = 'ready' AND gpus_allocated < gpus ORDER BY seq"))
            var index = CapacityIndex(nodes: nodes)
            let catalog = try catalog.current(db)
            let pools = catalog.pools
            let stats = hints.stats
            let policies = Dictionary(
                uniqueKeysWithValues: Self.withDefaults(catalog.policies, admissionLimit: admissionLimit, now: now).map { ($0.tier, $0) })
            var bestEffortByPool = hints.bestEffortJobs
            var placed = 0
            var preemptionTried = false
            // Keyset paging over (tier rank, -priority, seq), the queue's order.
            var after: (rank: Int64, priority: Int64, seq: Int64) = (-1, Int64.min, 0)
            pages: for _ in 0..<maxPages {
                let jobs = try Job.fetchAll(
                    db.cachedStatement(
                        sql: """
                            SELECT \(Job.columns) FROM jobs WHERE state = 'queued'
                                AND (CASE tier WHEN 'premium' THEN 0 WHEN 'standard' THEN 1 ELSE 2 END, -priority, seq) > (?, ?, ?)
                            ORDER BY CASE tier WHEN 'premium' THEN 0 WHEN 'standard' THEN 1 ELSE 2 END, priority DESC, seq LIMIT ?
                            """), arguments: [after.rank, after.priority, after.seq, pageSize])
                for job in jobs {
                    if placed >= maxPlacements { break pages }
                    guard let policy = policies[job.tier] else { continue }
                    let candidates = pools.map { pool in
                        PoolCandidate(
                            pool: pool, stats: stats[pool.name] ?? PoolStats(), bestNode: index.bestNode(pool: pool.name, gpus: job.gpus),
                            bestEffortJobs: bestEffortByPool[pool.name] ?? 0)
                    }
                    switch Placement.decide(job: job, policy: policy, candidates: candidates) {
                    case .place(let nodeId, let pool, _, let reasons):
                        let attempt = max(job.attempt, 1)
                        try Self.bind(db, job: job, nodeId: nodeId, pool: pool, attempt: attempt, at: now, actor: actor, reasons: reasons)
                        if let at = index.bestIndex(pool: pool, gpus: job.gpus), index.nodes[at].id == nodeId {
                            index.allocate(index: at, gpus: job.gpus)
                        }
                        if job.tier == .bestEffort {
                            bestEffortByPool[pool, default: 0] += 1
                            placementHints.placedBestEffort(pool: pool)
                        }
                        placed += 1
                    case .refuse:
                        if job.tier == .premium && !preemptionTried {
                            // One preemption decision per pass keeps each pass short; the next pass handles the next job.
                            preemptionTried = true
                            _ = try Self.preemptFor(db, job: job, policy: policy, now: now, actor: actor)
                        }
                    }
                }
                guard jobs.count == pageSize, let last = jobs.last, index.hasFreeCapacity else { break }
                after = (Int64(last.tier == .premium ? 0 : last.tier == .standard ? 1 : 2), -last.priority, last.seq)
            }
            return (placed, seen, placed >= maxPlacements)
        }
    }
}
