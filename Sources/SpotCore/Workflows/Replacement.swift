import Logging
import Synchronization

/// Replacement, fallback and release: moves every pending provisioning request forward through the provider (a
/// node boots, the provisioner takes it, a call fails and is retried after a backoff, or the request fails), gives
/// a failed replacement its on-demand fallback, chosen by `Autoscaler.fallbackPool` (`Domain/`), and asks the
/// provider to release every node spotd gives back until it acknowledges. Provider calls are network round trips:
/// this runs in its own loop, so that a slow provisioner never delays a drain, and makes up to `parallelCalls` of
/// them at once, so that one slow call does not hold up a mass reclaim's hundred requests.
struct ReplacementReconciler: Sendable {
    let store: any WorkflowStore
    let provider: any Provider
    let clock: any SpotClock
    let metrics: SpotMetrics
    let logger: Logger
    /// Calls per request in all (`--provision-retries`).
    var maxAttempts = 3
    var parallelCalls = 16
    /// A provider call that has not returned after this long counts as failed, whatever the HTTP client does
    /// (`--provision-timeout-seconds` plus a margin): one stuck call must never stop the loop.
    var callDeadline: Double = 35
    var actor = "provisioner"

    func reconcile(lease: Lease) async throws {
        // A provider call is a side effect outside the store: a process that lost the lease makes none (its write
        // would be refused anyway; the Idempotency-Key covers the window between this check and it).
        guard try await store.holdsLease(lease) else { throw StoreError.fenced }
        let requests = try await store.pendingProvisioning()
        try await forEach(requests) { request, pool in try await advance(request, pool: pool, lease: lease) }
        let releases = try await store.dueReleases(limit: 256)
        try await forEach(releases) { release, pool in
            let step = await bounded(fallback: .retry("no answer within \(Int(callDeadline)) s")) {
                await provider.release(release, pool: pool, now: clock.now())
            }
            guard try await store.applyRelease(release.nodeId, step, lease: lease, actor: actor) else { return }
            switch step {
            case .acknowledged: metrics.provisioning("released")
            case .retry(let message):
                logger.warning("release not acknowledged", metadata: ["node": "\(release.nodeId)", "error": "\(message)"])
            }
        }
    }

    func advance(_ request: ProvisioningRequest, pool: Pool?, lease: Lease) async throws {
        let step: ProviderStep
        if let pool {
            step = await bounded(fallback: .retry("no answer within \(Int(callDeadline)) s")) {
                await provider.advance(request, pool: pool, now: clock.now())
            }
        } else {
            step = .failed("pool \(request.pool) no longer exists")
        }
        guard step != .wait else { return }
        let applied = try await store.applyProvisioning(request.id, step, maxAttempts: maxAttempts, lease: lease, actor: actor) {
            lost, tried, capacity in
            Autoscaler.fallbackPool(lostPool: lost, tried: tried, capacity: capacity)
        }
        guard applied else { return }
        switch step {
        case .fulfilled: metrics.provisioning("fulfilled")
        case .failed(let message), .retry(let message):
            // A stockout is expected on spot (the replacement falls back to on-demand): counted apart from failures.
            metrics.provisioning(
                step == .failed(message) ? (message.hasPrefix(SimulatedProvider.stockout) ? "unavailable" : "failed") : "retried")
            logger.warning(
                "provisioning call failed", metadata: ["request": "\(request.id)", "pool": "\(request.pool)", "error": "\(message)"])
        default: break
        }
    }

    /// `body`'s result, or `fallback` if it has not returned within `callDeadline`.
    func bounded<T: Sendable>(fallback: T, _ body: @escaping @Sendable () async -> T) async -> T {
        await boundedCall(seconds: callDeadline, fallback: fallback, body)
    }

    /// Runs `body` for every item, at most `parallelCalls` at once; the first error is thrown once all are done.
    func forEach<Item: Sendable>(_ items: [Item], _ body: @escaping @Sendable (Item) async throws -> Void) async throws {
        guard !items.isEmpty else { return }
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = items.makeIterator()
            for _ in 0..<min(parallelCalls, items.count) {
                guard let item = next.next() else { break }
                group.addTask { try await body(item) }
            }
            while try await group.next() != nil {
                if let item = next.next() { group.addTask { try await body(item) } }
            }
        }
    }
}
