import Foundation

/// Every setting of `spotd serve`: from flags, then `SPOTD_*` variables, then defaults.
public struct SpotConfig: Sendable {
    public enum ProviderKind: String, Sendable, CaseIterable {
        case simulated, webhook
    }

    public var host = "127.0.0.1"
    public var port = 8080
    public var dbPath = "./spotd.sqlite"
    public var adminToken: String?
    public var webhookSecret: String?
    public var autoPlace = true
    public var drainMarginSeconds: Int64 = 10
    public var provider: ProviderKind = .simulated
    public var simBootSeconds: Double = 5
    public var provisionWebhookURL: URL?
    public var provisionTimeoutSeconds: Double = 300
    public var scaleDownIdleSeconds: Int64 = 600
    public var admissionLimitSeconds: Int64 = 3600
    /// How often the worker looks for due work when nothing wakes it.
    public var workerIntervalSeconds: Double = 0.2
    public var migrationsDirectory: String?
    /// A connection that sends nothing for this long is closed (slow or stuck clients).
    public var idleTimeoutSeconds: Int64 = 60

    public init() {}

    /// Whether `host` is a loopback address.
    public var isLoopback: Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// Checks the settings together; returns the reason they cannot run.
    public func validate() -> String? {
        if adminToken == nil && !isLoopback {
            return "refusing to listen on \(host) without authentication: set SPOTD_ADMIN_TOKEN (or --admin-token), or listen on 127.0.0.1"
        }
        if let token = adminToken, token.utf8.count < 16 {
            return "the admin token must be at least 16 characters"
        }
        if provider == .webhook && provisionWebhookURL == nil {
            return "--provider webhook needs --provision-webhook-url (or SPOTD_PROVISION_WEBHOOK_URL)"
        }
        if !(1...65535).contains(port) { return "port must be between 1 and 65535" }
        if drainMarginSeconds < 0 || drainMarginSeconds > 3600 { return "drain margin must be between 0 and 3600 seconds" }
        if simBootSeconds < 0 || simBootSeconds > 3600 { return "sim boot time must be between 0 and 3600 seconds" }
        return nil
    }

    /// Reads `SPOTD_*` variables into the settings a flag did not give.
    public static func environmentValue(_ name: String, _ environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        guard let value = environment[name], !value.isEmpty else { return nil }
        return value
    }
}
