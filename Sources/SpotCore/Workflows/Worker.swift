import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The background worker: holds the worker lease and, while it does, runs the reconcilers in order, one pass at a
/// time. Every reconciler reads the store, asks `Domain/` what to do and writes it in one transaction under the
/// lease's fencing token, so a pass is safe to run after a crash at any point, and a process that lost the lease
/// (paused, partitioned) commits nothing.
public struct WorkflowWorker: Service {
    let store: any WorkflowStore
    let clock: any SpotClock
    let config: SpotConfig
    let signal: WorkerSignal
    let metrics: SpotMetrics
    let logger: Logger
    /// Identifies this process as the lease holder.
    let owner: String
    /// The lease as this process holds it now, if it does; read by the provisioning and retention loops.
    let lease = LeaseHolder()

    let drains: DrainReconciler
    let checkpoints: CheckpointExpiry
    let replacement: ReplacementReconciler
    let capacity: CapacityReconciler
    let scheduling: SchedulingLoop
    let services: ServiceReconciler
    let retention: Retention
    let deliveries: Deliveries

    static let leaseName = "worker"
    /// A lease lives this long unless renewed; it is renewed every `renewEvery`.
    static let leaseTTL: Millis = 2000
    static let renewEvery: Millis = 500

    init(
        store: any WorkflowStore, subscriptions: any SubscriptionStore, clock: any SpotClock, config: SpotConfig, provider: any Provider,
        signal: WorkerSignal, metrics: SpotMetrics, logger: Logger
    ) {
        self.store = store
        self.clock = clock
        self.config = config
        self.signal = signal
        self.metrics = metrics
        self.logger = logger
        self.owner = "\(ProcessInfo.processInfo.hostName):\(getpid()):\(Ids.new("w"))"
        self.drains = DrainReconciler(store: store, marginSeconds: config.drainMarginSeconds)
        self.checkpoints = CheckpointExpiry(store: store)
        self.replacement = ReplacementReconciler(
            store: store, provider: provider, clock: clock, metrics: metrics, logger: logger, maxAttempts: config.provisionRetries,
            callDeadline: config.provisionTimeoutSeconds + 5)
        self.capacity = CapacityReconciler(store: store, idleSeconds: config.scaleDownIdleSeconds, autoPlace: config.autoPlace)
        self.scheduling = SchedulingLoop(store: store)
        self.services = ServiceReconciler(store: store)
        self.retention = Retention(store: store, days: config.retentionDays)
        self.deliveries = Deliveries(store: subscriptions, clock: clock, metrics: metrics, logger: logger)
    }

    public func run() async throws {
        logger.info("worker waiting for the lease", metadata: ["owner": "\(owner)", "auto_place": "\(config.autoPlace)"])
        await withTaskGroup(of: Void.self) { group in
            // The lease is renewed on its own clock, whatever the passes take: a long pass, or a long interval
            // between passes, must not let it lapse under the other loops.
            group.addTask { await renewLoop() }
            // Provider calls (an HTTP round trip for the webhook provider) run in their own loop, so that a slow
            // provisioner never delays a drain.
            group.addTask { await loop(every: .milliseconds(Int(config.workerIntervalSeconds * 1000)), replacement.reconcile) }
            // Subscriptions get their events from their own loop: a receiver that is slow holds up nothing else.
            group.addTask { await loop(every: .milliseconds(250)) { lease in try await deliveries.start(lease: lease) } }
            // Retention deletes in batches, with pauses: it must not hold up a pass, nor fail one.
            group.addTask {
                await loop(every: .seconds(60)) { lease in _ = try await retention.run(now: clock.now(), lease: lease, logger: logger) }
            }
            var state = PassState()
            state.inlineProvisioning = false
            while !Task.isShuttingDownGracefully && !Task.isCancelled {
                await pass(&state)
                await cancelWhenGracefulShutdown {
                    await signal.wait(timeout: .milliseconds(Int(config.workerIntervalSeconds * 1000)))
                }
            }
            group.cancelAll()
        }
        // Deliveries under way end before the lease is let go (a late one would record nothing anyway: fenced).
        await deliveries.stop()
        if let held = lease.value { try? await store.releaseLease(held) }
        metrics.leader.store(false, ordering: .relaxed)
        logger.info("worker stopped")
    }

    /// What passes remember between runs.
    struct PassState {
        var lastPlacementEvent: Int64 = -1
        /// The services pass runs when events were written since its last run, or when a drain it started ends.
        var lastServiceEvent: Int64 = -1
        var serviceDueAt: Millis?
        var lastHousekeeping: Millis = 0
        /// Tests step provisioning inside the pass; the service runs it in its own loop.
        var inlineProvisioning = true
    }

