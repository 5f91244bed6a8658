import ArgumentParser
import Foundation
import Hummingbird
import Logging
import NIOCore
import SpotCore
import Synchronization

// The entry point. Top-level code rather than `@main`: with more than one file in the target, SwiftPM compiles
// main.swift as top-level code.
await Spotd.start()

/// `spotd`: the control plane for spot GPU reclaims.
struct Spotd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spotd",
        abstract: "Keeps a GPU platform safe when clouds reclaim spot nodes.",
        version: "spotd \(SpotVersion.current) (store schema \(SpotVersion.schema))",
        subcommands: [
            Serve.self, Migrate.self, TokenCommand.self, DemoCommand.self, AgentCommand.self, StatusCommand.self, GetCommand.self,
            CordonCommand.self, UncordonCommand.self, DrainCommand.self, DrillCommand.self,
        ],
        defaultSubcommand: Serve.self)

    /// ArgumentParser's own `main`, but a usage error (bad flags or arguments) exits 2, like every other usage error
    /// of spotd's (`fail`), instead of 64.
    static func start() async {
        do {
            var command = try await asyncParseAsRoot(nil)
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch {
            if exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(2)
            }
            exit(withError: error)
        }
    }
}

/// Settings shared by every command that opens the store.
struct StoreOptions: ParsableArguments {
    @Option(help: "SQLite file, or postgres://user:password@host:5432/database for PostgreSQL (env SPOTD_DB; default ./spotd.sqlite).")
    var db: String?

    @Option(help: "PostgreSQL: connections this replica keeps, 1-64, plus one for the worker lease (env SPOTD_DB_POOL_SIZE; default 8).")
    var dbPoolSize: Int?

    @Option(help: "Folder of NNNN_name.sql migrations to use instead of the built-in ones (env SPOTD_MIGRATIONS).")
    var migrations: String?

    func apply(to config: inout SpotConfig) {
        config.dbPath = db ?? env("SPOTD_DB") ?? config.dbPath
        if let size = dbPoolSize ?? env("SPOTD_DB_POOL_SIZE").map({ Int($0) ?? -1 }) { config.dbPoolSize = size }
        config.migrationsDirectory = migrations ?? env("SPOTD_MIGRATIONS")
    }
}

func env(_ name: String) -> String? { SpotConfig.environmentValue(name) }

/// A logger in the format and at the level `LOG_FORMAT` and `LOG_LEVEL` ask for; a wrong value stops spotd with a
/// message naming it.
func makeLogger(_ label: String) -> Logger {
    switch LogSettings.parse(format: env("LOG_FORMAT"), level: env("LOG_LEVEL")) {
    case .failure(let error): fail(error.description)
    case .success(let (format, level)):
        LogSettings.bootstrap(format)
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("spotd: \(message)\n".utf8))
    Foundation.exit(2)
}

/// A variable's value as a number; a value that does not parse stops spotd with a message naming the variable.
func parsed<T: LosslessStringConvertible>(_ name: String, _ value: String?) -> T? {
    guard let value else { return nil }
    guard let parsed = T(value) else { fail("\(name)=\(value) is not a valid \(T.self == Double.self ? "number" : "integer")") }
    return parsed
}

