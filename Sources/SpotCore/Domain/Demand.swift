/// Capacity that follows demand: which nodes to ask for so that queued work (jobs, gangs, service replicas) that
/// fits no ready node gets one, which pending demand requests nobody needs any more, and why each queued job waits.
/// Pure: the store reads the inputs and writes the plan in one transaction.

/// One piece of queued work, in the order the scheduler takes it.
struct DemandItem: Sendable, Equatable {
    enum Kind: Sendable, Equatable {
        case job
        case replica(service: String)
    }

    var id: String
    var kind: Kind
    /// The work as a job (a replica counts as a checkpointable job of its service's tier), for the policy checks.
    var job: Job
}

/// What the demand pass knows.
struct DemandInput: Sendable {
    var items: [DemandItem]
    /// Ready nodes with free GPUs.
    var freeNodes: [Node]
    /// Pending provisioning requests, any reason: each will be a node.
    var pending: [ProvisioningRequest]
    var pools: [Pool]
    var policies: [Tier: Policy]
    var stats: [String: PoolStats]
    /// Pools whose last demand request failed within `Autoscaler.floorRetryAfter` (asked again after that).
    var failedLately: Set<String> = []
    /// Whether the scheduling loop places jobs (otherwise a job that fits waits for the placement API).
    var autoPlace = true
}

/// The outcome of one demand pass.
struct DemandPlan: Sendable, Equatable {
    /// New demand requests: how many nodes of each pool, in the order asked.
    var requests: [DemandRequest] = []
    /// Pending demand requests no queued work needs any more.
    var cancel: [String] = []
    /// Why each queued job waits, one sentence; nil for a job that fits a ready node (the scheduling loop or the
    /// placement API takes it next), so that a moving queue costs no writes.
    var reasons: [String: String?] = [:]
}

struct DemandRequest: Sendable, Equatable {
    var pool: String
    /// What it is for, for the event log: the first piece of work that needed it.
    var forWork: String
}

enum Demand {
    /// A node, real or to come, with room left in this pass.
    struct Bin {
        var pool: Pool
        var free: Int
        /// The ready node, or the pending request that will bring the node, or nil for a node this pass asks for.
        var nodeId: String?
        var request: ProvisioningRequest?
        /// For a node this pass asks for: its place in `DemandPlan.requests`.
        var newRequest: Int?
        var used = false
    }

    /// Stands for the id of the `index`-th new request in a reason, until the store knows the id.
    static func placeholder(_ index: Int) -> String { "{request \(index)}" }