    /// Runs `body` every `interval` while this process holds the lease; errors are logged, a lost lease is let go.
    func loop(every interval: Duration, _ body: @escaping @Sendable (Lease) async throws -> Void) async {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if let held = lease.value {
                do {
                    try await body(held)
                } catch is CancellationError {
                    return
                } catch StoreError.fenced {
                    lease.drop(held)
                } catch {
                    logger.error("worker loop failed", metadata: ["error": "\(String(reflecting: error))"])
                }
                try? await Task.sleep(for: interval)
            } else {
                try? await Task.sleep(for: .milliseconds(Int(Self.renewEvery)))
            }
        }
    }

    /// Takes or renews the lease every `renewEvery` for as long as the worker runs.
    func renewLoop() async {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                try await renew()
            } catch is CancellationError {
                return
            } catch {
                logger.error("worker lease renewal failed", metadata: ["error": "\(String(reflecting: error))"])
            }
            try? await Task.sleep(for: .milliseconds(Int(Self.renewEvery)))
        }
    }

    /// Takes or renews the lease once, saying so when this process takes it or loses it.
    func renew() async throws {
        let previous = lease.value
        let acquired = try await store.acquireLease(Self.leaseName, owner: owner, ttlMillis: Self.leaseTTL)
        lease.set(acquired)
        metrics.leader.store(acquired != nil, ordering: .relaxed)
        if let acquired, acquired != previous {
            logger.info("worker took the lease", metadata: ["owner": "\(owner)", "token": "\(acquired.token)"])
            signal.poke()
        } else if acquired == nil, previous != nil {
            logger.warning("worker lost the lease", metadata: ["owner": "\(owner)"])
        }
    }

    /// One pass under the lease, if this process holds it: every reconciler in order; errors are logged and the
    /// next pass tries again.
    func pass(_ state: inout PassState) async {
        guard let held = lease.value else { return }
        do {
            try await runOnce(&state, lease: held)
        } catch is CancellationError {
            // Shutting down.
        } catch StoreError.fenced {
            // Another process holds the lease now: this one writes nothing until it takes the lease again.
            lease.drop(held)
            logger.warning("worker lost the lease", metadata: ["owner": "\(owner)"])
        } catch {
            logger.error("worker pass failed", metadata: ["error": "\(String(reflecting: error))"])
        }
    }

    /// Every reconciler of a pass, in order, under `lease`; used directly by tests.
    func runOnce(_ state: inout PassState, lease: Lease) async throws {
        var report = DrainReconciler.Report()
        report.drains = try await drains.startDrains(lease: lease)
        if report.drains.moreWaiting { signal.poke() }
        let expired = try await checkpoints.reconcile(lease: lease)
        metrics.deadlineMisses(expired)
        // Services place their own replicas (there is no placement API for them), with or without the loop; before the
        // interruptions close, so that a node whose last replica just went is drained in the same pass.
        let eventsNow = try await store.lastEventId()
        if eventsNow != state.lastServiceEvent || state.serviceDueAt.map({ $0 <= clock.now() }) == true {
            let report = try await services.reconcile(lease: lease)
            state.serviceDueAt = report.nextDue
            state.lastServiceEvent = report.placed + report.surged + report.gone > 0 ? -1 : eventsNow
            if report.placed + report.surged + report.gone > 0 {
                logger.info(
                    "service pass",
                    metadata: ["placed": "\(report.placed)", "surged": "\(report.surged)", "gone": "\(report.gone)"])
            }
        }
        report.steps = try await drains.closeInterruptions(lease: lease)
        for duration in report.steps.drainDurations { metrics.drainDuration(seconds: duration) }
        if report.didWork || expired > 0 {
            logger.info(
                "workflow pass",
                metadata: [
                    "drains_started": "\(report.drains.drainsStarted)", "requeued": "\(report.drains.requeued)",
                    "checkpoints_expired": "\(expired)", "nodes_drained": "\(report.steps.nodesDrained)",
                    "nodes_terminated": "\(report.steps.nodesTerminated)", "completed": "\(report.steps.interruptionsCompleted)",
                ])
        }
        if state.inlineProvisioning { try await replacement.reconcile(lease: lease) }
        let now = clock.now()
        if now - state.lastHousekeeping >= 1000 {
            state.lastHousekeeping = now
            let (_, released) = try await capacity.reconcile(lease: lease)
            if released > 0 { logger.info("scaled down idle fallback nodes", metadata: ["count": "\(released)"]) }
        }
        if config.autoPlace {
            let lastEvent = try await store.lastEventId()
            if lastEvent != state.lastPlacementEvent {
                let placed = try await scheduling.reconcile(lease: lease)
                metrics.placement("placed", count: placed.placed)
                state.lastPlacementEvent = placed.seenEventId
                if placed.more { signal.poke() }
                if placed.placed > 0 { logger.debug("scheduling loop placed jobs", metadata: ["count": "\(placed.placed)"]) }
            }
        }
    }

    /// Takes the lease if it is free; for tests that step passes by hand.
    func takeLease() async throws -> Lease? {
        let acquired = try await store.acquireLease(Self.leaseName, owner: owner, ttlMillis: Self.leaseTTL)
        lease.set(acquired)
        metrics.leader.store(acquired != nil, ordering: .relaxed)
        return acquired
    }
}

/// The lease as a worker holds it, shared between its loops.
final class LeaseHolder: Sendable {
    private let state = Mutex<Lease?>(nil)

    var value: Lease? { state.withLock { $0 } }

    func set(_ lease: Lease?) { state.withLock { $0 = lease } }

    /// Forgets `lease` if it is still the one held (a newer one is kept).
    func drop(_ lease: Lease) {
        state.withLock { if $0 == lease { $0 = nil } }
    }
}
