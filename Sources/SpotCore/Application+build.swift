import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// Everything a running spotd holds: the store, the worker's wake-up signal, the settings, the shared limits.
public struct SpotRuntime: Sendable {
    public let config: SpotConfig
    /// The store: SQLite (the embedded default) or PostgreSQL (the one place that names it).
    let store: SpotStore
    public let clock: any SpotClock
    public let signal: WorkerSignal
    public let provider: any Provider
    public let metrics: SpotMetrics
    /// The one reader of the event log behind every event stream.
    let feed: EventFeed
    /// Request-body bytes held at once, over all requests.
    let bodyBudget: BodyBudget
    /// Connections open at once.
    let connections: ConnectionLimiter

    /// Checks the settings, opens the store (applying migrations) and seeds the default policies.
    public init(config: SpotConfig, clock: any SpotClock = SystemClock(), logger: Logger = Logger(label: "spotd")) throws {
        if let problem = config.validate() { throw problem }
        self.config = config
        self.clock = clock
        let migrations = try config.migrationsDirectory.map(Migration.load(from:))
        self.store = try SpotStore(
            location: config.dbPath, migrations: migrations, connections: config.dbPoolSize, admissionLimit: config.admissionLimitSeconds,
            replicaDrainSeconds: config.replicaDrainSeconds, simulatedCloud: config.provider == .simulated, clock: clock, logger: logger)
        try store.seedPolicies(admissionLimit: config.admissionLimitSeconds)
        self.signal = WorkerSignal()
        switch config.provider {
        case .simulated:
            self.provider = SimulatedProvider(bootSeconds: config.simBootSeconds, cloud: store)
        case .webhook:
            self.provider = WebhookProvider(
                url: config.provisionWebhookURL!, secret: config.webhookSecret, bootTimeoutSeconds: config.provisionBootTimeoutSeconds,
                callTimeoutSeconds: config.provisionTimeoutSeconds)
        }
        let metrics = SpotMetrics()
        self.metrics = metrics
        let feed = EventFeed(
            store: store, capacity: config.maxEventStreams, stallTimeout: .seconds(config.streamStallSeconds), logger: logger
        ) { metrics.eventStreams($0) }
        self.feed = feed
        // What each commit wrote: counted by type (the requeue count among them) and announced to the event streams.
        store.observeCommits { events in
            metrics.committed(events)
            feed.poke()
        }
        self.bodyBudget = BodyBudget(capacity: config.maxBufferedBodyMiB << 20, deadline: .seconds(config.bodyTimeoutSeconds))
        self.connections = ConnectionLimiter(limit: config.maxConnections, logger: logger)
    }

    /// Creates a token for `spotd token create`, with the CLI as the actor; the secret is returned once.
    public func createToken(name: String, role: Role) async throws -> (id: String, secret: String) {
        let (token, secret) = try await store.createToken(name: name, role: role, actor: "cli")
        return (token.id, secret)
    }

    /// Flushes the store's log into its file and closes it; after the application has stopped.
    public func close() throws {
        try store.close()
    }

    /// The background worker service.
    public func worker(logger: Logger) -> WorkflowWorker {
        WorkflowWorker(
            store: store, subscriptions: store, clock: clock, config: config, provider: provider, signal: signal, metrics: metrics,
            logger: logger)
    }
}

/// Builds the router: middleware first, then one controller per resource, each route with the access it needs.
public func buildRouter(_ runtime: SpotRuntime) -> Router<AppRequestContext> {
    let router = Router(context: AppRequestContext.self)
    let routes = RouteBook(router: router, authorizer: Authorizer(store: runtime.store, adminToken: runtime.config.adminToken))
    router.add(middleware: ProblemMiddleware(routes: routes.table))
    router.add(middleware: RequestMetricsMiddleware(metrics: runtime.metrics))
    router.add(middleware: BodyBudgetMiddleware(budget: runtime.bodyBudget))
    registerRoutes(runtime, on: routes)
    return router
}