/// Opens the runtime, turning a startup error into a message that names what is wrong.
func openRuntime(_ config: SpotConfig, logger: Logger = Logger(label: "spotd")) -> SpotRuntime {
    do {
        return try SpotRuntime(config: config, logger: logger)
    } catch let error as StartupError {
        fail(error.description)
    } catch {
        fail("cannot start: \(error)")
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the HTTP server and the background worker.")

    @OptionGroup var store: StoreOptions
    @Option(help: "Address to listen on (env SPOTD_HOST; default 127.0.0.1).") var host: String?
    @Option(help: "Port (env SPOTD_PORT; default 8080).") var port: Int?
    @Option(help: "Admin bearer token; turns auth on (env SPOTD_ADMIN_TOKEN; default none: auth off, loopback only).")
    var adminToken: String?
    @Option(help: "HMAC secret for interruption webhooks (env SPOTD_WEBHOOK_SECRET; default none).") var webhookSecret: String?
    @Flag(help: "Turn the scheduling loop off (env SPOTD_AUTO_PLACE=false).") var noAutoPlace = false
    @Option(help: "Seconds before a node's deadline that checkpoints are due (env SPOTD_DRAIN_MARGIN_SECONDS; default 10).")
    var drainMarginSeconds: Int64?
    @Option(help: "Seconds a service replica that stops serving drains before it goes (env SPOTD_REPLICA_DRAIN_SECONDS; default 30).")
    var replicaDrainSeconds: Int64?
    @Option(help: "Provisioning provider: simulated or webhook (env SPOTD_PROVIDER; default simulated).") var provider: String?
    @Option(help: "Seconds a simulated node takes to boot (env SPOTD_SIM_BOOT_SECONDS; default 5).") var simBootSeconds: Double?
    @Option(help: "URL the webhook provider POSTs requests to (env SPOTD_PROVISION_WEBHOOK_URL).") var provisionWebhookUrl: String?
    @Option(help: "AWS queue mode: the SQS queue URL EventBridge puts EC2 interruption events on (env SPOTD_AWS_SQS_QUEUE_URL).")
    var awsSqsQueueUrl: String?
    @Option(help: "The queue's AWS region (env AWS_REGION; default: from the queue URL).") var awsRegion: String?
    @Option(help: "Seconds one call to the provisioner may take (env SPOTD_PROVISION_TIMEOUT_SECONDS; default 30).")
    var provisionTimeoutSeconds: Double?
    @Option(help: "Calls to the provisioner per request, with backoff, before it fails (env SPOTD_PROVISION_RETRIES; default 3).")
    var provisionRetries: Int?
    @Option(
        help: "Seconds a taken request may wait for its node to register (env SPOTD_PROVISION_BOOT_TIMEOUT_SECONDS; default 300).")
    var provisionBootTimeoutSeconds: Double?
    @Option(help: "Seconds an idle on-demand fallback node lives once spot is back (env SPOTD_SCALE_DOWN_IDLE_SECONDS; default 600).")
    var scaleDownIdleSeconds: Int64?
    @Option(help: "Days finished records and events are kept (env SPOTD_RETENTION_DAYS; default 30).") var retentionDays: Int64?
    @Option(help: "Most event streams open at once (env SPOTD_MAX_EVENT_STREAMS; default 256).") var maxEventStreams: Int?
    @Option(help: "Seconds a request body has to arrive whole (env SPOTD_BODY_TIMEOUT_SECONDS; default 30).")
    var bodyTimeoutSeconds: Int64?
    @Option(help: "MiB of request bodies held in memory at once, over all requests (env SPOTD_MAX_BUFFERED_BODY_MIB; default 64).")
    var maxBufferedBodyMib: Int?
    @Option(help: "Most connections open at once (env SPOTD_MAX_CONNECTIONS; default 10000, or less below the file limit).")
    var maxConnections: Int?

    func config() -> SpotConfig {
        var config = SpotConfig()
        store.apply(to: &config)
        config.host = host ?? env("SPOTD_HOST") ?? config.host
        config.port = port ?? parsed("SPOTD_PORT", env("SPOTD_PORT")) ?? config.port
        config.adminToken = adminToken ?? env("SPOTD_ADMIN_TOKEN")
        config.webhookSecret = webhookSecret ?? env("SPOTD_WEBHOOK_SECRET")
        if noAutoPlace {
            config.autoPlace = false
        } else if let value = env("SPOTD_AUTO_PLACE") {
            switch value.lowercased() {
            case "true", "1", "yes", "on": config.autoPlace = true
            case "false", "0", "no", "off": config.autoPlace = false
            default: fail("SPOTD_AUTO_PLACE=\(value) must be true or false")
            }
        }
        config.drainMarginSeconds = drainMarginSeconds ?? parsed("SPOTD_DRAIN_MARGIN_SECONDS", env("SPOTD_DRAIN_MARGIN_SECONDS")) ?? 10
        config.replicaDrainSeconds =
            replicaDrainSeconds ?? parsed("SPOTD_REPLICA_DRAIN_SECONDS", env("SPOTD_REPLICA_DRAIN_SECONDS")) ?? 30
        if let kind = provider ?? env("SPOTD_PROVIDER") {
            guard let value = SpotConfig.ProviderKind(rawValue: kind) else { fail("provider \(kind) must be simulated or webhook") }
            config.provider = value
        }
        config.simBootSeconds = simBootSeconds ?? parsed("SPOTD_SIM_BOOT_SECONDS", env("SPOTD_SIM_BOOT_SECONDS")) ?? 5
        if let url = provisionWebhookUrl ?? env("SPOTD_PROVISION_WEBHOOK_URL") {
            guard let parsed = URL(string: url), parsed.scheme == "http" || parsed.scheme == "https" else {
                fail("provision webhook URL \(url) must be an http(s) URL")
            }
            config.provisionWebhookURL = parsed
        }
        if let url = awsSqsQueueUrl ?? env("SPOTD_AWS_SQS_QUEUE_URL") {
            guard let parsed = URL(string: url) else { fail("--aws-sqs-queue-url \(url) is not a URL") }
            config.sqsQueueURL = parsed
            config.awsRegion = awsRegion ?? env("AWS_REGION") ?? env("AWS_DEFAULT_REGION")
            if let key = env("AWS_ACCESS_KEY_ID"), let secret = env("AWS_SECRET_ACCESS_KEY") {
                config.awsCredentials = AWSCredentials(accessKeyId: key, secretAccessKey: secret, sessionToken: env("AWS_SESSION_TOKEN"))
            }
        }
        config.provisionTimeoutSeconds =
            provisionTimeoutSeconds ?? parsed("SPOTD_PROVISION_TIMEOUT_SECONDS", env("SPOTD_PROVISION_TIMEOUT_SECONDS"))
            ?? config.provisionTimeoutSeconds
        config.provisionRetries =
            provisionRetries ?? parsed("SPOTD_PROVISION_RETRIES", env("SPOTD_PROVISION_RETRIES")) ?? config.provisionRetries
        config.provisionBootTimeoutSeconds =
            provisionBootTimeoutSeconds ?? parsed("SPOTD_PROVISION_BOOT_TIMEOUT_SECONDS", env("SPOTD_PROVISION_BOOT_TIMEOUT_SECONDS"))
            ?? config.provisionBootTimeoutSeconds
        config.scaleDownIdleSeconds =
            scaleDownIdleSeconds ?? parsed("SPOTD_SCALE_DOWN_IDLE_SECONDS", env("SPOTD_SCALE_DOWN_IDLE_SECONDS")) ?? 600
        config.retentionDays = retentionDays ?? parsed("SPOTD_RETENTION_DAYS", env("SPOTD_RETENTION_DAYS")) ?? config.retentionDays
        config.maxEventStreams =
            maxEventStreams ?? parsed("SPOTD_MAX_EVENT_STREAMS", env("SPOTD_MAX_EVENT_STREAMS")) ?? config.maxEventStreams
        config.bodyTimeoutSeconds =
            bodyTimeoutSeconds ?? parsed("SPOTD_BODY_TIMEOUT_SECONDS", env("SPOTD_BODY_TIMEOUT_SECONDS")) ?? config.bodyTimeoutSeconds
        config.maxBufferedBodyMiB =
            maxBufferedBodyMib ?? parsed("SPOTD_MAX_BUFFERED_BODY_MIB", env("SPOTD_MAX_BUFFERED_BODY_MIB")) ?? config.maxBufferedBodyMiB
        config.maxConnections =
            maxConnections ?? parsed("SPOTD_MAX_CONNECTIONS", env("SPOTD_MAX_CONNECTIONS")) ?? config.maxConnections
        return config
    }

    func run() async throws {
        ConnectionLimiter.raiseFileLimit()
        let config = config()
        if let problem = config.validate() { fail(problem.description) }
        let logger = makeLogger("spotd")
        if config.adminToken == nil {
            logger.warning(
                "authentication is off: no admin token is configured, so spotd listens on loopback only",
                metadata: ["host": "\(config.host)"])
        }
        let runtime = openRuntime(config, logger: logger)
        logger.info(
            "spotd starting",
            metadata: [
                "version": "\(SpotVersion.current)", "address": "\(config.host):\(config.port)", "db": "\(config.dbDescription)",
                "provider": "\(config.provider.rawValue)", "auto_place": "\(config.autoPlace)",
                "signed_webhooks": "\(config.webhookSecret != nil)",
            ])
        let listening = Atomic(false)
        let app = buildApplication(runtime, logger: logger) { _ in listening.store(true, ordering: .relaxed) }
        do {
            try await app.runService()
        } catch  where !listening.load(ordering: .relaxed) {
            // Nothing listens yet: the address is the problem (in use, not ours, not resolvable).
            fail(StartupError.listen(address: "\(config.host):\(config.port)", detail: listenFailure(error)).description)
        }
        try runtime.close()
        logger.info("spotd stopped; store closed")
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply the migrations to the store and exit.")
    @OptionGroup var store: StoreOptions

    func run() async throws {
        var config = SpotConfig()
        store.apply(to: &config)
        let runtime = openRuntime(config)
        try runtime.close()
        print("migrations applied to \(config.dbDescription)")
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Manage API tokens offline, on the store.", subcommands: [Create.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a token; its secret is printed once.")
        @OptionGroup var store: StoreOptions
        @Option(help: "Role: admin, operator, scheduler, notifier, viewer or agent.") var role: String
        @Option(help: "A name for the token (shown as the actor in events).") var name: String

        func run() async throws {
            guard let role = Role(rawValue: role) else {
                fail("role must be one of \(Role.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if let problem = TokenName.check(name) { fail("--name: \(problem)") }
            var config = SpotConfig()
            store.apply(to: &config)
            let runtime = openRuntime(config)
            let created: (id: String, secret: String)
            do {
                created = try await runtime.createToken(name: name, role: role)
            } catch let error as StoreError {
                fail("--name: \(error)")
            }
            try runtime.close()
            print("id:    \(created.id)\nname:  \(name)\nrole:  \(role.rawValue)\ntoken: \(created.secret)")
        }
    }
}

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo", abstract: "Play the reference scenario on a throwaway store and print its timeline.")

    @Flag(help: "Put the other spot pool in stockout, so replacements fall back to on-demand.") var stockout = false
    @Flag(help: "Add a 4-node best-effort gang and a 6-replica standard service (base_on_demand 2) to the fleet.")
    var workloads = false

    func run() async throws {
        var options = Demo.Options()
        options.stockout = stockout
        options.workloads = workloads
        let passed = try await Demo.run(options) { line in print(line) }
        if !passed { throw ExitCode(1) }
    }
}

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run on a GPU node: post the cloud's notices to spotd, and hand checkpoint requests to the workload on loopback.")

    @Option(help: "spotd's URL (env SPOTD_URL).") var server: String?
    @Option(help: "An API token with the agent role (or operator, or admin) (env SPOTD_TOKEN).") var token: String?
    @Option(help: "HMAC secret for notices, as spotd's --webhook-secret (env SPOTD_WEBHOOK_SECRET).") var webhookSecret: String?
    @Option(help: "The cloud: aws, gcp, azure or auto (env SPOTD_AGENT_CLOUD; default auto).") var cloud: String?
    @Option(help: "This node's id in spotd (default: the instance id, from the metadata service).") var nodeId: String?
    @Option(help: "The metadata service (default http://169.254.169.254, where AWS, GCP and Azure all answer).")
    var metadataUrl: String?
    @Option(help: "Loopback address for the workload's hand-off (default 127.0.0.1:8787).") var listen: String?
    @Option(help: "Seconds between metadata polls (default 1).") var pollSeconds: Double?

    func run() async throws {
        guard let serverText = server ?? env("SPOTD_URL"), let serverURL = URL(string: serverText), serverURL.host != nil else {
            fail("--server (SPOTD_URL) must be spotd's URL, e.g. http://spotd.internal:8080")
        }
        guard let metadata = URL(string: metadataUrl ?? "http://169.254.169.254"), metadata.host != nil else {
            fail("--metadata-url must be a URL")
        }
        var settings = AgentSettings(server: serverURL, metadataURL: metadata)
        settings.token = token ?? env("SPOTD_TOKEN")
        settings.webhookSecret = webhookSecret ?? env("SPOTD_WEBHOOK_SECRET")
        if let name = cloud ?? env("SPOTD_AGENT_CLOUD") {
            guard let value = AgentSettings.Cloud(rawValue: name) else {
                fail(
                    "--cloud \(name) is not supported here yet (supported: \(AgentSettings.Cloud.allCases.map(\.rawValue).joined(separator: ", ")))"
                )
            }
            settings.cloud = value
        }
        settings.nodeId = nodeId
        if let listen {
            let parts = listen.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]), (0...65535).contains(port) else { fail("--listen must be host:port") }
            settings.listenHost = String(parts[0])
            settings.listenPort = port
        }
        if let pollSeconds {
            guard pollSeconds.isFinite, pollSeconds >= 0.001, pollSeconds <= 60 else { fail("--poll-seconds must be 0.001 to 60") }
            settings.pollInterval = .milliseconds(Int64(pollSeconds * 1000))
        }
        let logger = makeLogger("spotd-agent")
        try await NodeAgent.runUntilStopped(settings: settings, logger: logger)
    }
}

/// Why the server could not listen, in words.
func listenFailure(_ error: any Error) -> String {
    if let error = error as? IOError {
        switch error.errnoCode {
        case EADDRINUSE: return "the address is already in use (another spotd, or another program, holds the port)"
        case EACCES: return "permission denied (ports below 1024 need privileges)"
        case EADDRNOTAVAIL: return "no network interface of this machine has that address"
        default: return String(describing: error)
        }
    }
    if let error = error as? SocketAddressError, case .unknown = error { return "the host name cannot be resolved" }
    return String(describing: error)
}
