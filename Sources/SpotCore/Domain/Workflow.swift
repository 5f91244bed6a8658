/// The inputs and answers of the background workflows' decisions. Each reconciler in `Workflows/` hands its
/// store call one of the pure functions below: the store reads the inputs and writes the answer in one transaction.

/// Every pool with its figures, as a pass of decisions sees them; decisions keep it current as they commit capacity.
struct CapacityView: Sendable {
    var pools: [Pool]
    var stats: [String: PoolStats]
    /// The tier policies (for a gang's replacement: may it run on on-demand in its zone).
    var policies: [Tier: Policy] = [:]
}

/// The worker lease as held: who holds it, and the fencing token of this holding. Every workflow write checks, in
/// its own transaction, that the lease is still this one: a process that lost it can commit nothing.
struct Lease: Sendable, Equatable {
    var name: String
    var owner: String
    var token: Int64
}

// MARK: - Drains

/// A node a termination notice has just arrived for, with the jobs on it (running, or already checkpointing: a gang
/// another member's notice reached first, or a job yielding to a premium job).
struct DrainCase: Sendable {
    var interruption: Interruption
    var node: Node
    var jobs: [Job]
}

/// What becomes of one reclaimed node's work, and where its replacement comes from.
struct DrainDecision: Sendable {
    var interruptionId: String
    var nodeId: String
    var jobs: [(job: Job, action: DrainAction)]
    var replacement: Replacement

    enum Replacement: Sendable, Equatable {
        /// Ask this pool for a node.
        case pool(Pool)
        /// No pool of the lost node's GPU type has room.
        case unavailable(gpuType: String)
        /// The node was gone before the notice: nothing to replace.
        case none
    }
}

/// Facts of an interruption under way, for the steps that close it.
struct InterruptionFacts: Sendable {
    var interruption: Interruption
    var nodeState: NodeState?
    /// Jobs still running or checkpointing on the node, and service replicas still on it.
    var jobsLeft: Int
    /// Provisioning requests of this interruption still pending.
    var pendingRequests: Int
}

extension Drain {
    /// The drain of each newly reclaimed node: every running job checkpoints or is requeued, and the lost node gets
    /// one replacement (another spot pool first, on-demand when none can take it). `capacity` is the pass's view,
    /// kept current as replacements are chosen, so that a mass reclaim does not pile every request on one pool.
    static func decide(_ cases: [DrainCase], capacity: CapacityView, now: Millis, marginSeconds: Int64) -> [DrainDecision] {
        var capacity = capacity
        // A gang on several reclaimed nodes is decided once, in the first case that holds it, by the earliest of
        // its nodes' deadlines.
        var first: [String: Int] = [:]
        var earliest: [String: Millis?] = [:]
        for (position, drain) in cases.enumerated() {
            for job in drain.jobs {
                if first[job.id] == nil { first[job.id] = position }
                let deadline = drain.interruption.deadline
                if let known = earliest[job.id] {
                    earliest[job.id] = (known ?? deadline).map { min($0, deadline ?? $0) }
                } else {
                    earliest[job.id] = deadline
                }
            }
        }
        return cases.enumerated().map { position, drain in
            let jobs = drain.jobs.compactMap { job -> (job: Job, action: DrainAction)? in
                guard first[job.id] == position else { return nil }
                let action = plan(job: job, nodeDeadline: earliest[job.id] ?? nil, now: now, marginSeconds: marginSeconds)
                return action.map { (job: job, action: $0) }
            }
            var replacement = DrainDecision.Replacement.none
            if drain.interruption.nodeWasLive, let lost = capacity.pools.first(where: { $0.name == drain.node.pool }) {
                // A gang member's replacement goes to the survivors' zone first, so that the gang can reassemble.
                let gang = drain.jobs.first(where: \.isGang)
                let stableTypes = gang.flatMap { capacity.policies[$0.tier] }.map { Set($0.capacityTypes).subtracting([.spot]) } ?? []
                if let target = Autoscaler.replacementPool(
                    lost: lost, pools: capacity.pools, stats: capacity.stats, preferZone: gang.map { _ in lost.zone },
                    zoneStable: stableTypes)
                {
                    replacement = .pool(target)
                    capacity.stats[target.name, default: PoolStats()].committedNodes += 1
                } else {
                    replacement = .unavailable(gpuType: lost.gpuType)
                }
            }
            return DrainDecision(interruptionId: drain.interruption.id, nodeId: drain.node.id, jobs: jobs, replacement: replacement)
        }
    }

    /// At its deadline a node is gone (the cloud takes it), whatever is still on it.
    static func terminationDue(_ facts: InterruptionFacts, now: Millis) -> Bool {
        guard let deadline = facts.interruption.deadline, facts.nodeState != .terminated, facts.nodeState != nil else { return false }
        return deadline <= now
    }

    /// A draining node with no job left is drained.
    static func emptied(_ facts: InterruptionFacts) -> Bool {
        facts.interruption.state == .draining && facts.jobsLeft == 0
    }

