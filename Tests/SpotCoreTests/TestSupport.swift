import Foundation
import GRDB
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Synchronization
import Testing

@testable import SpotCore

/// The store the tests run on: SQLite files by default; with `SPOTD_TEST_POSTGRES` set (scripts/with-postgres.sh
/// sets it), a fresh PostgreSQL database for every test and every spotd process, on that server.
enum TestStore {
    static let postgresServer: String? = ProcessInfo.processInfo.environment["SPOTD_TEST_POSTGRES"].flatMap { $0.isEmpty ? nil : $0 }
    static var isPostgres: Bool { postgresServer != nil }
    static var isSQLite: Bool { postgresServer == nil }

    /// PostgreSQL databases made so far, by the folder they stand for: processes restarted on one folder, or
    /// replicas sharing one, share its database as they would share its SQLite file.
    private static let databases = Mutex<[String: String]>([:])

    /// Where a test's store lives: a SQLite file in `directory`, or that folder's PostgreSQL database.
    static func location(in directory: URL) -> String {
        guard let server = postgresServer else { return directory.appendingPathComponent("spotd.sqlite").path }
        if let made = databases.withLock({ $0[directory.path] }) { return made }
        let name = "spotd_test_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        do {
            let url = try PostgresScratch.createDatabase(serverURL: server, name: name)
            databases.withLock { $0[directory.path] = url }
            return url
        } catch {
            fatalError("SPOTD_TEST_POSTGRES is set, but a test database cannot be created there: \(String(reflecting: error))")
        }
    }
}

/// A throwaway store in a temporary folder (or PostgreSQL database), a manual clock, and the app built on them.
struct TestEnv {
    let directory: URL
    let clock: ManualClock
    let runtime: SpotRuntime

    init(_ configure: (inout SpotConfig) -> Void = { _ in }) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        clock = ManualClock()
        var config = SpotConfig()
        config.dbPath = TestStore.location(in: directory)
        config.dbPoolSize = 2
        config.port = 0
        config.simBootSeconds = 5
        configure(&config)
        var logger = Logger(label: "spotd-test")
        logger.logLevel = .warning
        runtime = try SpotRuntime(config: config, clock: clock, logger: logger)
        worker = runtime.worker(logger: Logger(label: "spotd-test-worker"))
    }

    var store: SpotStore { runtime.store }

    /// The app without its background worker: tests step the worker themselves.
    func app() -> some ApplicationProtocol {
        var logger = Logger(label: "spotd-test")
        logger.logLevel = .warning
        return buildApplication(runtime, logger: logger, withWorker: false)
    }

    /// The worker the tests step by hand (one, so that it keeps the lease it takes).
    let worker: WorkflowWorker

    /// The worker lease, taken or renewed now by the test worker.
    func lease() async throws -> Lease {
        try #require(try await worker.takeLease(), "the test worker could not take the lease")
    }

    /// Runs one worker pass at the clock's current time, under the lease (taken or renewed first).
    func step() async throws {
        var state = WorkflowWorker.PassState()
        try await worker.runOnce(&state, lease: try await lease())
    }

    /// Advances the clock and runs a pass.
    func advance(_ seconds: Double) async throws {
        clock.advance(seconds: seconds)
        try await step()
    }

    /// Counts rows of a table, to prove a refused request changed nothing.
    func count(_ table: String) throws -> Int {
        try store.blockingRead { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table)") ?? 0 }
    }

    /// Every row of every table a workflow could change, as text: equal digests mean nothing changed at all, not
    /// only the row counts (an update that appends no event shows here too).
    func digest() throws -> String {
        try store.blockingRead { db in
            var text = ""
            for table in [
                "pools", "nodes", "jobs", "job_nodes", "interruptions", "interruption_steps", "provisioning_requests", "events",
                "tokens", "notice_replays", "policies", "services", "service_replicas",
            ] {
                // Every column, every row, in a stable order (by key where a table has no seq).
                let order =
                    table == "notice_replays"
                    ? "signature"
                    : table == "policies" ? "tier" : table == "job_nodes" ? "job_id, member" : table == "events" ? "id" : "seq"
                for row in try SpotCore.Row.fetchAll(db, sql: "SELECT * FROM \(table) ORDER BY \(order)") {
                    text += "\(table) \(row)\n"
                }
            }
            return text
        }
    }

    /// Row counts of every table that a request could change.
    func snapshot() throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for table in [
            "pools", "nodes", "jobs", "job_nodes", "interruptions", "interruption_steps", "provisioning_requests", "events", "tokens",
            "notice_replays", "services", "service_replicas",
        ] {
            counts[table] = try count(table)
        }
        return counts
    }
}

