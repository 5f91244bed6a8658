import Foundation

/// A class of identical capacity.
public struct Pool: Sendable, Equatable {
    public var name: String
    public var capacityType: CapacityType
    public var gpuType: String
    public var gpusPerNode: Int
    public var zone: String
    public var instanceType: String
    public var hourlyPrice: Double
    public var minNodes: Int
    public var maxNodes: Int
    public var stockout: Bool
    public var createdAt: Millis
    public var updatedAt: Millis
}

/// One machine.
public struct Node: Sendable, Equatable {
    public var id: String
    public var pool: String
    public var gpus: Int
    public var gpusAllocated: Int
    public var state: NodeState
    public var provisioningRequestId: String?
    public var createdAt: Millis
    public var updatedAt: Millis
    public var idleSince: Millis?
    public var terminatedAt: Millis?

    var gpusFree: Int { max(0, gpus - gpusAllocated) }
}

/// A checkpoint a job saved.
public struct Checkpoint: Sendable, Equatable {
    public var uri: String
    public var step: Int64
    public var at: Millis
}

/// A GPU workload.
public struct Job: Sendable, Equatable {
    public var id: String
    public var seq: Int64
    public var tier: Tier
    public var gpus: Int
    public var gpuType: String?
    public var checkpointable: Bool
    public var expectedDurationSeconds: Int64?
    public var priority: Int64
    public var state: JobState
    public var nodeId: String?
    public var attempt: Int64
    public var requeueCount: Int64
    public var lastCheckpoint: Checkpoint?
    public var resumeFrom: Checkpoint?
    public var checkpointDeadline: Millis?
    public var preemptedFor: String?
    public var submittedAt: Millis
    public var updatedAt: Millis
    public var startedAt: Millis?
    public var finishedAt: Millis?
    /// How many nodes the job spans (a gang when more than one), with `gpus` GPUs on each.
    public var nodes: Int = 1
    /// Every node the job is on, the first being `nodeId`; empty while it is on none.
    public var nodeIds: [String] = []
    /// Why a queued job waits (written by the demand pass).
    public var pendingReason: String?

    /// Whether the job spans several nodes.
    var isGang: Bool { nodes > 1 }

    /// The nodes the job is on: its members, or its one node.
    var members: [String] { nodeIds.isEmpty ? (nodeId.map { [$0] } ?? []) : nodeIds }

    /// GPUs the job holds across all its nodes.
    var totalGPUs: Int { gpus * nodes }
}

/// A notice that a node is going away (or may).
public struct Interruption: Sendable, Equatable {
    public var id: String
    public var seq: Int64
    public var nodeId: String
    public var pool: String?
    public var kind: InterruptionKind
    public var source: String
    public var eventId: String
    public var state: InterruptionState
    public var deadline: Millis?
    public var receivedAt: Millis
    public var completedAt: Millis?
    public var nodeWasLive: Bool
}

/// One step of an interruption's timeline.
public struct TimelineStep: Sendable, Equatable {
    public var step: String
    public var at: Millis
    public var jobId: String?
    public var detail: String?
}

/// Replacement capacity asked of the provider.
public struct ProvisioningRequest: Sendable, Equatable {
    public var id: String
    public var seq: Int64
    public var pool: String
    public var reason: String
    public var interruptionId: String?
    public var replacesNodeId: String?
    public var attemptNumber: Int
    public var state: ProvisioningState
    public var nodeId: String?
    public var error: String?
    public var createdAt: Millis
    public var submittedAt: Millis?
    public var resolvedAt: Millis?
    /// Calls made to the provider so far, when the next may be made (after a failed one), and why the last failed.
    public var attempts: Int = 0
    public var nextAttemptAt: Millis?
    public var lastError: String?
}

/// A node spotd gives back through the provider, asked until the provider acknowledges it.
public struct NodeRelease: Sendable, Equatable {
    public var nodeId: String
    public var pool: String
    public var reason: String
    /// The same on every try, so that the provider acts once.
    public var idempotencyKey: String
    public var acknowledged: Bool
    public var attempts: Int
    public var nextAttemptAt: Millis
    public var lastError: String?
    public var createdAt: Millis
    public var acknowledgedAt: Millis?
}

/// Per-tier placement policy.
public struct Policy: Sendable, Equatable {
    public var tier: Tier
    /// Allowed capacity types, preferred first.
    public var capacityTypes: [CapacityType]
    /// Non-checkpointable jobs longer than this never land on spot.
    public var maxUncheckpointableSpotSeconds: Int64
    /// Whether this tier may use spot only for checkpointable jobs.
    public var spotRequiresCheckpointable: Bool
    public var updatedAt: Millis

    /// The defaults of the product contract.
    static func defaults(admissionLimit: Int64, at now: Millis) -> [Policy] {
        [
            Policy(
                tier: .premium, capacityTypes: [.reserved, .onDemand], maxUncheckpointableSpotSeconds: admissionLimit,
                spotRequiresCheckpointable: false, updatedAt: now),
            Policy(
                tier: .standard, capacityTypes: [.onDemand, .spot], maxUncheckpointableSpotSeconds: admissionLimit,
                spotRequiresCheckpointable: true, updatedAt: now),
            Policy(
                tier: .bestEffort, capacityTypes: [.spot, .onDemand], maxUncheckpointableSpotSeconds: admissionLimit,
                spotRequiresCheckpointable: false, updatedAt: now),
        ]
    }
}

/// An audit record.
public struct Event: Sendable, Equatable {
    public var id: Int64
    public var at: Millis
    public var type: String
    public var subject: String
    public var actor: String
    public var data: JSONValue
}

/// An API token, without its secret.
public struct Token: Sendable, Equatable {
    public var id: String
    public var name: String
    public var role: Role
    public var createdAt: Millis
}

/// A page of a list.
public struct PageRequest: Sendable, Equatable {
    public var limit: Int
    /// Sequence number after which the page starts.
    public var after: Int64

    public init(limit: Int = 100, after: Int64 = 0) {
        self.limit = limit
        self.after = after
    }

    /// An opaque cursor: `c` and the last sequence number in lowercase hex. Every string of that shape is a valid
    /// cursor (`^c[0-9a-f]{1,15}$`, as `openapi.yaml` says), and nothing else is.
    static func cursor(after seq: Int64) -> String {
        "c" + String(seq, radix: 16)
    }

    static func decodeCursor(_ text: String) -> Int64? {
        let bytes = Array(text.utf8)
        guard bytes.first == UInt8(ascii: "c"), (2...16).contains(bytes.count) else { return nil }
        var value: Int64 = 0
        for byte in bytes.dropFirst() {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = value << 4 | Int64(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = value << 4 | Int64(byte - UInt8(ascii: "a") + 10)
            default: return nil
            }
        }
        return value
    }
}

/// One page of results.
public struct Page<Item: Sendable>: Sendable {
    public var items: [Item]
    public var nextCursor: String?
}
