import GRDB

extension AppDatabase {
    /// One pass of the scheduling loop: places queued jobs in order of tier, priority and age, in one transaction.
    /// Returns how many jobs were placed, and the newest event id this pass had seen when it started: a later event
    /// (a new job, a freed GPU) means the next pass has something to look at.
    func placeQueued(batch: Int = 5000, admissionLimit: Int64 = 3600, actor: String = "scheduler-loop") async throws -> (
        placed: Int, seenEventId: Int64
    ) {
        try await write { [self] db in
            let now = clock.now()
            let seen = try Int64.fetchOne(db.cachedStatement(sql: "SELECT COALESCE(MAX(id), 0) FROM events")) ?? 0
            let jobs = try Job.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT \(Job.columns) FROM jobs WHERE state = 'queued'
                        ORDER BY CASE tier WHEN 'premium' THEN 0 WHEN 'standard' THEN 1 ELSE 2 END, priority DESC, seq LIMIT ?
                        """), arguments: [batch]
            )
            guard !jobs.isEmpty else { return (0, seen) }
            let nodes = try Node.fetchAll(
                db.cachedStatement(sql: "SELECT \(Node.columns) FROM nodes WHERE state = 'ready' AND gpus_allocated < gpus")
            )
            let pools = try Pool.fetchAll(db.cachedStatement(sql: "SELECT \(Pool.columns) FROM pools ORDER BY seq"))
            let stats = try Self.poolStats(db, now: now)
            let policies = Dictionary(uniqueKeysWithValues: try Self.policies(db, defaults: admissionLimit, now: now).map { ($0.tier, $0) })
            var bestEffortByPool = try Self.bestEffortByPool(db)
            var index = CapacityIndex(nodes: nodes)
            var placed = 0
            var preemptionTried = false
            for job in jobs {
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
                    if let at = index.index(of: nodeId, pool: pool, gpus: job.gpus) { index.allocate(index: at, gpus: job.gpus) }
                    if job.tier == .bestEffort { bestEffortByPool[pool, default: 0] += 1 }
                    placed += 1
                case .refuse:
                    if job.tier == .premium && !preemptionTried {
                        // One preemption decision per pass keeps each pass short; the next pass handles the next job.
                        preemptionTried = true
                        _ = try Self.preemptFor(db, job: job, policy: policy, now: now, actor: actor)
                    }
                }
            }
            return (placed, seen)
        }
    }
}
