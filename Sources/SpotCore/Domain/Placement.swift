/// A pool as placement sees it: its definition, its risk, and its best node for the job.
struct PoolCandidate: Sendable {
    var pool: Pool
    var stats: PoolStats
    /// The schedulable node that fits the job most tightly (packing), if any.
    var bestNode: Node?
    /// Best-effort jobs already running in the pool (for spreading).
    var bestEffortJobs: Int = 0
    /// For a gang: the pool's schedulable nodes that fit one member, tightest first (at most as many as the gang has).
    var fittingNodes: [Node] = []
}

/// One node of a gang's placement.
struct GangMember: Sendable, Equatable {
    var nodeId: String
    var pool: String
    var capacityType: CapacityType
}

/// The answer to "where does this job run?".
enum PlacementDecision: Sendable, Equatable {
    case place(nodeId: String, pool: String, capacityType: CapacityType, reasons: [String])
    /// A gang: every member, first member first, all in one zone and GPU type.
    case placeGang(members: [GangMember], reasons: [String])
    /// No capacity; why not, pool by pool.
    case refuse(reasons: [String: String])
}

/// Pools whose recent interruption rate is at or above this many notices per node-hour count as risky.
let riskyInterruptionRate = 0.05

enum Placement {
    /// Whether a pool may take a job at all, by GPU type, tier policy and admission; nil when it may.
    static func poolRefusal(job: Job, policy: Policy, pool: Pool) -> String? {
        if let wanted = job.gpuType, wanted != pool.gpuType {
            return "wrong GPU type: pool has \(pool.gpuType), job needs \(wanted)"
        }
        if job.gpus > pool.gpusPerNode {
            return "too small: nodes have \(pool.gpusPerNode) GPUs, job needs \(job.gpus)"
        }
        guard policy.capacityTypes.contains(pool.capacityType) else {
            return "tier policy: \(job.tier.rawValue) jobs do not use \(pool.capacityType.rawValue) capacity"
        }
        if pool.capacityType == .spot {
            if policy.spotRequiresCheckpointable && !job.checkpointable {
                return "tier policy: \(job.tier.rawValue) jobs use spot only when checkpointable"
            }
            if !job.checkpointable, let duration = job.expectedDurationSeconds, duration > policy.maxUncheckpointableSpotSeconds {
                return
                    "admission: not checkpointable and expected \(duration) s > \(policy.maxUncheckpointableSpotSeconds) s limit for spot"
            }
        }
        return nil
    }

    /// Whether a pool is risky to place on (recent interruptions or open rebalance signals).
    static func risky(_ stats: PoolStats) -> Bool {
        stats.rebalanceSignals > 0 || stats.interruptionRate >= riskyInterruptionRate
    }

    /// Chooses the node for a job among the candidate pools; pure.
    static func decide(job: Job, policy: Policy, candidates: [PoolCandidate]) -> PlacementDecision {
        var refusals: [String: String] = [:]
        struct Scored {
            var candidate: PoolCandidate
            var node: Node
            var key: [Double]
        }
        var scored: [Scored] = []
        for candidate in candidates {
            let pool = candidate.pool
            if let refusal = poolRefusal(job: job, policy: policy, pool: pool) {
                refusals[pool.name] = refusal
                continue
            }
            guard let node = candidate.bestNode else {
                refusals[pool.name] = fullReason(candidate, job: job)
                continue
            }
            let leftover = Double(node.gpusFree - job.gpus)
            scored.append(
                Scored(
                    candidate: candidate, node: node,
                    key: poolKey(candidate, job: job, policy: policy) + [leftover, candidate.stats.interruptionRate, pool.hourlyPrice]))
        }
        guard
            let best = scored.min(by: { lhs, rhs in
                lhs.key != rhs.key ? lhs.key.lexicographicallyPrecedes(rhs.key) : lhs.node.id < rhs.node.id
            })
        else {
            if candidates.isEmpty { refusals["*"] = "no pools are defined" }
            return .refuse(reasons: refusals)
        }
        let pool = best.candidate.pool
        let rank = (policy.capacityTypes.firstIndex(of: pool.capacityType) ?? 0) + 1
        var reasons = [
            "capacity: \(pool.capacityType.rawValue) is preference #\(rank) for \(job.tier.rawValue)",
            "packing: node \(best.node.id) has \(best.node.gpusFree) of \(best.node.gpus) GPUs free; \(best.node.gpusFree - job.gpus) left after",
            "risk: pool \(pool.name) has \(formatRate(best.candidate.stats.interruptionRate)) notices per node-hour"
                + (best.candidate.stats.rebalanceSignals > 0 ? " and \(best.candidate.stats.rebalanceSignals) rebalance signal(s)" : ""),
        ]
        if job.tier == .bestEffort {
            reasons.append("spread: pool \(pool.name) runs \(best.candidate.bestEffortJobs) best-effort job(s)")
        }
        if pool.capacityType == .spot && !job.checkpointable {
            reasons.append("admission: expected duration within the \(policy.maxUncheckpointableSpotSeconds) s spot limit")
        }
        return .place(nodeId: best.node.id, pool: pool.name, capacityType: pool.capacityType, reasons: reasons)
    }

