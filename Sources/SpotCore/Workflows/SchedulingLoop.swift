/// The scheduling loop: places queued jobs in order of tier, priority and age, at most `limits.maxPlacements` per
/// pass (one transaction). Each job's place comes from the `SchedulingPlanner` (`Domain/`); a premium job that
/// finds no capacity asks premium protection once per pass.
struct SchedulingLoop: Sendable {
    let store: any WorkflowStore
    var limits = SchedulingLimits()
    var actor = "scheduler-loop"

    func reconcile(lease: Lease) async throws -> SchedulingReport {
        let maxPlacements = limits.maxPlacements
        return try await store.placeQueued(
            limits: limits, lease: lease, actor: actor,
            makePlanner: { SchedulingPlanner($0, maxPlacements: maxPlacements) }, protect: PremiumProtection.choose)
    }
}

/// Premium protection: when a premium job finds no capacity, best-effort jobs on on-demand or reserved nodes yield
/// (those losing the least work, GPUs × time since their last checkpoint; a gang only whole; checkpointable ones get
/// a 30 s checkpoint deadline, the rest are requeued at once).
/// It runs where the refusal happens: in the scheduling loop's pass and in a placement call, so the yield starts in
/// the same transaction that found no room.
enum PremiumProtection {
    /// Which jobs yield on which node; pure.
    static let choose: @Sendable (Job, Policy, [Placement.PreemptionSite], Millis) -> Placement.PreemptionChoice? = {
        Placement.choosePreemption(job: $0, policy: $1, sites: $2, now: $3)
    }
}
