/// What the drain does with one job on a node that is going away.
enum DrainAction: Sendable, Equatable {
    /// Ask the job to checkpoint by this time.
    case checkpoint(deadline: Millis)
    /// Requeue it now: its work is lost either way, so it gets a head start elsewhere.
    case requeue
}

enum Drain {
    /// The checkpoint deadline for a node reclaimed at `deadline`: max(now, deadline − margin).
    static func checkpointDeadline(nodeDeadline: Millis, now: Millis, marginSeconds: Int64) -> Millis {
        max(now, nodeDeadline - marginSeconds * 1000)
    }

    /// Decides what happens to a job when its node is reclaimed (for a gang: the earliest deadline of its reclaimed
    /// nodes); nil when nothing changes: a job already checkpointing keeps its deadline unless this one is earlier.
    /// Pure.
    static func plan(job: Job, nodeDeadline: Millis?, now: Millis, marginSeconds: Int64) -> DrainAction? {
        guard job.checkpointable, let nodeDeadline else { return .requeue }
        let deadline = checkpointDeadline(nodeDeadline: nodeDeadline, now: now, marginSeconds: marginSeconds)
        // With no time left to checkpoint, waiting only delays the requeue.
        guard deadline > now else { return .requeue }
        switch job.state {
        case .running: return .checkpoint(deadline: deadline)
        case .checkpointing: return (job.checkpointDeadline ?? Millis.max) > deadline ? .checkpoint(deadline: deadline) : nil
        default: return nil
        }
    }
}

/// Chooses where replacement capacity comes from; pure.
enum Autoscaler {
    /// The pool to ask for a replacement of a node lost from `lost`.
    /// Spot nodes: another spot pool of the same GPU type (other zone or instance type), lowest interruption rate, then price;
    /// on-demand when none can take it, or when `onDemandOnly` (a spot request already failed).
    /// Stable nodes: the same capacity type, the same pool first.
    /// With `preferZone` (a gang member's node: the survivors' zone), a pool of that zone comes first, so that the
    /// gang can reassemble: another spot pool there, else a pool of a stable type the gang's tier may use
    /// (`zoneStable`); without one the replacement is chosen as for any node.
    static func replacementPool(
        lost: Pool, pools: [Pool], stats: [String: PoolStats], excluding: Set<String> = [], onDemandOnly: Bool = false,
        preferZone: String? = nil, zoneStable: Set<CapacityType> = []
    ) -> Pool? {
        func hasRoom(_ pool: Pool) -> Bool { (stats[pool.name]?.committedNodes ?? 0) < pool.maxNodes }
        let usable = pools.filter { $0.gpuType == lost.gpuType && !excluding.contains($0.name) && hasRoom($0) }
        if let zone = preferZone, lost.capacityType == .spot, !onDemandOnly {
            let rate = { (pool: Pool) in stats[pool.name]?.interruptionRate ?? 0 }
            let local = usable.filter { $0.zone == zone && $0.name != lost.name && $0.capacityType == .spot }
            if let best = local.min(by: { (rate($0), $0.hourlyPrice, $0.name) < (rate($1), $1.hourlyPrice, $1.name) }) {
                return best
            }
            let stable = usable.filter { $0.zone == zone && zoneStable.contains($0.capacityType) }
            if let best = stable.min(by: { ($0.hourlyPrice, $0.name) < ($1.hourlyPrice, $1.name) }) { return best }
        }
        if lost.capacityType != .spot {
            return usable.filter { $0.capacityType == lost.capacityType }
                .min { ($0.name == lost.name ? 0 : 1, $0.hourlyPrice, $0.name) < ($1.name == lost.name ? 0 : 1, $1.hourlyPrice, $1.name) }
        }
        if !onDemandOnly {
            let spot = usable.filter {
                $0.capacityType == .spot && $0.name != lost.name && ($0.zone != lost.zone || $0.instanceType != lost.instanceType)
            }
            let rate = { (pool: Pool) in stats[pool.name]?.interruptionRate ?? 0 }
            if let best = spot.min(by: { (rate($0), $0.hourlyPrice, $0.name) < (rate($1), $1.hourlyPrice, $1.name) }) {
                return best
            }
        }
        return usable.filter { $0.capacityType == .onDemand }.min { ($0.hourlyPrice, $0.name) < ($1.hourlyPrice, $1.name) }
    }
}
