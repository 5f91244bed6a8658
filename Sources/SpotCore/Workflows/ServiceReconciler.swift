/// Inference services: each pass places pending replicas (spread over zones and pools, `base_on_demand` on stable
/// capacity), gives every replica on a reclaimed node a surge replica at once and lets the doomed one go only when
/// its surge is ready (make-before-break), scales to the desired count, and moves on-demand replicas above the base
/// back to spot when spot has room. Decisions from `ServicePlanner` (`Domain/`); one transaction per pass.
struct ServiceReconciler: Sendable {
    let store: any WorkflowStore
    var actor = "worker"

    func reconcile(lease: Lease) async throws -> ServiceReport {
        try await store.reconcileServices(lease: lease, actor: actor) { input, now in ServicePlanner.plan(input, now: now) }
    }
}
