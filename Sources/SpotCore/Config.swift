import Foundation

/// Every setting of `spotd serve`: from flags, then `SPOTD_*` variables, then defaults.
public struct SpotConfig: Sendable {
    public enum ProviderKind: String, Sendable, CaseIterable {
        case simulated, webhook
    }

    public var host = "127.0.0.1"
    public var port = 8080
    /// The store: a SQLite file, or a `postgres://` URL (several replicas may share one PostgreSQL database).
    public var dbPath = "./spotd.sqlite"
    /// PostgreSQL: connections each replica keeps at most.
    public var dbPoolSize = 8
    public var adminToken: String?
    public var webhookSecret: String?
    public var autoPlace = true
    public var drainMarginSeconds: Int64 = 10
    /// How long a service replica that stops serving drains its in-flight requests before it goes.
    public var replicaDrainSeconds: Int64 = 30
    public var provider: ProviderKind = .simulated
    public var simBootSeconds: Double = 5
    public var provisionWebhookURL: URL?
    /// How long one call to the provisioner may take before it counts as failed (and is retried).
    public var provisionTimeoutSeconds: Double = 30
    /// Calls to the provisioner per request in all, with backoff between them, before the request fails.
    public var provisionRetries = 3
    /// With no node registered this long after the provisioner took a request, the request fails (and the fallback
    /// starts).
    public var provisionBootTimeoutSeconds: Double = 300
    /// The AWS queue mode: the SQS queue EventBridge puts EC2 interruption events on, its region (by default from the
    /// URL, else `AWS_REGION`), and the credentials to read it (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`).
    public var sqsQueueURL: URL?
    public var awsRegion: String?
    public var awsCredentials: AWSCredentials?
    public var scaleDownIdleSeconds: Int64 = 600
    public var admissionLimitSeconds: Int64 = 3600
    /// Finished records (jobs, interruptions, provisioning requests, terminated nodes) and events older than this go.
    public var retentionDays: Int64 = 30
    /// Most event streams open at once; past it a new one gets 503.
    public var maxEventStreams = 256
    /// A request body must arrive whole within this time.
    public var bodyTimeoutSeconds: Int64 = 30
    /// Most request-body bytes held in memory at once, over all requests.
    public var maxBufferedBodyMiB = 64
    /// Most connections open at once; past it a new connection is closed (default: 10,000, or below the file limit).
    public var maxConnections = ConnectionLimiter.defaultLimit()
    /// How often the worker looks for due work when nothing wakes it.
    public var workerIntervalSeconds: Double = 0.2
    /// A folder of migrations to use instead of the built-in ones.
    public var migrationsDirectory: String?
    /// A connection that sends nothing for this long is closed (slow or stuck clients).
    public var idleTimeoutSeconds: Int64 = 60
    /// An event stream whose client takes no write for this long is closed (it does not read).
    public var streamStallSeconds: Int64 = 30

    public init() {}

    /// Whether `host` is a loopback address: `localhost`, `::1`, or an IPv4 literal in 127.0.0.0/8 (a name that
    /// merely starts with "127." is not).
    public var isLoopback: Bool {
        if host == "localhost" || host == "::1" { return true }
        var address = in_addr()
        return inet_pton(AF_INET, host, &address) == 1 && UInt32(bigEndian: address.s_addr) >> 24 == 127
    }

    /// The store as logs and messages name it: a PostgreSQL URL without its password.
    public var dbDescription: String {
        guard PostgresTarget.isURL(dbPath) else { return dbPath }
        guard let target = try? PostgresTarget(url: dbPath) else { return "(a --db URL that is not usable)" }
        return target.description
    }

