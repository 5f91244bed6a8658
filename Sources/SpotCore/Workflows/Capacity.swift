/// Capacity that follows demand: pools below `min_nodes` get requests; queued work that fits no node gets demand
/// requests (and demand that went away has its requests cancelled); on-demand fallback nodes idle long enough are
/// given back once spot capacity of their GPU type is free again, and so are idle nodes asked for demand that went
/// away, and idle nodes of a pool above its `max_nodes`. Decisions from `Autoscaler` and `Demand` (`Domain/`).
struct CapacityReconciler: Sendable {
    let store: any WorkflowStore
    let idleSeconds: Int64
    var autoPlace = true
    var actor = "autoscaler"

    /// Returns how many nodes were asked for and how many given back.
    func reconcile(lease: Lease) async throws -> (requested: Int, released: Int) {
        let floors = try await store.ensureMinimums(lease: lease, actor: actor, decide: Autoscaler.floorRequests)
        let demand = try await store.planDemand(lease: lease, actor: actor, autoPlace: autoPlace, plan: Demand.plan)
        var released = try await store.scaleDown(idleSeconds: idleSeconds, lease: lease, actor: actor, decide: Autoscaler.scaleDown)
        released += try await store.releaseIdle(idleSeconds: idleSeconds, lease: lease, actor: actor, decide: Autoscaler.idleReleases)
        return (floors + demand.requested, released)
    }
}
