import Foundation
import Testing

@testable import SpotCore

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A real `spotd serve` process on a real SQLite file, killed and restarted.
final class SpotdProcess {
    let port: Int
    let dbPath: String
    let arguments: [String]
    private(set) var process: Process?

    init(directory: URL, port: Int, extra: [String] = []) {
        self.port = port
        self.dbPath = directory.appendingPathComponent("spotd.sqlite").path
        self.arguments = ["serve", "--port", String(port), "--db", dbPath] + extra
    }

    static var binary: URL {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return exe.deletingLastPathComponent().appendingPathComponent("spotd")
    }

    func start() async throws {
        let process = Process()
        process.executableURL = Self.binary
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(["LOG_LEVEL": "warning"]) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let (status, _) = try? await request("GET", "/healthz"), status == 200 { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw CocoaError(.fileReadUnknown)
    }

    func kill(_ signal: Int32) {
        guard let process else { return }
        Foundation.kill(process.processIdentifier, signal)
        process.waitUntilExit()
        self.process = nil
    }

    @discardableResult
    func request(_ method: String, _ path: String, _ body: String? = nil) async throws -> (Int, JSONValue) {
        try await DemoClient(base: "http://127.0.0.1:\(port)").call(method, path, body)
    }

    /// Polls until `check` holds, or fails after `seconds`.
    func eventually(_ seconds: Double = 20, _ check: () async throws -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if (try? await check()) == true { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }
}

func freePort() -> Int { Int.random(in: 20_000..<60_000) }

@Suite("Crash safety with a real process", .serialized)
struct ProcessTests {
    func tempDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-proc-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test func dataSurvivesSigtermAndSigkill() async throws {
        let directory = try tempDirectory()
        let server = SpotdProcess(directory: directory, port: freePort(), extra: ["--no-auto-place"])
        try await server.start()
        #expect(try await server.request("POST", "/v1/pools", Seed.pool("od", "on_demand")).0 == 201)
        server.kill(SIGTERM)
        try await server.start()
        #expect(try await server.request("GET", "/v1/pools/od").0 == 200)
        #expect(try await server.request("POST", "/v1/jobs", Seed.job("j1", tier: "premium")).0 == 201)
        server.kill(SIGKILL)
        try await server.start()
        #expect(try await server.request("GET", "/v1/jobs/j1").1["state"] == .string("queued"))
        server.kill(SIGTERM)
    }

    /// Kill the process at random moments of a mass reclaim; after the last restart every workflow
    /// finishes exactly once: one replacement per lost node, one requeue per job per reclaim.
    @Test func sigkillMidDrainFinishesExactlyOnce() async throws {
        let directory = try tempDirectory()
        let server = SpotdProcess(
            directory: directory, port: freePort(), extra: ["--sim-boot-seconds", "1", "--drain-margin-seconds", "1"])
        try await server.start()
        try await server.request("POST", "/v1/pools", Seed.pool("spot-a", "spot", zone: "a"))
        try await server.request("POST", "/v1/pools", Seed.pool("spot-b", "spot", zone: "b"))
        for index in 0..<6 { try await server.request("POST", "/v1/nodes", Seed.node("n\(index)", pool: "spot-a")) }
        for index in 0..<12 {
            try await server.request(
                "POST", "/v1/jobs", Seed.job("j\(index)", tier: "best_effort", gpus: 4, checkpointable: index % 3 == 0))
        }
        #expect(try await server.eventually { try await server.request("GET", "/v1/jobs?state=queued").1["items"]?.array.isEmpty == true })

        for index in 0..<6 {
            let (status, _) = try await server.request(
                "POST", "/v1/interruptions", #"{"node_id":"n\#(index)","kind":"termination","notice_seconds":4,"event_id":"e\#(index)"}"#)
            #expect(status == 202)
            if index == 2 {
                server.kill(SIGKILL)
                try await server.start()
            }
        }
        try await Task.sleep(for: .milliseconds(Int.random(in: 0...300)))
        server.kill(SIGKILL)
        try await server.start()
        try await Task.sleep(for: .milliseconds(Int.random(in: 100...1500)))
        server.kill(SIGKILL)
        try await server.start()

        let done = try await server.eventually(30) {
            let items = try await server.request("GET", "/v1/interruptions?state=completed").1["items"]?.array ?? []
            return items.count == 6
        }
        #expect(done)
        let requests = try await server.request("GET", "/v1/provisioning-requests").1["items"]?.array ?? []
        #expect(requests.count == 6)
        #expect(Set(requests.compactMap { $0["replaces_node_id"]?.string }).count == 6)
        let requeues = try await server.request("GET", "/v1/events?type=job.requeued&limit=1000").1["items"]?.array ?? []
        #expect(requeues.count == 12)
        #expect(Set(requeues.compactMap { $0["subject"]?.string }).count == 12)
        for index in 0..<12 {
            let job = try await server.request("GET", "/v1/jobs/j\(index)").1
            #expect(job["requeue_count"] == .int(1), "j\(index): \(job)")
        }
        // Every job runs again on the replacements.
        #expect(try await server.eventually { try await server.request("GET", "/v1/jobs?state=running").1["items"]?.array.count == 12 })
        server.kill(SIGTERM)
    }
}
