import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

/// Everything a running spotd holds: the store, the worker's wake-up signal, the settings.
public struct SpotRuntime: Sendable {
    public let config: SpotConfig
    public let store: AppDatabase
    public let signal: WorkerSignal
    public let migrationsDirectory: URL
    public let provider: any Provider

    /// Opens the store (applying migrations) and seeds the default policies.
    public init(config: SpotConfig, clock: any SpotClock = SystemClock(), logger: Logger = Logger(label: "spotd")) throws {
        self.config = config
        self.migrationsDirectory = Migrator.locate(explicit: config.migrationsDirectory)
        self.store = try AppDatabase(path: config.dbPath, migrationsDirectory: migrationsDirectory, clock: clock, logger: logger)
        try store.seedPolicies(admissionLimit: config.admissionLimitSeconds)
        self.signal = WorkerSignal()
        switch config.provider {
        case .simulated:
            self.provider = SimulatedProvider(bootSeconds: config.simBootSeconds)
        case .webhook:
            self.provider = WebhookProvider(
                url: config.provisionWebhookURL!, secret: config.webhookSecret, timeoutSeconds: config.provisionTimeoutSeconds)
        }
        SpotMetrics.bootstrap()
    }

    /// The background worker service.
    public func worker(logger: Logger) -> WorkflowWorker {
        WorkflowWorker(store: store, config: config, provider: provider, signal: signal, logger: logger)
    }
}

/// Builds the router: middleware first, then one controller per resource.
public func buildRouter(_ runtime: SpotRuntime) -> Router<AppRequestContext> {
    let router = Router(context: AppRequestContext.self)
    let routes = RouteBook(router: router)
    router.add(middleware: ProblemMiddleware(routes: routes.table))
    router.add(middleware: MetricsMiddleware())
    router.add(middleware: AuthMiddleware(store: runtime.store, adminToken: runtime.config.adminToken))
    let store = runtime.store
    PoolController(store: store, signal: runtime.signal).register(on: routes)
    NodeController(store: store, signal: runtime.signal).register(on: routes)
    JobController(store: store, signal: runtime.signal).register(on: routes)
    InterruptionController(store: store, signal: runtime.signal, webhookSecret: runtime.config.webhookSecret).register(on: routes)
    ProvisioningController(store: store).register(on: routes)
    PolicyController(store: store, signal: runtime.signal).register(on: routes)
    EventController(store: store).register(on: routes)
    TokenController(store: store).register(on: routes)
    OpsController(store: store, migrationsDirectory: runtime.migrationsDirectory).register(on: routes)
    return router
}

/// Builds the application: the HTTP server plus the worker, under one service group.
public func buildApplication(_ runtime: SpotRuntime, logger: Logger = Logger(label: "spotd"), withWorker: Bool = true)
    -> some ApplicationProtocol
{
    var app = Application(
        router: buildRouter(runtime),
        server: .http1(configuration: .init(idleTimeout: .seconds(runtime.config.idleTimeoutSeconds))),
        // A deep accept queue: a mass reclaim can deliver a thousand webhooks at once, and a full queue drops SYNs,
        // which the sender retries only after a second.
        configuration: .init(address: .hostname(runtime.config.host, port: runtime.config.port), serverName: "spotd", backlog: 4096),
        logger: logger)
    if withWorker {
        app.addServices(
            runtime.worker(logger: logger), Checkpointer(path: runtime.config.dbPath, interval: .milliseconds(200), logger: logger))
    }
    return app
}