    /// Checks every setting, each against its range, before anything uses one: a value from a flag or a variable
    /// is never used in arithmetic unchecked. Returns what is wrong, naming the flag.
    public func validate() -> StartupError? {
        func outside<T: Comparable>(_ value: T, _ range: ClosedRange<T>, _ flag: String, _ unit: String = "") -> StartupError? {
            range.contains(value)
                ? nil
                : .setting(name: flag, detail: "must be between \(range.lowerBound) and \(range.upperBound)\(unit) (got \(value))")
        }
        func finite(_ value: Double, _ range: ClosedRange<Double>, _ flag: String) -> StartupError? {
            value.isFinite
                ? outside(value, range, flag, " seconds") : .setting(name: flag, detail: "must be a finite number (got \(value))")
        }
        if host.isEmpty { return .setting(name: "--host (SPOTD_HOST)", detail: "must not be empty") }
        if PostgresTarget.isURL(dbPath) && !PostgresTarget.isPostgres(dbPath) {
            return .databaseURL("only postgres:// (or postgresql://) URLs are taken; anything else is a SQLite file path")
        }
        if PostgresTarget.isPostgres(dbPath) {
            do {
                _ = try PostgresTarget(url: dbPath)
            } catch {
                return error
            }
        }
        if let problem = outside(dbPoolSize, 1...64, "--db-pool-size (SPOTD_DB_POOL_SIZE)") { return problem }
        if adminToken == nil && !isLoopback {
            return .setting(
                name: "--host (SPOTD_HOST)",
                detail: "\(host) is not loopback, and auth is off: set --admin-token (SPOTD_ADMIN_TOKEN), or listen on 127.0.0.1")
        }
        if let token = adminToken {
            // A token read from a file often ends in a newline; clients send it without one and would never match.
            if token.trimmingCharacters(in: .whitespacesAndNewlines) != token {
                return .setting(name: "--admin-token (SPOTD_ADMIN_TOKEN)", detail: "must not begin or end with spaces or a newline")
            }
            if token.utf8.count < 16 {
                return .setting(name: "--admin-token (SPOTD_ADMIN_TOKEN)", detail: "must be at least 16 characters")
            }
        }
        if let secret = webhookSecret {
            if secret.isEmpty { return .setting(name: "--webhook-secret (SPOTD_WEBHOOK_SECRET)", detail: "must not be empty") }
            if secret.trimmingCharacters(in: .whitespacesAndNewlines) != secret {
                return .setting(name: "--webhook-secret (SPOTD_WEBHOOK_SECRET)", detail: "must not begin or end with spaces or a newline")
            }
        }
        if let url = sqsQueueURL {
            guard url.scheme == "https" || url.scheme == "http", url.host != nil else {
                return .setting(name: "--aws-sqs-queue-url (SPOTD_AWS_SQS_QUEUE_URL)", detail: "must be an http(s) URL, got \(url)")
            }
            if awsCredentials == nil {
                return .setting(
                    name: "--aws-sqs-queue-url (SPOTD_AWS_SQS_QUEUE_URL)", detail: "needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            }
            if (awsRegion ?? SQSQueuePoller.Settings.region(of: url)) == nil {
                return .setting(name: "--aws-region (AWS_REGION)", detail: "is needed: the queue URL does not name a region")
            }
        }
        if provider == .webhook && provisionWebhookURL == nil {
            return .setting(name: "--provider webhook", detail: "needs --provision-webhook-url (or SPOTD_PROVISION_WEBHOOK_URL)")
        }
        let checks: [StartupError?] = [
            outside(port, 0...65535, "--port (SPOTD_PORT)"),
            outside(drainMarginSeconds, 0...3600, "--drain-margin-seconds (SPOTD_DRAIN_MARGIN_SECONDS)"),
            outside(replicaDrainSeconds, 0...3600, "--replica-drain-seconds (SPOTD_REPLICA_DRAIN_SECONDS)"),
            finite(simBootSeconds, 0...3600, "--sim-boot-seconds (SPOTD_SIM_BOOT_SECONDS)"),
            finite(provisionTimeoutSeconds, 0.1...3600, "--provision-timeout-seconds (SPOTD_PROVISION_TIMEOUT_SECONDS)"),
            outside(provisionRetries, 1...100, "--provision-retries (SPOTD_PROVISION_RETRIES)"),
            finite(provisionBootTimeoutSeconds, 1...86_400, "--provision-boot-timeout-seconds (SPOTD_PROVISION_BOOT_TIMEOUT_SECONDS)"),
            outside(scaleDownIdleSeconds, 0...2_592_000, "--scale-down-idle-seconds (SPOTD_SCALE_DOWN_IDLE_SECONDS)"),
            outside(admissionLimitSeconds, 0...31_536_000, "admission limit"),
            outside(retentionDays, 1...3650, "--retention-days (SPOTD_RETENTION_DAYS)"),
            outside(maxEventStreams, 0...100_000, "--max-event-streams (SPOTD_MAX_EVENT_STREAMS)"),
            outside(bodyTimeoutSeconds, 1...3600, "--body-timeout-seconds (SPOTD_BODY_TIMEOUT_SECONDS)"),
            outside(maxBufferedBodyMiB, 1...65_536, "--max-buffered-body-mib (SPOTD_MAX_BUFFERED_BODY_MIB)"),
            outside(maxConnections, 1...1_000_000, "--max-connections (SPOTD_MAX_CONNECTIONS)"),
            finite(workerIntervalSeconds, 0.01...60, "worker interval"),
            outside(idleTimeoutSeconds, 1...86_400, "idle timeout"),
            outside(streamStallSeconds, 1...3600, "stream stall timeout"),
        ]
        return checks.compactMap { $0 }.first
    }

    /// Reads `SPOTD_*` variables into the settings a flag did not give.
    public static func environmentValue(_ name: String, _ environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        guard let value = environment[name], !value.isEmpty else { return nil }
        return value
    }
}

// What logs may print of the settings: ServiceLifecycle logs every service it starts with `\(service)`, which
// would reflect every field, the admin token, the webhook secret and the database password among them.
extension SpotConfig: CustomStringConvertible, CustomDebugStringConvertible {
    public var description: String {
        "SpotConfig(host: \(host), port: \(port), db: \(dbDescription), provider: \(provider.rawValue), auth: \(adminToken == nil ? "off" : "on"))"
    }
    public var debugDescription: String { description }
}

extension WorkflowWorker: CustomStringConvertible, CustomDebugStringConvertible {
    public var description: String { "WorkflowWorker(owner: \(owner))" }
    public var debugDescription: String { description }
}

extension SQSQueuePoller: CustomStringConvertible, CustomDebugStringConvertible {
    public var description: String { "SQSQueuePoller" }
    public var debugDescription: String { description }
}

extension AWSCredentials: CustomStringConvertible, CustomDebugStringConvertible {
    public var description: String { "AWSCredentials(access key id: \(accessKeyId), secret: redacted)" }
    public var debugDescription: String { description }
}
