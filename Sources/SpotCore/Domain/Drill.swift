/// A drill: termination notices injected on some of a pool's nodes (source `drill`), so that the whole workflow
/// runs for real; or, dry, what would happen.
public struct Drill: Sendable, Equatable {
    public var id: String
    public var pool: String
    public var nodeIds: [String]
    public var interruptionIds: [String]
    public var noticeSeconds: Int64
    public var startedAt: Millis
    public var createdBy: String
}

/// What a drill asks for.
struct DrillRequest: Sendable {
    enum Size: Sendable, Equatable {
        case count(Int)
        case fraction(Double)
    }

    var pool: String
    var size: Size
    var noticeSeconds: Int64
    var dryRun: Bool

    /// How many of `eligible` nodes the drill takes: `count`, or `fraction` of them rounded to the nearest whole
    /// node and at least one.
    func nodeCount(eligible: Int) -> Int {
        switch size {
        case .count(let count): count
        case .fraction(let fraction): max(1, Int((Double(eligible) * fraction).rounded()))
        }
    }

    /// The nodes a drill takes: the pool's ready nodes with no interruption, in id order (so that a dry run names
    /// the nodes a real drill would take, if nothing changes between them).
    static func choose(_ eligible: [String], count: Int) -> [String] {
        Array(eligible.sorted().prefix(count))
    }
}

/// A dry run's answer: the nodes, what becomes of each job on them, and where each replacement would come from; the
/// same decision the drain makes (`Drain.decide`), on the store as it is now.
struct DrillPlan: Sendable {
    struct JobHit: Sendable {
        var jobId: String
        var nodeId: String
        var tier: Tier
        var gpus: Int
        /// `checkpoint` (then requeue) or `requeue`.
        var action: String
    }

    struct Replacement: Sendable {
        var nodeId: String
        /// The pool asked, or nil when none can take it (`unavailable`).
        var pool: String?
        var capacityType: CapacityType?
    }

    var pool: String
    var nodeIds: [String]
    var noticeSeconds: Int64
    var jobs: [JobHit]
    var replacements: [Replacement]

    init(pool: String, nodeIds: [String], noticeSeconds: Int64, decisions: [DrainDecision]) {
        self.pool = pool
        self.nodeIds = nodeIds
        self.noticeSeconds = noticeSeconds
        jobs = decisions.flatMap { decision in
            decision.jobs.map { job, action in
                let verb: String
                switch action {
                case .checkpoint: verb = "checkpoint"
                case .requeue: verb = "requeue"
                }
                return JobHit(jobId: job.id, nodeId: decision.nodeId, tier: job.tier, gpus: job.gpus * max(1, job.nodes), action: verb)
            }
        }
        replacements = decisions.map { decision in
            switch decision.replacement {
            case .pool(let pool): Replacement(nodeId: decision.nodeId, pool: pool.name, capacityType: pool.capacityType)
            case .unavailable, .none: Replacement(nodeId: decision.nodeId, pool: nil, capacityType: nil)
            }
        }
    }
}

/// A drill's report, from its interruptions' timelines, the requeues they caused and their replacements.
struct DrillReport: Sendable {
    struct Step: Sendable {
        var at: Millis
        var nodeId: String
        var step: String
        var jobId: String?
        var detail: String?
    }

    var drill: Drill
    var steps: [Step]
    /// Interruptions still in progress.
    var active: Int
    var jobsRequeued: Int
    var premiumJobsRequeued: Int
    var lostGPUMillis: Int64
    var replacementsReady: Int
    /// When the last replacement became ready, once every drilled node has one.
    var fullCapacityAt: Millis?

    var completed: Bool { active == 0 }

    /// Milliseconds from the drill's start to the last `step` of the drill (nil when none happened).
    func timeTo(_ step: String) -> Millis? {
        steps.filter { $0.step == step }.map(\.at).max().map { $0 - drill.startedAt }
    }
}
