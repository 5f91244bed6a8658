import Logging

/// Replacement and fallback: moves every pending provisioning request forward through the provider (a node boots,
/// the provisioner takes it, or it fails), and a failed replacement gets its on-demand fallback, chosen by
/// `Autoscaler.fallbackPool` (`Domain/`). Provider calls are network round trips: this runs in its own loop, so
/// that a slow provisioner never delays a drain.
struct ReplacementReconciler: Sendable {
    let store: any WorkflowStore
    let provider: any Provider
    let clock: any SpotClock
    let metrics: SpotMetrics
    let logger: Logger
    var actor = "provisioner"

    func reconcile(lease: Lease) async throws {
        // A provider call is a side effect outside the store: a process that lost the lease makes none (its write
        // would be refused anyway; the webhook's Idempotency-Key covers the window between this check and it).
        guard try await store.holdsLease(lease) else { throw StoreError.fenced }
        for (request, pool) in try await store.pendingProvisioning() {
            let step: ProviderStep
            if let pool {
                step = await provider.advance(request, pool: pool, now: clock.now())
            } else {
                step = .failed("pool \(request.pool) no longer exists")
            }
            guard step != .wait else { continue }
            let applied = try await store.applyProvisioning(request.id, step, lease: lease, actor: actor) { lost, tried, capacity in
                Autoscaler.fallbackPool(lostPool: lost, tried: tried, capacity: capacity)
            }
            guard applied else { continue }
            switch step {
            case .fulfilled: metrics.provisioning("fulfilled")
            case .failed(let message):
                metrics.provisioning("failed")
                logger.warning(
                    "provisioning failed", metadata: ["request": "\(request.id)", "pool": "\(request.pool)", "error": "\(message)"])
            default: break
            }
        }
    }
}