    /// The leading part of a candidate's sort key, known before its nodes are looked at: capacity preference, risk,
    /// then (for best-effort jobs) spread. Only the node's leftover, the pool's rate and price come after it.
    static func poolKey(_ candidate: PoolCandidate, job: Job, policy: Policy) -> [Double] {
        [
            Double(policy.capacityTypes.firstIndex(of: candidate.pool.capacityType) ?? 99), risky(candidate.stats) ? 1.0 : 0.0,
            job.tier == .bestEffort ? Double(candidate.bestEffortJobs) : 0,
        ]
    }

    /// The eligible candidates in groups of equal `poolKey`, best group first. A pool in a later group can never
    /// beat a pool of an earlier group that has a fitting node, so a caller looks up nodes group by group and stops
    /// at the first group where some pool has one: `decide` then answers as if every pool had been looked at.
    static func searchGroups(job: Job, policy: Policy, candidates: [PoolCandidate]) -> [[Int]] {
        let keyed = candidates.indices.compactMap { index -> (Int, [Double])? in
            poolRefusal(job: job, policy: policy, pool: candidates[index].pool) == nil
                ? (index, poolKey(candidates[index], job: job, policy: policy)) : nil
        }.sorted { $0.1 != $1.1 ? $0.1.lexicographicallyPrecedes($1.1) : $0.0 < $1.0 }
        var groups: [[Int]] = []
        var lastKey: [Double]?
        for (index, key) in keyed {
            if key == lastKey {
                groups[groups.count - 1].append(index)
            } else {
                groups.append([index])
                lastKey = key
            }
        }
        return groups
    }

    // MARK: - Gangs

    /// The pool group a pool belongs to for gangs: its zone and GPU type.
    static func gangGroup(_ pool: Pool) -> String { "\(pool.zone)/\(pool.gpuType)" }

    /// Why no zone could ever hold `gang`, or nil when one could: per zone and GPU type, the `max_nodes` of every
    /// pool the gang may use (its nodes big enough, its capacity type in the tier's policy, the policy's spot rules).
    /// Checked when a gang is submitted. The wording follows the field name (`nodes`).
    static func gangRefusal(_ gang: Job, policy: Policy, pools: [Pool]) -> String? {
        var room: [String: Int] = [:]
        var refusals: [String] = []
        for pool in pools {
            if let refusal = poolRefusal(job: gang, policy: policy, pool: pool) {
                refusals.append("\(pool.name): \(refusal)")
            } else {
                room[gangGroup(pool), default: 0] += pool.maxNodes
            }
        }
        let shape = "\(gang.gpus) GPU(s)\(gang.gpuType.map { " of type \($0)" } ?? "") per node"
        guard let most = room.max(by: { ($0.value, $1.key) < ($1.value, $0.key) }) else {
            let why = refusals.isEmpty ? "there are no pools" : refusals.prefix(5).joined(separator: "; ")
            return "(\(gang.nodes)): no pool can take a \(gang.tier.rawValue) gang with \(shape) (\(why))"
        }
        guard most.value < gang.nodes else { return nil }
        return "(\(gang.nodes)) is wider than any zone can hold for a \(gang.tier.rawValue) gang with \(shape): the most is "
            + "\(most.value) node(s) in \(most.key) (the max_nodes of the pools it may use there)"
    }

