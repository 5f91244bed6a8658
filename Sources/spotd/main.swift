import ArgumentParser
import Foundation
import Hummingbird
import Logging
import SpotCore

/// `spotd`: the control plane for spot GPU reclaims.
@main
struct Spotd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spotd",
        abstract: "Keeps a GPU platform safe when clouds reclaim spot nodes.",
        subcommands: [Serve.self, Migrate.self, TokenCommand.self, DemoCommand.self],
        defaultSubcommand: Serve.self)
}

/// Settings shared by every command that opens the store.
struct StoreOptions: ParsableArguments {
    @Option(help: "SQLite file (env SPOTD_DB; default ./spotd.sqlite).")
    var db: String?

    @Option(help: "Folder of NNNN_name.sql migrations (env SPOTD_MIGRATIONS; default ./migrations or the package's).")
    var migrations: String?

    func apply(to config: inout SpotConfig) {
        config.dbPath = db ?? env("SPOTD_DB") ?? config.dbPath
        config.migrationsDirectory = migrations ?? env("SPOTD_MIGRATIONS")
    }
}

func env(_ name: String) -> String? { SpotConfig.environmentValue(name) }

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("spotd: \(message)\n".utf8))
    Foundation.exit(2)
}

func parsed<T: LosslessStringConvertible>(_ name: String, _ value: String?) -> T? {
    guard let value else { return nil }
    guard let parsed = T(value) else { fail("\(name)=\(value) is not a valid value") }
    return parsed
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
    @Option(help: "Provisioning provider: simulated or webhook (env SPOTD_PROVIDER; default simulated).") var provider: String?
    @Option(help: "Seconds a simulated node takes to boot (env SPOTD_SIM_BOOT_SECONDS; default 5).") var simBootSeconds: Double?
    @Option(help: "URL the webhook provider POSTs requests to (env SPOTD_PROVISION_WEBHOOK_URL).") var provisionWebhookUrl: String?
    @Option(help: "Seconds an idle on-demand fallback node lives once spot is back (env SPOTD_SCALE_DOWN_IDLE_SECONDS; default 600).")
    var scaleDownIdleSeconds: Int64?

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
        config.scaleDownIdleSeconds =
            scaleDownIdleSeconds ?? parsed("SPOTD_SCALE_DOWN_IDLE_SECONDS", env("SPOTD_SCALE_DOWN_IDLE_SECONDS")) ?? 600
        return config
    }

    func run() async throws {
        let config = config()
        if let problem = config.validate() { fail(problem) }
        var logger = Logger(label: "spotd")
        logger.logLevel = env("LOG_LEVEL").flatMap(Logger.Level.init(rawValue:)) ?? .info
        if config.adminToken == nil {
            logger.warning(
                "authentication is off: no admin token is configured, so spotd listens on loopback only",
                metadata: ["host": "\(config.host)"])
        }
        let runtime = try SpotRuntime(config: config, logger: logger)
        logger.info(
            "spotd starting",
            metadata: [
                "address": "\(config.host):\(config.port)", "db": "\(config.dbPath)", "provider": "\(config.provider.rawValue)",
                "auto_place": "\(config.autoPlace)", "signed_webhooks": "\(config.webhookSecret != nil)",
            ])
        let app = buildApplication(runtime, logger: logger)
        try await app.runService()
        try runtime.store.close()
        logger.info("spotd stopped; store closed")
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply the migrations to the store and exit.")
    @OptionGroup var store: StoreOptions

    func run() async throws {
        var config = SpotConfig()
        store.apply(to: &config)
        let runtime = try SpotRuntime(config: config)
        try runtime.store.close()
        print("migrations applied to \(config.dbPath)")
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Manage API tokens offline, on the store.", subcommands: [Create.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a token; its secret is printed once.")
        @OptionGroup var store: StoreOptions
        @Option(help: "Role: admin, operator, scheduler, notifier or viewer.") var role: String
        @Option(help: "A name for the token (shown as the actor in events).") var name: String

        func run() async throws {
            guard let role = Role(rawValue: role) else { fail("role must be one of admin, operator, scheduler, notifier, viewer") }
            var config = SpotConfig()
            store.apply(to: &config)
            let runtime = try SpotRuntime(config: config)
            let created = try await runtime.store.createTokenForCLI(name: name, role: role)
            try runtime.store.close()
            print("id:    \(created.id)\nname:  \(name)\nrole:  \(role.rawValue)\ntoken: \(created.secret)")
        }
    }
}

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo", abstract: "Play the reference scenario on a throwaway store and print its timeline.")

    @Flag(help: "Put the other spot pool in stockout, so replacements fall back to on-demand.") var stockout = false

    func run() async throws {
        var options = Demo.Options()
        options.stockout = stockout
        let passed = try await Demo.run(options) { line in print(line) }
        if !passed { throw ExitCode(1) }
    }
}
