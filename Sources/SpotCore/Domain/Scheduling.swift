/// What the scheduling loop knows at the start of a pass.
struct SchedulingInput: Sendable {
    /// Ready nodes with free GPUs, in `seq` order.
    var nodes: [Node]
    var pools: [Pool]
    var policies: [Policy]
    /// Pool risk figures and running best-effort jobs per pool (soft hints, up to a second old).
    var stats: [String: PoolStats]
    var bestEffortByPool: [String: Int]
}

/// The scheduling loop's decisions for one pass, job by job in queue order: where each queued job goes, given the
/// ready nodes with free GPUs, and which premium job may ask best-effort work to yield. Pure; the store feeds it the
/// queue a page at a time and binds what it answers.
struct SchedulingPlanner: Sendable {
    /// What to do with one queued job.
    enum Step: Sendable, Equatable {
        case place(nodeId: String, pool: String, attempt: Int64, reasons: [String])
        /// A gang on all its nodes at once.
        case placeGang(members: [GangMember], attempt: Int64, reasons: [String])
        /// No capacity for a premium job: ask best-effort work on stable capacity to yield (once per pass).
        case protectPremium(Policy)
        /// It waits for capacity.
        case wait
    }

    private var index: CapacityIndex
    let pools: [Pool]
    let policies: [Tier: Policy]
    let stats: [String: PoolStats]
    private(set) var bestEffortByPool: [String: Int]
    let maxPlacements: Int
    private(set) var placed = 0
    private var protectionAsked = false

    init(_ input: SchedulingInput, maxPlacements: Int) {
        self.index = CapacityIndex(nodes: input.nodes)
        self.pools = input.pools
        self.policies = Dictionary(input.policies.map { ($0.tier, $0) }, uniquingKeysWith: { first, _ in first })
        self.stats = input.stats
        self.bestEffortByPool = input.bestEffortByPool
        self.maxPlacements = maxPlacements
    }

    /// Whether the pass has placed as many jobs as it may.
    var isFull: Bool { placed >= maxPlacements }

    /// Whether any node still has a free GPU (else the rest of the queue need not be read).
    var hasFreeCapacity: Bool { index.hasFreeCapacity }

    /// Decides for the next job in queue order, and counts what it places.
    mutating func next(_ job: Job) -> Step {
        guard !isFull, let policy = policies[job.tier] else { return .wait }
        if job.isGang { return nextGang(job, policy: policy) }
        let candidates = pools.map { pool in
            PoolCandidate(
                pool: pool, stats: stats[pool.name] ?? PoolStats(), bestNode: index.bestNode(pool: pool.name, gpus: job.gpus),
                bestEffortJobs: bestEffortByPool[pool.name] ?? 0)
        }
        switch Placement.decide(job: job, policy: policy, candidates: candidates) {
        case .place(let nodeId, let pool, _, let reasons):
            if let at = index.bestIndex(pool: pool, gpus: job.gpus), index.nodes[at].id == nodeId {
                index.allocate(index: at, gpus: job.gpus)
            }
            if job.tier == .bestEffort { bestEffortByPool[pool, default: 0] += 1 }
            placed += 1
            return .place(nodeId: nodeId, pool: pool, attempt: max(job.attempt, 1), reasons: reasons)
        case .refuse, .placeGang:
            // One premium protection per pass keeps each pass short; the next pass handles the next job.
            guard job.tier == .premium, !protectionAsked else { return .wait }
            protectionAsked = true
            return .protectPremium(policy)
        }
    }

    /// A gang: every pool's fitting nodes as candidates, all members allocated at once or none.
    private mutating func nextGang(_ job: Job, policy: Policy) -> Step {
        var indexById: [String: Int] = [:]
        let candidates = pools.map { pool in
            let fitting = index.fittingIndexes(pool: pool.name, gpus: job.gpus, limit: job.nodes)
            for at in fitting { indexById[index.nodes[at].id] = at }
            return PoolCandidate(
                pool: pool, stats: stats[pool.name] ?? PoolStats(), bestEffortJobs: bestEffortByPool[pool.name] ?? 0,
                fittingNodes: fitting.map { index.nodes[$0] })
        }
        switch Placement.decideGang(job: job, policy: policy, candidates: candidates) {
        case .placeGang(let members, let reasons):
            for member in members {
                if let at = indexById[member.nodeId] { index.allocate(index: at, gpus: job.gpus) }
                if job.tier == .bestEffort { bestEffortByPool[member.pool, default: 0] += 1 }
            }
            placed += 1
            return .placeGang(members: members, attempt: max(job.attempt, 1), reasons: reasons)
        case .place, .refuse:
            guard job.tier == .premium, !protectionAsked else { return .wait }
            protectionAsked = true
            return .protectPremium(policy)
        }
    }
}