    /// Chooses every member of a gang, all or nothing: `job.nodes` distinct nodes with `job.gpus` free GPUs each, in
    /// one zone of one GPU type (possibly from several pools of that zone). Members are ranked as single jobs are
    /// (capacity preference, risk, spread, packing, rate, price); a zone's gang is as good as its worst member's
    /// capacity preference, then the sum of the rest. Pure.
    static func decideGang(job: Job, policy: Policy, candidates: [PoolCandidate]) -> PlacementDecision {
        var refusals: [String: String] = [:]
        struct Member {
            var pool: Pool
            var node: Node
            var key: [Double]
        }
        var groups: [String: [Member]] = [:]
        for candidate in candidates {
            let pool = candidate.pool
            if let refusal = poolRefusal(job: job, policy: policy, pool: pool) {
                refusals[pool.name] = refusal
                continue
            }
            guard !candidate.fittingNodes.isEmpty else {
                refusals[pool.name] = fullReason(candidate, job: job)
                continue
            }
            let prefix = poolKey(candidate, job: job, policy: policy)
            for node in candidate.fittingNodes {
                let key = prefix + [Double(node.gpusFree - job.gpus), candidate.stats.interruptionRate, pool.hourlyPrice]
                groups[gangGroup(pool), default: []].append(Member(pool: pool, node: node, key: key))
            }
        }
        var best: (score: [Double], group: String, members: [Member])?
        for (group, members) in groups {
            guard members.count >= job.nodes else {
                for pool in Set(members.map(\.pool.name)) {
                    let here = members.filter { $0.pool.name == pool }.count
                    refusals[pool] =
                        "gang: \(group) has \(members.count) ready node(s) with \(job.gpus) free GPU(s) (\(here) in this pool); the gang needs \(job.nodes) in one zone"
                }
                continue
            }
            let chosen = members.sorted { lhs, rhs in
                lhs.key != rhs.key ? lhs.key.lexicographicallyPrecedes(rhs.key) : lhs.node.id < rhs.node.id
            }.prefix(job.nodes)
            var score = [chosen.map { $0.key[0] }.max() ?? 0] + Array(repeating: 0.0, count: chosen.first!.key.count - 1)
            for member in chosen {
                for index in 1..<member.key.count { score[index] += member.key[index] }
            }
            if best == nil || score.lexicographicallyPrecedes(best!.score) || (score == best!.score && group < best!.group) {
                best = (score, group, Array(chosen))
            }
        }
        guard let best else {
            if candidates.isEmpty { refusals["*"] = "no pools are defined" }
            return .refuse(reasons: refusals)
        }
        let worst = best.members.max { lhs, rhs in lhs.key[0] < rhs.key[0] }!.pool
        let rank = (policy.capacityTypes.firstIndex(of: worst.capacityType) ?? 0) + 1
        let leftover = best.members.reduce(0) { $0 + $1.node.gpusFree - job.gpus }
        let pools = Set(best.members.map(\.pool.name)).sorted()
        var reasons = [
            "gang: \(job.nodes) nodes in \(best.group): \(best.members.map(\.node.id).joined(separator: ", "))",
            "capacity: \(worst.capacityType.rawValue) is preference #\(rank) for \(job.tier.rawValue) (the gang's least preferred member)",
            "packing: \(leftover) GPU(s) left free on the gang's nodes after",
            "risk: pool(s) \(pools.joined(separator: ", ")) have "
                + pools.map { name in formatRate(candidates.first { $0.pool.name == name }?.stats.interruptionRate ?? 0) }.joined(
                    separator: ", ") + " notices per node-hour",
        ]
        if best.members.contains(where: { $0.pool.capacityType == .spot }) && !job.checkpointable {
            reasons.append("admission: expected duration within the \(policy.maxUncheckpointableSpotSeconds) s spot limit")
        }
        return .placeGang(
            members: best.members.map { GangMember(nodeId: $0.node.id, pool: $0.pool.name, capacityType: $0.pool.capacityType) },
            reasons: reasons)
    }

    private static func fullReason(_ candidate: PoolCandidate, job: Job) -> String {
        let states = candidate.stats.nodesByState
        let ready = states[.ready] ?? 0
        let unschedulable = (states[.cordoned] ?? 0) + (states[.draining] ?? 0) + (states[.drained] ?? 0)
        if ready == 0 && unschedulable == 0 {
            return "no nodes" + ((states[.provisioning] ?? 0) > 0 ? " ready yet (\(states[.provisioning]!) provisioning)" : "")
        }
        if ready == 0 { return "cordoned: all \(unschedulable) live node(s) are cordoned or draining" }
        return "full: no ready node has \(job.gpus) free GPU(s) (\(ready) ready, \(unschedulable) cordoned or draining)"
    }

    static func formatRate(_ rate: Double) -> String {
        let scaled = (rate * 1000).rounded() / 1000
        return "\(scaled)"
    }

    // MARK: - Premium protection

    /// A stable node that could take a premium job (or one member of a premium gang), with the best-effort jobs on
    /// it that could yield.
    struct PreemptionSite: Sendable {
        var node: Node
        var pool: Pool
        var bestEffortJobs: [Job]
    }