    /// An interruption is complete when its node is terminated, nothing runs there, and its replacement requests
    /// are resolved.
    static func complete(_ facts: InterruptionFacts) -> Bool {
        facts.nodeState == .terminated && facts.jobsLeft == 0 && facts.pendingRequests == 0
    }

    /// A step that closes an interruption.
    enum CloseStep: Sendable, Equatable {
        /// The node is gone: what still runs there is requeued.
        case terminate
        /// The node has no job left.
        case markDrained
        case complete
    }

    /// The steps that close an interruption now, in order, each seeing the state the ones before it leave (a node
    /// terminated at its deadline is drained and completed in the same pass).
    static func close(_ facts: InterruptionFacts, now: Millis) -> [CloseStep] {
        var facts = facts
        var steps: [CloseStep] = []
        if terminationDue(facts, now: now) {
            steps.append(.terminate)
            facts.nodeState = .terminated
            facts.jobsLeft = 0
        }
        if emptied(facts) {
            steps.append(.markDrained)
            facts.interruption.state = .drained
        }
        if complete(facts) { steps.append(.complete) }
        return steps
    }

    /// Whether `close` could return a step: the store reads only such interruptions (its candidate query mirrors
    /// this; `WorkflowDecisionTests` checks that nothing `close` acts on falls outside it).
    static func mayClose(_ facts: InterruptionFacts, now: Millis) -> Bool {
        facts.interruption.state == .draining || (facts.interruption.deadline.map { $0 <= now } ?? false) || facts.nodeState == .terminated
    }
}

// MARK: - Requeues

enum Requeue {
    /// Why a job that cannot checkpoint is requeued at once when its node is reclaimed.
    static let notCheckpointable = "node reclaimed; not checkpointable"
    /// Why jobs still on a node at its deadline are requeued.
    static let atDeadline = "reclaimed at deadline"

    /// Why a job whose checkpoint deadline passed is requeued.
    static func expiredReason(_ job: Job) -> String {
        job.preemptedFor.map { "preempted for premium job \($0); checkpoint deadline passed" } ?? "checkpoint deadline passed"
    }
}

// MARK: - Floors and scale-down

/// A pool with a `min_nodes` floor, and what counts toward it.
struct FloorFacts: Sendable {
    var pool: Pool
    /// Live nodes plus pending requests of every kind.
    var committedNodes: Int
    /// Floor requests still pending.
    var pendingFloorRequests: Int
    /// Whether a floor request failed in the last minute (the pool then waits).
    var failedLately: Bool
}

/// An on-demand fallback node idle long enough to be given back once spot is back.
struct IdleFallback: Sendable {
    var nodeId: String
    var pool: String
    var gpus: Int
    var gpuType: String
    var minNodes: Int
}

extension Autoscaler {
    /// At most this many floor requests in flight per pool, as cluster autoscalers cap a scale-up.
    static let maxPendingFloorRequests = 20
    /// A pool whose floor request failed waits this long before the next.
    static let floorRetryAfter: Millis = 60_000

    /// How long to wait after the `attempt`-th failed call to the provider before the next: 1 s, 2 s, 4 s, …, at most
    /// a minute (releases are retried until acknowledged, so the cap matters).
    static func retryDelay(afterAttempt attempt: Int) -> Millis {
        let doublings = min(max(attempt - 1, 0), 6)
        return min(1000 << doublings, 60_000)
    }

    /// How a provisioning request for a lost node is labelled: the first is the replacement, later ones fallbacks.
    static func requestReason(attempt: Int) -> String { attempt == 1 ? "replacement" : "fallback" }

    /// How many nodes to ask of each pool below its `min_nodes` floor.
    static func floorRequests(_ pools: [FloorFacts]) -> [(pool: String, count: Int)] {
        pools.compactMap { facts in
            let missing = facts.pool.minNodes - facts.committedNodes
            guard missing > 0, !facts.failedLately else { return nil }
            let count = min(missing, maxPendingFloorRequests - facts.pendingFloorRequests)
            return count > 0 ? (facts.pool.name, count) : nil
        }
    }

    /// Which idle fallback nodes to give back: each only while free spot GPUs of its type cover it, counting those
    /// already taken by the nodes given back before it in this pass, and never below its pool's `min_nodes`.
    static func scaleDown(_ idle: [IdleFallback], spotFree: [String: Int], liveNodes: [String: Int]) -> [String] {
        var spotFree = spotFree
        var liveNodes = liveNodes
        var released: [String] = []
        for node in idle {
            let free = spotFree[node.gpuType] ?? 0
            let live = liveNodes[node.pool] ?? 0
            guard free >= node.gpus, live > node.minNodes else { continue }
            spotFree[node.gpuType] = free - node.gpus
            liveNodes[node.pool] = live - 1
            released.append(node.nodeId)
        }
        return released
    }

    /// The on-demand fallback for a failed replacement: another pool of the lost node's GPU type, never one tried.
    static func fallbackPool(lostPool: String, tried: Set<String>, capacity: CapacityView) -> Pool? {
        guard let lost = capacity.pools.first(where: { $0.name == lostPool }) else { return nil }
        return replacementPool(lost: lost, pools: capacity.pools, stats: capacity.stats, excluding: tried, onDemandOnly: true)
    }
}