/// A response read as JSON.
struct Reply {
    var status: HTTPResponse.Status
    var headers: HTTPFields
    var json: JSONValue
    var text: String

    subscript(_ key: String) -> JSONValue? { json[key] }
}

extension TestClientProtocol {
    @discardableResult
    func call(_ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil, headers: HTTPFields = [:]) async throws -> Reply {
        var fields = headers
        if body != nil && fields[.contentType] == nil { fields[.contentType] = "application/json" }
        return try await execute(uri: uri, method: method, headers: fields, body: body.map { ByteBuffer(string: $0) }) { response in
            let text = String(buffer: response.body)
            let json = (try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))) ?? .null
            return Reply(status: response.status, headers: response.headers, json: json, text: text)
        }
    }

    /// POSTs and expects a given status, returning the reply.
    @discardableResult
    func expect(
        _ status: HTTPResponse.Status, _ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil, headers: HTTPFields = [:],
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> Reply {
        let reply = try await call(method, uri, body, headers: headers)
        #expect(reply.status == status, "\(method) \(uri) answered \(reply.status.code): \(reply.text)", sourceLocation: sourceLocation)
        return reply
    }

    /// Expects a problem+json refusal and returns it.
    @discardableResult
    func expectProblem(
        _ status: HTTPResponse.Status, _ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil, headers: HTTPFields = [:],
        field: String? = nil, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> Reply {
        let reply = try await expect(status, method, uri, body, headers: headers, sourceLocation: sourceLocation)
        #expect(reply.headers[.contentType] == "application/problem+json", sourceLocation: sourceLocation)
        #expect(reply["status"] == .int(Int64(status.code)), sourceLocation: sourceLocation)
        #expect(reply["detail"]?.string?.isEmpty == false, sourceLocation: sourceLocation)
        if let field { #expect(reply["field"] == .string(field), "problem: \(reply.text)", sourceLocation: sourceLocation) }
        return reply
    }
}

extension JSONValue {
    subscript(_ key: String) -> JSONValue? {
        if case .object(let fields) = self { return fields[key] }
        return nil
    }

    subscript(_ index: Int) -> JSONValue? {
        if case .array(let items) = self, items.indices.contains(index) { return items[index] }
        return nil
    }

    var string: String? { if case .string(let text) = self { return text } else { return nil } }
    var int: Int64? { if case .int(let number) = self { return number } else { return nil } }
    /// Any JSON number (the writer gives whole doubles as integers).
    var number: Double? {
        switch self {
        case .int(let number): Double(number)
        case .double(let number): number
        default: nil
        }
    }
    var bool: Bool? { if case .bool(let flag) = self { return flag } else { return nil } }
    var array: [JSONValue] { if case .array(let items) = self { return items } else { return [] } }
}

/// Seeds the common fixture: pools and nodes through the API.
enum Seed {
    static func pool(
        _ name: String, _ type: String, gpu: String = "H100", gpus: Int = 8, zone: String = "us-east-1a",
        instance: String = "p5.48xlarge", price: Double = 30, max: Int = 1000
    ) -> String {
        """
        {"name":"\(name)","capacity_type":"\(type)","gpu_type":"\(gpu)","gpus_per_node":\(gpus),"zone":"\(zone)",\
        "instance_type":"\(instance)","hourly_price":\(price),"max_nodes":\(max)}
        """
    }

    static func node(_ id: String, pool: String) -> String { #"{"id":"\#(id)","pool":"\#(pool)"}"# }

    static func job(_ id: String, tier: String, gpus: Int = 1, checkpointable: Bool = false, extra: String = "") -> String {
        #"{"id":"\#(id)","tier":"\#(tier)","gpus":\#(gpus),"checkpointable":\#(checkpointable)\#(extra)}"#
    }

    /// Two spot pools in different zones and one on-demand pool, all H100 x8.
    static func standardPools(_ client: some TestClientProtocol) async throws {
        try await client.expect(.created, .post, "/v1/pools", pool("spot-a", "spot", zone: "us-east-1a", price: 30))
        try await client.expect(.created, .post, "/v1/pools", pool("spot-b", "spot", zone: "us-east-1b", price: 32))
        try await client.expect(.created, .post, "/v1/pools", pool("od", "on_demand", zone: "us-east-1a", price: 98))
    }
}

/// Reads a fixture file shipped beside the tests.
func fixture(_ name: String) throws -> String {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").appendingPathComponent(name)
    return try String(contentsOf: url, encoding: .utf8)
}

/// Polls `check` every `every` until it holds (true) or `seconds` pass (false).
func pollUntil(
    _ seconds: Double = 5, every: Duration = .milliseconds(20), _ check: () async throws -> Bool
) async throws -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await check() { return true }
        try await Task.sleep(for: every)
    }
    return false
}
