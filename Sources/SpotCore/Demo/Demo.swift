import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `spotd demo`: the reference scenario on a throwaway store, with the real server, worker and simulated provider.
/// 20 spot nodes run best-effort jobs, premium jobs run on on-demand nodes, and the cloud reclaims 5 spot nodes at once;
/// with `workloads`, a 4-node gang and a 6-replica inference service share the fleet, and the reclaim hits both.
public enum Demo {
    public struct Options: Sendable {
        public var stockout = false
        /// Add a 4-node best-effort gang and a 6-replica standard service to the same fleet (`--workloads`).
        public var workloads = false
        public var bootSeconds = 3.0
        /// How long a replica that stops serving drains (short, so that the demo ends within a minute).
        public var replicaDrainSeconds: Int64 = 3
        /// Keep the store in this folder (for a test to check the outcome itself); by default a throwaway folder.
        public var directory: URL?
        public init() {}
    }

    public static func run(_ options: Options, print write: @escaping @Sendable (String) -> Void) async throws -> Bool {
        let directory =
            options.directory ?? FileManager.default.temporaryDirectory.appendingPathComponent("spotd-demo-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { if options.directory == nil { try? FileManager.default.removeItem(at: directory) } }
        var config = SpotConfig()
        config.dbPath = directory.appendingPathComponent("demo.sqlite").path
        // Port 0: the kernel picks a free one, and the server says which once it listens.
        config.port = 0
        config.simBootSeconds = options.bootSeconds
        config.replicaDrainSeconds = options.replicaDrainSeconds
        config.workerIntervalSeconds = 0.1
        var logger = Logger(label: "spotd-demo")
        logger.logLevel = .error
        let runtime = try SpotRuntime(config: config, logger: logger)
        let (ports, listening) = AsyncStream<Int?>.makeStream()
        let app = buildApplication(runtime, logger: logger) { port in
            listening.yield(port)
            listening.finish()
        }
        let group = ServiceGroup(services: [app], gracefulShutdownSignals: [], logger: logger)
        let server = Task { try await group.run() }
        // However the scenario ends, the server and its worker stop before the store is closed (and, for a test,
        // read): nothing writes after this returns.
        let outcome: Result<Bool, any Error>
        do {
            var iterator = ports.makeAsyncIterator()
            guard let port = await iterator.next() ?? nil else { throw DemoError.serverDidNotStart }
            let client = DemoClient(base: "http://127.0.0.1:\(port)")
            try await client.waitUntilUp()
            outcome = .success(try await Scenario(client: client, write: write, options: options).play())
        } catch {
            outcome = .failure(error)
        }
        await group.triggerGracefulShutdown()
        _ = try? await server.value
        try? runtime.close()
        return try outcome.get()
    }
}

/// A tiny JSON-over-HTTP client for the demo.
struct DemoClient: Sendable {
    let base: String
    /// Sent as a bearer token when set.
    var token: String? = nil

    @discardableResult
    func call(_ method: String, _ path: String, _ body: String? = nil) async throws -> (Int, JSONValue) {
        var request = URLRequest(url: URL(string: base + path)!, timeoutInterval: 30)
        request.httpMethod = method
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        if let body {
            request.httpBody = Data(body.utf8)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let (data, response) = try await URLSession.shared.data(for: request)
        let json = (try? JSONDecoder().decode(JSONValue.self, from: data)) ?? .null
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, json)
    }

    func items(_ path: String) async throws -> [JSONValue] {
        guard case .object(let page) = try await call("GET", path).1, case .array(let items)? = page["items"] else { return [] }
        return items
    }

    func waitUntilUp() async throws {
        for _ in 0..<200 {
            if let (status, _) = try? await call("GET", "/healthz"), status == 200 { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw DemoError.serverDidNotStart
    }
}

enum DemoError: Error { case serverDidNotStart, setupFailed(String) }

extension JSONValue {
    /// Field access for the demo's readers.
    subscript(demo key: String) -> JSONValue? {
        if case .object(let fields) = self { return fields[key] }
        return nil
    }

    var demoString: String? { if case .string(let text) = self { return text } else { return nil } }
    var demoInt: Int64? { if case .int(let number) = self { return number } else { return nil } }
    var demoArray: [JSONValue]? { if case .array(let items) = self { return items } else { return nil } }
}
