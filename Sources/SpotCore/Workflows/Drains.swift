/// Interruption intake and drain: each newly reclaimed node's jobs checkpoint or are requeued and its replacement
/// is asked for; then, as the work moves off, each node is drained, terminated at its deadline, and its
/// interruption completed. Decisions from `Drain` and `Autoscaler` (`Domain/`); each step one transaction.
struct DrainReconciler: Sendable {
    let store: any WorkflowStore
    let marginSeconds: Int64
    var actor = "worker"
    /// How many new terminations one pass starts draining, so that notices arriving meanwhile are not held
    /// behind a mass reclaim.
    static let drainsPerPass = 100

    struct Report: Sendable, Equatable {
        var drains = DrainReport()
        var steps = InterruptionStepsReport()

        var didWork: Bool {
            drains.drainsStarted + drains.requeued + drains.provisioningRequested + steps.nodesDrained + steps.nodesTerminated
                + steps.interruptionsCompleted > 0
        }
    }

    /// Starts the drains that are due; the interruption steps that close them run after checkpoint expiry (see
    /// `closeInterruptions`), as one pass of the worker orders them.
    func startDrains(lease: Lease) async throws -> DrainReport {
        let margin = marginSeconds
        return try await store.startDrains(limit: Self.drainsPerPass, lease: lease, actor: actor) { cases, capacity, now in
            Drain.decide(cases, capacity: capacity, now: now, marginSeconds: margin)
        }
    }

    /// Terminates nodes whose deadline came, drains emptied ones, completes interruptions whose work is done.
    func closeInterruptions(lease: Lease) async throws -> InterruptionStepsReport {
        try await store.advanceInterruptions(lease: lease, actor: actor, close: Drain.close)
    }
}

/// Checkpoint expiry: a job asked to checkpoint whose deadline passed is requeued from its newest checkpoint.
struct CheckpointExpiry: Sendable {
    let store: any WorkflowStore
    var actor = "worker"

    /// Requeues the expired ones; returns how many.
    func reconcile(lease: Lease) async throws -> Int {
        try await store.expireCheckpoints(lease: lease, actor: actor, reason: Requeue.expiredReason)
    }
}