    static func plan(_ input: DemandInput) -> DemandPlan {
        let pools = Dictionary(input.pools.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        var bins: [Bin] = []
        // Per pool, bin indexes by free GPUs (ready nodes apart from nodes to come), so that finding the tightest
        // fit costs the pools times 64, not the bins: a queue of thousands against ten thousand free nodes once cost
        // seconds per pass. An entry whose bin's free GPUs changed is stale and dropped when met.
        var buckets: [String: (ready: [[Int]], coming: [[Int]])] = [:]
        func file(_ index: Int) {
            let bin = bins[index]
            let level = min(bin.free, 64)
            guard level > 0 else { return }
            // Taken out of the dictionary while changed, so that the arrays are changed in place, not copied.
            var entry = buckets.removeValue(forKey: bin.pool.name) ?? (Array(repeating: [], count: 65), Array(repeating: [], count: 65))
            if bin.nodeId != nil { entry.ready[level].append(index) } else { entry.coming[level].append(index) }
            buckets[bin.pool.name] = entry
        }
        for node in input.freeNodes where node.state == .ready && node.gpusFree > 0 {
            guard let pool = pools[node.pool] else { continue }
            bins.append(Bin(pool: pool, free: node.gpusFree, nodeId: node.id))
            file(bins.count - 1)
        }
        for request in input.pending {
            guard let pool = pools[request.pool] else { continue }
            bins.append(Bin(pool: pool, free: pool.gpusPerNode, request: request))
            file(bins.count - 1)
        }
        var committed = input.stats.mapValues(\.committedNodes)
        var plan = DemandPlan()

        /// Whether `pool` may take `job` at all (type, size, policy).
        func usable(_ job: Job, _ pool: Pool) -> Bool {
            guard let policy = input.policies[job.tier] else { return false }
            return Placement.poolRefusal(job: job, policy: policy, pool: pool) == nil
        }
        /// Why no pool could give `job` a new node.
        func noPool(_ job: Job) -> String {
            guard let policy = input.policies[job.tier] else { return "no policy for tier \(job.tier.rawValue)" }
            var why: [String] = []
            for pool in input.pools {
                if let refusal = Placement.poolRefusal(job: job, policy: policy, pool: pool) {
                    why.append("\(pool.name): \(refusal)")
                } else if let blocked = blocked(pool) {
                    why.append("\(pool.name): \(blocked)")
                }
            }
            return why.isEmpty ? "no pool exists" : why.prefix(4).joined(separator: "; ")
        }
        /// Why no new node can be asked of `pool` now, or nil.
        func blocked(_ pool: Pool) -> String? {
            if pool.stockout { return "in stockout" }
            if input.failedLately.contains(pool.name) { return "a request failed within the last minute" }
            if (committed[pool.name] ?? 0) >= pool.maxNodes { return "at max_nodes (\(pool.maxNodes))" }
            return nil
        }
        /// The pool to ask a new node of for `job`: the policy's capacity order, then the lowest interruption rate,
        /// then price. `zone` keeps a gang's nodes together.
        func newNodePool(_ job: Job, zone: String? = nil) -> Pool? {
            guard let policy = input.policies[job.tier] else { return nil }
            for type in policy.capacityTypes {
                let candidates = input.pools.filter {
                    $0.capacityType == type && usable(job, $0) && blocked($0) == nil
                        && (zone == nil || Placement.gangGroup($0) == zone)
                }
                let rate = { (pool: Pool) in input.stats[pool.name]?.interruptionRate ?? 0 }
                if let best = candidates.min(by: { (rate($0), $0.hourlyPrice, $0.name) < (rate($1), $1.hourlyPrice, $1.name) }) {
                    return best
                }
            }
            return nil
        }
        /// The tightest bin of `pool` with room for `gpus`, among ready nodes or nodes to come; stale entries met on
        /// the way are dropped.
        func tightest(_ pool: String, gpus: Int, ready: Bool) -> (level: Int, index: Int)? {
            guard gpus <= 64, var entry = buckets.removeValue(forKey: pool) else { return nil }
            defer { buckets[pool] = entry }
            for level in max(gpus, 1)...64 {
                while let last = ready ? entry.ready[level].last : entry.coming[level].last {
                    if min(bins[last].free, 64) == level { return (level, last) }
                    if ready { entry.ready[level].removeLast() } else { entry.coming[level].removeLast() }
                }
            }
            return nil
        }
        /// The bin that fits `gpus` of `job` best: ready nodes before nodes to come, then the tightest fit.
        func bestBin(_ job: Job, gpus: Int) -> Int? {
            let candidates = input.pools.filter { buckets[$0.name] != nil && usable(job, $0) }
            for ready in [true, false] {
                var best: (level: Int, index: Int)?
                for pool in candidates {
                    if let found = tightest(pool.name, gpus: gpus, ready: ready), best == nil || found < best! { best = found }
                }
                if let best { return best.index }
            }
            return nil
        }
        /// Up to `count` distinct bins of the pools of `group` with room for `gpus` each, ready nodes first, tightest
        /// first; nothing is taken.
        func binsIn(_ group: String, _ job: Job, count: Int) -> [Int] {
            var found: [Int] = []
            let groupPools = input.pools.filter { Placement.gangGroup($0) == group && usable(job, $0) }
            for ready in [true, false] {
                for level in max(job.gpus, 1)...64 {
                    for pool in groupPools {
                        guard let entry = buckets[pool.name] else { continue }
                        for index in (ready ? entry.ready[level] : entry.coming[level]).reversed()
                        where min(bins[index].free, 64) == level && !found.contains(index) {
                            found.append(index)
                            if found.count == count { return found }
                        }
                    }
                }
            }
            return found
        }
        func describe(_ bin: Bin) -> String {
            // Which node is left out: it changes from pass to pass as the queue moves, and every change is a write.
            if bin.nodeId != nil {
                return input.autoPlace
                    ? "fits a ready node of pool \(bin.pool.name); the scheduling loop places it next"
                    : "fits a ready node of pool \(bin.pool.name); waiting for a placement (the scheduling loop is off)"
            }
            if let request = bin.request {
                return "waiting for a node from provisioning request \(request.id) (pool \(bin.pool.name), \(request.reason))"
            }
            return
                "waiting for a node from provisioning request \(bin.newRequest.map(Demand.placeholder) ?? "?") (pool \(bin.pool.name), demand)"
        }
        func ask(_ pool: Pool, for item: DemandItem) -> Int {
            committed[pool.name, default: 0] += 1
            plan.requests.append(DemandRequest(pool: pool.name, forWork: item.id))
            bins.append(Bin(pool: pool, free: pool.gpusPerNode, newRequest: plan.requests.count - 1))
            file(bins.count - 1)
            return bins.count - 1
        }
        func take(_ index: Int, gpus: Int) {
            bins[index].free -= gpus
            bins[index].used = true
            file(index)
        }

        /// A gang: `nodes` distinct bins in one zone and GPU type, topped up with new nodes of that zone; the zone
        /// that needs the fewest new nodes wins, then the policy's capacity order.
        func gang(_ item: DemandItem, _ job: Job) -> String? {
            var groups: [String] = []
            for pool in input.pools where usable(job, pool) && !groups.contains(Placement.gangGroup(pool)) {
                groups.append(Placement.gangGroup(pool))
            }
            var best: (newNodes: Int, group: String, members: [Int])?
            for group in groups {
                let members = job.gpus <= 64 ? binsIn(group, job, count: job.nodes) : []
                let missing = job.nodes - members.count
                if missing > 0 {
                    // Room for the missing nodes in this zone's pools, below their max_nodes.
                    let room = input.pools.filter { Placement.gangGroup($0) == group && usable(job, $0) && blocked($0) == nil }
                        .reduce(0) { $0 + max(0, $1.maxNodes - (committed[$1.name] ?? 0)) }
                    guard room >= missing else { continue }
                }
                if best == nil || missing < best!.newNodes { best = (missing, group, members) }
            }
            guard let chosen = best else { return "no zone can hold the whole gang now: \(noPool(job))" }
            var members = chosen.members
            for _ in 0..<chosen.newNodes {
                guard let pool = newNodePool(job, zone: chosen.group) else { break }
                members.append(ask(pool, for: item))
            }
            guard members.count == job.nodes else { return "no zone can hold the whole gang now: \(noPool(job))" }
            for index in members { take(index, gpus: job.gpus) }
            if chosen.newNodes == 0 && members.allSatisfy({ bins[$0].nodeId != nil }) { return nil }
            let coming = members.filter { bins[$0].nodeId == nil }.count
            return "waiting for \(coming) node(s) in \(chosen.group) (provisioning, for the whole gang)"
        }

        for item in input.items {
            let job = item.job
            var reason: String?
            if job.nodes <= 1 {
                if let index = bestBin(job, gpus: job.gpus) {
                    take(index, gpus: job.gpus)
                    reason = bins[index].nodeId == nil ? describe(bins[index]) : nil
                } else if let pool = newNodePool(job) {
                    let index = ask(pool, for: item)
                    take(index, gpus: job.gpus)
                    reason = describe(bins[index])
                } else {
                    reason = "no node can be had for it: \(noPool(job))"
                }
            } else {
                reason = gang(item, job)
            }
            if case .job = item.kind { plan.reasons[item.id] = reason }
        }

        for bin in bins where !bin.used {
            if let request = bin.request, request.reason == Autoscaler.demandReason { plan.cancel.append(request.id) }
        }
        return plan
    }
}

extension Autoscaler {
    /// The reason of a provisioning request asked for queued work.
    static let demandReason = "demand"
}

/// An idle node the autoscaler may give back.
struct IdleNode: Sendable, Equatable {
    var nodeId: String
    var pool: Pool
    /// Whether it was asked for queued work (`reason: demand`).
    var forDemand: Bool
    /// The pool's live nodes.
    var liveNodes: Int
}

extension Autoscaler {
    static let demandGone = "idle: the demand it was asked for went away"
    static let aboveMax = "idle in a pool above its max_nodes"

    /// Which idle nodes go, and why: any idle node of a pool above its `max_nodes` (the operator lowered it: the pool
    /// is being emptied), and a node asked for demand that went away, as long as its pool stays at `min_nodes` or
    /// above. Oldest first.
    static func idleReleases(_ idle: [IdleNode]) -> [(String, String)] {
        var live = Dictionary(idle.map { ($0.pool.name, $0.liveNodes) }, uniquingKeysWith: { first, _ in first })
        var chosen: [(String, String)] = []
        for node in idle {
            let count = live[node.pool.name] ?? 0
            if count > node.pool.maxNodes {
                chosen.append((node.nodeId, aboveMax))
            } else if node.forDemand && count > node.pool.minNodes {
                chosen.append((node.nodeId, demandGone))
            } else {
                continue
            }
            live[node.pool.name] = count - 1
        }
        return chosen
    }
}