    /// The nodes a premium job will use and the best-effort jobs that yield for it.
    struct PreemptionChoice: Sendable, Equatable {
        var nodeIds: [String]
        var jobIds: [String]
    }

    /// How long a checkpointable best-effort job has to checkpoint when it yields to a premium job.
    static let yieldGraceSeconds: Int64 = 30

    /// How each chosen job yields: a checkpointable one checkpoints within `yieldGraceSeconds`, the others are
    /// requeued at once (their work is lost either way).
    static func yieldActions(_ victims: [Job], now: Millis) -> [(Job, DrainAction)] {
        victims.map { ($0, $0.checkpointable ? .checkpoint(deadline: now + yieldGraceSeconds * 1000) : .requeue) }
    }

    /// The work a job loses if it stops now, in GPU-seconds: every GPU it holds (a gang's on all its nodes) times
    /// the time since its last checkpoint, or since it started when it has none in this attempt.
    static func lostWork(_ job: Job, now: Millis) -> Double {
        let since = max(job.startedAt ?? now, job.lastCheckpoint?.at ?? Millis.min)
        return Double(job.totalGPUs) * Double(max(0, now - since)) / 1000
    }

    /// The best-effort jobs on one site that make room for `gpus` GPUs losing the least work: cheapest first,
    /// then any that turned out not to be needed are let off (costliest first). Nil when the site cannot make room.
    static func cheapestVictims(_ site: PreemptionSite, gpus: Int, now: Millis) -> (jobs: [Job], lost: Double)? {
        var free = site.node.gpusFree
        if free >= gpus { return ([], 0) }
        let candidates = site.bestEffortJobs.filter { $0.tier == .bestEffort && $0.state == .running }.sorted { lhs, rhs in
            let (left, right) = (lostWork(lhs, now: now), lostWork(rhs, now: now))
            return left != right ? left < right : (lhs.gpus, rhs.seq) > (rhs.gpus, lhs.seq)
        }
        var chosen: [Job] = []
        for victim in candidates where free < gpus {
            free += victim.gpus
            chosen.append(victim)
        }
        guard free >= gpus else { return nil }
        for victim in chosen.sorted(by: { lostWork($0, now: now) > lostWork($1, now: now) }) where free - victim.gpus >= gpus {
            free -= victim.gpus
            chosen.removeAll { $0.id == victim.id }
        }
        return (chosen, chosen.reduce(0) { $0 + lostWork($1, now: now) })
    }

    /// Picks the best-effort work on stable capacity that yields to a premium job losing the least work (GPUs ×
    /// time since each victim's last checkpoint): one node for a single-node job, `job.nodes` nodes of one zone and
    /// GPU type for a gang. A best-effort gang yields whole: choosing it stops all its members. Pure.
    static func choosePreemption(job: Job, policy: Policy, sites: [PreemptionSite], now: Millis) -> PreemptionChoice? {
        guard job.tier == .premium else { return nil }
        struct Option {
            var site: PreemptionSite
            var victims: [Job]
            var lost: Double
        }
        var groups: [String: [Option]] = [:]
        for site in sites where site.pool.capacityType != .spot && site.node.state.schedulable {
            guard poolRefusal(job: job, policy: policy, pool: site.pool) == nil,
                let (victims, lost) = cheapestVictims(site, gpus: job.gpus, now: now)
            else { continue }
            groups[job.isGang ? gangGroup(site.pool) : site.node.id, default: []].append(
                Option(site: site, victims: victims, lost: lost))
        }
        var best: (lost: Double, jobs: Int, nodes: [String], victims: [String])?
        for options in groups.values {
            let chosen = options.sorted { lhs, rhs in
                lhs.lost != rhs.lost ? lhs.lost < rhs.lost : lhs.site.node.id < rhs.site.node.id
            }.prefix(job.nodes)
            guard chosen.count == job.nodes, chosen.contains(where: { !$0.victims.isEmpty }) else { continue }
            // A gang that yields on two of the chosen nodes is stopped (and counted) once.
            var victims: [String: Job] = [:]
            for option in chosen { for victim in option.victims { victims[victim.id] = victim } }
            let lost = victims.values.reduce(0) { $0 + lostWork($1, now: now) }
            let nodes = chosen.map(\.site.node.id)
            let ids = victims.values.sorted { $0.seq < $1.seq }.map(\.id)
            if best == nil || (lost, ids.count, nodes.joined(separator: ",")) < (best!.lost, best!.jobs, best!.nodes.joined(separator: ","))
            {
                best = (lost, ids.count, nodes, ids)
            }
        }
        return best.map { PreemptionChoice(nodeIds: $0.nodes, jobIds: $0.victims) }
    }
}