/// Every controller's routes.
func registerRoutes(_ runtime: SpotRuntime, on routes: RouteBook) {
    let store = runtime.store
    let clock = runtime.clock
    let signal = runtime.signal
    PoolController(store: store, clock: clock, signal: signal).register(on: routes)
    NodeController(store: store, clock: clock, signal: signal).register(on: routes)
    JobController(store: store, clock: clock, signal: signal, metrics: runtime.metrics).register(on: routes)
    InterruptionController(
        store: store, clock: clock, signal: signal, metrics: runtime.metrics, webhookSecret: runtime.config.webhookSecret
    ).register(on: routes)
    ServiceController(store: store, signal: signal).register(on: routes)
    SubscriptionController(store: store).register(on: routes)
    StatusPageController(store: store, authorizer: routes.authorizer, clock: clock, authOn: runtime.config.adminToken != nil)
        .register(on: routes)
    DrillController(store: store, signal: signal, metrics: runtime.metrics, marginSeconds: runtime.config.drainMarginSeconds).register(
        on: routes)
    ReportController(store: store, clock: runtime.clock).register(on: routes)
    ProvisioningController(store: store).register(on: routes)
    PolicyController(store: store, clock: clock, signal: signal).register(on: routes)
    EventController(store: store, feed: runtime.feed).register(on: routes)
    TokenController(store: store, feed: runtime.feed).register(on: routes)
    OpsController(
        store: store, metrics: runtime.metrics, providerKind: runtime.config.provider.rawValue,
        cloud: (runtime.provider as? SimulatedProvider)?.cloud
    ).register(on: routes)
}

/// Every route `buildRouter` serves, with the access each needs (for the role-matrix test).
func registeredRoutes(_ runtime: SpotRuntime) -> [RouteTable.Route] {
    let routes = RouteBook(router: Router(context: AppRequestContext.self), authorizer: Authorizer(store: runtime.store, adminToken: nil))
    registerRoutes(runtime, on: routes)
    return routes.table.routes
}

/// Builds the application: the HTTP server plus the worker, under one service group. `onServerRunning` is called
/// with the port once the server listens (the kernel's choice when the configured port is 0).
public func buildApplication(
    _ runtime: SpotRuntime, logger: Logger = Logger(label: "spotd"), withWorker: Bool = true,
    onServerRunning: @escaping @Sendable (Int?) -> Void = { _ in }
) -> some ApplicationProtocol {
    let config = runtime.config
    let bodyDeadline = TimeAmount.seconds(config.bodyTimeoutSeconds + 1)
    var app = Application(
        router: buildRouter(runtime),
        server: .http1(
            configuration: .init(
                // Backstop for the body deadline: a request whose body has not ended a second after the deadline is
                // closed at the connection, whether or not its handler reads the body.
                additionalChannelHandlers: [
                    ConnectionLimitHandler(limiter: runtime.connections), RequestDeadlineHandler(deadline: bodyDeadline),
                ],
                idleTimeout: .seconds(config.idleTimeoutSeconds))),
        // A deep accept queue: a mass reclaim can deliver a thousand webhooks at once, and a full queue drops SYNs,
        // which the sender retries only after a second.
        configuration: .init(address: .hostname(config.host, port: config.port), serverName: "spotd", backlog: 4096),
        onServerRunning: { channel in onServerRunning(channel.localAddress?.port) },
        logger: logger)
    if withWorker {
        app.addServices(runtime.worker(logger: logger))
        if runtime.store.kind == "sqlite" {
            app.addServices(Checkpointer(path: config.dbPath, interval: .milliseconds(200), logger: logger))
        }
    }
    if let queue = config.sqsQueueURL, let credentials = config.awsCredentials,
        let region = config.awsRegion ?? SQSQueuePoller.Settings.region(of: queue)
    {
        app.addServices(
            SQSQueuePoller(
                settings: .init(queueURL: queue, region: region, credentials: credentials), store: runtime.store, clock: runtime.clock,
                signal: runtime.signal, metrics: runtime.metrics, logger: logger))
    }
    return app
}
