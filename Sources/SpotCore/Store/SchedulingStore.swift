extension SpotStore {
    /// One pass of the scheduling loop, in one transaction: the queue in order (tier, priority, age), a page at a
    /// time, each job decided by the planner `makePlanner` builds (from `Domain/`) and bound where it says. When it
    /// asks for premium protection, `protect` (from `Domain/`) picks the best-effort work that yields.
    func placeQueued(
        limits: SchedulingLimits, lease: Lease, actor: String,
        makePlanner: @escaping @Sendable (SchedulingInput) -> SchedulingPlanner,
        protect: @escaping @Sendable (Job, Policy, [Placement.PreemptionSite], Millis) -> Placement.PreemptionChoice?
    ) async throws -> SchedulingReport {
        // Risk and spread come from the shared hints (computed from a read snapshot, at most once a second): recounting
        // every pool and running job inside the pass held the single writer for ~15 ms at 10k nodes and 40k jobs.
        let hints = try await placementHints.current(self, now: clock.now())
        return try await write { [self] db in
            let now = clock.now()
            try Self.checkFence(db, lease, now: now)
            let seen = try Int64.fetchOne(db.cachedStatement(sql: "SELECT COALESCE(MAX(id), 0) FROM events")) ?? 0
            let nodes = try Node.fetchAll(
                db.cachedStatement(sql: "SELECT \(Node.columns) FROM nodes WHERE state = 'ready' AND gpus_allocated < gpus ORDER BY seq"))
            let catalog = try catalog.current(db)
            let policies = Self.withDefaults(catalog.policies, admissionLimit: admissionLimit, now: now)
            var planner = makePlanner(
                SchedulingInput(
                    nodes: nodes, pools: catalog.pools, policies: policies, stats: hints.stats, bestEffortByPool: hints.bestEffortJobs))
            // Keyset paging over (tier rank, -priority, seq), the queue's order.
            var after: (rank: Int64, priority: Int64, seq: Int64) = (-1, Int64.min, 0)
            pages: for _ in 0..<limits.maxPages {
                let jobs = try Job.fetchAll(
                    db.cachedStatement(
                        sql: """
                            SELECT \(Job.columns) FROM jobs WHERE state = 'queued'
                                AND (CASE tier WHEN 'premium' THEN 0 WHEN 'standard' THEN 1 ELSE 2 END, -priority, seq) > (?, ?, ?)
                            ORDER BY CASE tier WHEN 'premium' THEN 0 WHEN 'standard' THEN 1 ELSE 2 END, priority DESC, seq LIMIT ?
                            """), arguments: [after.rank, after.priority, after.seq, limits.pageSize])
                for job in jobs {
                    if planner.isFull { break pages }
                    switch planner.next(job) {
                    case .place(let nodeId, let pool, let attempt, let reasons):
                        try Self.bind(db, job: job, nodeId: nodeId, pool: pool, attempt: attempt, at: now, actor: actor, reasons: reasons)
                        if job.tier == .bestEffort { placementHints.placedBestEffort(pool: pool) }
                    case .placeGang(let members, let attempt, let reasons):
                        try Self.bindGang(db, job: job, members: members, attempt: attempt, at: now, actor: actor, reasons: reasons)
                        if job.tier == .bestEffort { for member in members { placementHints.placedBestEffort(pool: member.pool) } }
                    case .protectPremium(let policy):
                        _ = try Self.preemptFor(db, job: job, policy: policy, now: now, actor: actor, choose: protect)
                    case .wait:
                        break
                    }
                }
                guard jobs.count == limits.pageSize, let last = jobs.last, planner.hasFreeCapacity else { break }
                after = (Int64(last.tier.rank), -last.priority, last.seq)
            }
            return SchedulingReport(placed: planner.placed, seenEventId: seen, more: planner.isFull)
        }
    }
}
