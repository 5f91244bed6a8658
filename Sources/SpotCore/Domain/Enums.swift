/// What kind of capacity a pool sells.
public enum CapacityType: String, Sendable, CaseIterable, Codable {
    case spot
    case onDemand = "on_demand"
    case reserved
}

/// Service tier of a job.
public enum Tier: String, Sendable, CaseIterable, Codable, Comparable {
    case premium
    case standard
    case bestEffort = "best_effort"

    /// Placement order: premium first.
    var rank: Int {
        switch self {
        case .premium: 0
        case .standard: 1
        case .bestEffort: 2
        }
    }

    public static func < (lhs: Tier, rhs: Tier) -> Bool { lhs.rank < rhs.rank }
}

/// Lifecycle of a node.
public enum NodeState: String, Sendable, CaseIterable, Codable {
    case provisioning, ready, cordoned, draining, drained, terminated

    /// Whether new work may land here.
    var schedulable: Bool { self == .ready }
    /// Whether the node still exists in the cloud.
    var live: Bool { self != .terminated }
}

/// Lifecycle of a job.
public enum JobState: String, Sendable, CaseIterable, Codable {
    case queued, running, checkpointing, completed, failed, cancelled

    /// Whether the job holds GPUs on a node.
    var onNode: Bool { self == .running || self == .checkpointing }
    var finished: Bool { self == .completed || self == .failed || self == .cancelled }
}

public enum InterruptionKind: String, Sendable, CaseIterable, Codable {
    case termination, rebalance
}

public enum InterruptionState: String, Sendable, CaseIterable, Codable {
    case received, draining, drained, completed, unmatched
}

public enum ProvisioningState: String, Sendable, CaseIterable, Codable {
    /// `cancelled`: the demand it was asked for went away before a node came.
    case pending, fulfilled, failed, cancelled
}

/// Roles of API tokens.
public enum Role: String, Sendable, CaseIterable, Codable {
    /// `agent`: a node agent's token (`spotd agent`): it posts notices, reads nodes and jobs, and reports for the
    /// work on its node (checkpoints, complete, fail, a replica ready); nothing else.
    case admin, `operator`, scheduler, notifier, viewer, agent
}

/// Rules for API token names, which appear as the actor of every event the token causes.
public enum TokenName {
    /// Names spotd itself writes as actors: a token may not pass for one of them.
    static let reserved: Set<String> = [
        "admin", "anonymous", "worker", "autoscaler", "provisioner", "drill", "cli", "scheduler-loop", "operator", "system",
    ]

    /// Why a name cannot be used, or nil when it can (uniqueness is the store's to check).
    static func refusal(_ name: String) -> String? {
        reserved.contains(name.lowercased()) ? "'\(name)' is reserved for spotd's own actors; choose another name" : nil
    }

    /// Every rule at once (the shape as the API checks it, then the reserved names), for `spotd token create`.
    public static func check(_ name: String) -> String? {
        guard NamePattern.identifier.matches(name), name.utf8.count <= 64 else {
            return "the name must match \(NamePattern.identifier.description) and be at most 64 characters"
        }
        return refusal(name)
    }
}
