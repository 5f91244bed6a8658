/// A pool as placement sees it: its definition, its risk, and its best node for the job.
struct PoolCandidate: Sendable {
    var pool: Pool
    var stats: PoolStats
    /// The schedulable node that fits the job most tightly (packing), if any.
    var bestNode: Node?
    /// Best-effort jobs already running in the pool (for spreading).
    var bestEffortJobs: Int = 0
}

/// The answer to "where does this job run?".
enum PlacementDecision: Sendable, Equatable {
    case place(nodeId: String, pool: String, capacityType: CapacityType, reasons: [String])
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

    /// A node and the best-effort jobs on it that could yield to a premium job.
    struct PreemptionSite: Sendable {
        var node: Node
        var pool: Pool
        var bestEffortJobs: [Job]
    }

    /// How long a checkpointable best-effort job has to checkpoint when it yields to a premium job.
    static let yieldGraceSeconds: Int64 = 30

    /// How each chosen job yields: a checkpointable one checkpoints within `yieldGraceSeconds`, the others are
    /// requeued at once (their work is lost either way).
    static func yieldActions(_ victims: [Job], now: Millis) -> [(Job, DrainAction)] {
        victims.map { ($0, $0.checkpointable ? .checkpoint(deadline: now + yieldGraceSeconds * 1000) : .requeue) }
    }

    /// Picks the fewest best-effort jobs to preempt on one stable node so that a premium job fits; pure.
    static func choosePreemption(job: Job, policy: Policy, sites: [PreemptionSite]) -> (nodeId: String, jobIds: [String])? {
        guard job.tier == .premium else { return nil }
        var best: (nodeId: String, jobIds: [String], freed: Int)?
        for site in sites where site.pool.capacityType != .spot && site.node.state.schedulable {
            guard poolRefusal(job: job, policy: policy, pool: site.pool) == nil else { continue }
            var free = site.node.gpusFree
            var chosen: [String] = []
            for victim in site.bestEffortJobs.sorted(by: { ($0.gpus, $1.seq) > ($1.gpus, $0.seq) }) where free < job.gpus {
                guard victim.tier == .bestEffort, victim.state == .running else { continue }
                free += victim.gpus
                chosen.append(victim.id)
            }
            guard free >= job.gpus, !chosen.isEmpty else { continue }
            if best == nil || chosen.count < best!.jobIds.count || (chosen.count == best!.jobIds.count && free < best!.freed) {
                best = (site.node.id, chosen, free)
            }
        }
        return best.map { ($0.nodeId, $0.jobIds) }
    }
}
