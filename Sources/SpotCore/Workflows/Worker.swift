import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The background worker: runs the durable interruption workflows, provisioning and the scheduling loop.
/// Every pass reads the store, decides and writes, so it is safe to run after a crash at any point.
public struct WorkflowWorker: Service {
    let store: any WorkflowStore
    let clock: any SpotClock
    let config: SpotConfig
    let provider: any Provider
    let signal: WorkerSignal
    let metrics: SpotMetrics
    let logger: Logger
    /// Identifies this process as the lease holder.
    let owner: String
    /// Whether this process holds the lease now; read by the provisioning loop.
    let holdsLease = LeaseFlag()

    init(
        store: any WorkflowStore, clock: any SpotClock, config: SpotConfig, provider: any Provider, signal: WorkerSignal,
        metrics: SpotMetrics, logger: Logger
    ) {
        self.store = store
        self.clock = clock
        self.config = config
        self.provider = provider
        self.signal = signal
        self.metrics = metrics
        self.logger = logger
        self.owner = "\(ProcessInfo.processInfo.hostName):\(getpid()):\(Ids.new("w"))"
    }

    public func run() async throws {
        logger.info("worker started", metadata: ["owner": "\(owner)", "auto_place": "\(config.autoPlace)"])
        await withTaskGroup(of: Void.self) { group in
            // Provider calls (an HTTP round trip for the webhook provider) run in their own loop, so that a slow
            // provisioner never delays a drain.
            group.addTask { await provisioningLoop() }
            // Retention deletes in batches, with pauses: it must not hold up a pass, nor fail one.
            group.addTask { await retentionLoop() }
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
        try? await store.releaseLease("worker", owner: owner)
        logger.info("worker stopped")
    }

    /// What passes remember between runs.
    struct PassState {
        var lastLeaseRenewal: Millis = 0
        var holdsLease = false
        var lastPlacementEvent: Int64 = -1
        var lastHousekeeping: Millis = 0
        /// Tests step provisioning inside the pass; the service runs it in its own loop.
        var inlineProvisioning = true
    }

    /// Advances provisioning requests while this process holds the lease.
    func provisioningLoop() async {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if holdsLease.value {
                do {
                    try await advanceProvisioning()
                } catch {
                    logger.error("provisioning pass failed", metadata: ["error": "\(String(reflecting: error))"])
                }
            }
            try? await Task.sleep(for: .milliseconds(Int(config.workerIntervalSeconds * 1000)))
        }
    }

    /// Removes expired records once a minute while this process holds the lease.
    func retentionLoop() async {
        let retention = Retention(store: store, days: config.retentionDays)
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            guard holdsLease.value else {
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            do {
                _ = try await retention.run(now: clock.now(), logger: logger)
            } catch is CancellationError {
                return
            } catch {
                logger.error("retention pass failed", metadata: ["error": "\(String(reflecting: error))"])
            }
            try? await Task.sleep(for: .seconds(60))
        }
    }

    /// One pass; errors are logged and the next pass tries again.
    func pass(_ state: inout PassState) async {
        do {
            let now = clock.now()
            if !state.holdsLease || now - state.lastLeaseRenewal > 500 {
                state.holdsLease = try await store.acquireLease("worker", owner: owner, ttlMillis: 2000)
                state.lastLeaseRenewal = now
                holdsLease.value = state.holdsLease
            }
            guard state.holdsLease else { return }
            try await runOnce(&state)
        } catch is CancellationError {
            // Shutting down.
        } catch {
            logger.error("worker pass failed", metadata: ["error": "\(String(reflecting: error))"])
        }
    }

    /// Every step of a pass, in order; used directly by tests.
    func runOnce(_ state: inout PassState) async throws {
        let settings = WorkflowSettings(drainMarginSeconds: config.drainMarginSeconds, scaleDownIdleSeconds: config.scaleDownIdleSeconds)
        let report = try await store.reconcileInterruptions(settings)
        if report.moreWaiting { signal.poke() }
        for duration in report.drainDurations { metrics.drainDuration(seconds: duration) }
        if report.didWork {
            logger.info(
                "workflow pass",
                metadata: [
                    "drains_started": "\(report.drainsStarted)", "requeued": "\(report.requeued)",
                    "checkpoints_expired": "\(report.checkpointsExpired)", "nodes_drained": "\(report.nodesDrained)",
                    "nodes_terminated": "\(report.nodesTerminated)", "completed": "\(report.interruptionsCompleted)",
                ])
        }
        if state.inlineProvisioning { try await advanceProvisioning() }
        let now = clock.now()
        if now - state.lastHousekeeping >= 1000 {
            state.lastHousekeeping = now
            _ = try await store.ensureMinimums(actor: "autoscaler")
            let released = try await store.scaleDown(idleSeconds: config.scaleDownIdleSeconds, actor: "autoscaler")
            if released > 0 { logger.info("scaled down idle fallback nodes", metadata: ["count": "\(released)"]) }
        }

        if config.autoPlace {
            let lastEvent = try await store.lastEventId()
            if lastEvent != state.lastPlacementEvent {
                let (placed, seen, more) = try await store.placeQueued(
                    maxPlacements: 1000, pageSize: 2000, maxPages: 10, admissionLimit: config.admissionLimitSeconds, actor: "scheduler-loop"
                )
                metrics.placement("placed", count: placed)
                state.lastPlacementEvent = seen
                if more { signal.poke() }
                if placed > 0 { logger.debug("scheduling loop placed jobs", metadata: ["count": "\(placed)"]) }
            }
        }
    }

    /// Moves every pending provisioning request forward through the provider.
    func advanceProvisioning() async throws {
        for (request, pool) in try await store.pendingProvisioning() {
            let step: ProviderStep
            if let pool {
                step = await provider.advance(request, pool: pool, now: clock.now())
            } else {
                step = .failed("pool \(request.pool) no longer exists")
            }
            guard step != .wait else { continue }
            if try await store.applyProvisioning(request.id, step, actor: "provisioner") {
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
}

/// A flag shared between the worker's loops.
final class LeaseFlag: Sendable {
    private let state = Mutex(false)

    var value: Bool {
        get { state.withLock { $0 } }
        set { state.withLock { $0 = newValue } }
    }
}
