/// Minimums and scale-down: pools below `min_nodes` get requests, and on-demand fallback nodes idle long enough are
/// given back once spot capacity of their GPU type is free again. Decisions from `Autoscaler` (`Domain/`).
struct CapacityReconciler: Sendable {
    let store: any WorkflowStore
    let idleSeconds: Int64
    var actor = "autoscaler"

    /// Returns how many nodes were asked for and how many given back.
    func reconcile(lease: Lease) async throws -> (requested: Int, released: Int) {
        let requested = try await store.ensureMinimums(lease: lease, actor: actor, decide: Autoscaler.floorRequests)
        let released = try await store.scaleDown(idleSeconds: idleSeconds, lease: lease, actor: actor, decide: Autoscaler.scaleDown)
        return (requested, released)
    }
}
