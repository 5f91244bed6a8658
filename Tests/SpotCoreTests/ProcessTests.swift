import Foundation
import HTTPTypes
import Hummingbird
import Synchronization
import Testing

@testable import SpotCore

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A real `spotd serve` process on a real store (a SQLite file, or a PostgreSQL database), killed and restarted.
final class SpotdProcess {
    let port: Int
    let dbPath: String
    let arguments: [String]
    let binary: URL
    let workingDirectory: URL?
    /// The server's standard error, shown when it does not come up.
    let logPath: String
    /// Added to the environment the process starts with.
    let environment: [String: String]
    private(set) var process: Process?
    /// The bearer token `request` sends, for a server started with `--admin-token`.
    var token: String?

    init(
        directory: URL, port: Int, extra: [String] = [], binary: URL = SpotdProcess.binary, workingDirectory: URL? = nil,
        environment: [String: String] = [:], db: String? = nil
    ) {
        self.environment = environment
        self.port = port
        self.dbPath = db ?? TestStore.location(in: directory)
        self.arguments = ["serve", "--port", String(port), "--db", dbPath] + extra
        self.binary = binary
        self.workingDirectory = workingDirectory
        self.logPath = directory.appendingPathComponent("spotd-\(port).log").path
    }

    static var binary: URL {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return exe.deletingLastPathComponent().appendingPathComponent("spotd")
    }

    func start() async throws {
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(["LOG_LEVEL": "warning"]) { $1 }.merging(environment) { $1 }
        if let workingDirectory { process.currentDirectoryURL = workingDirectory }
        process.standardOutput = FileHandle.nullDevice
        FileManager.default.createFile(atPath: logPath, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let (status, _) = try? await request("GET", "/healthz"), status == 200 { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        Issue.record("spotd did not come up on port \(port): \(log)")
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
        try await DemoClient(base: "http://127.0.0.1:\(port)", token: token).call(method, path, body)
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

/// A port the kernel says is free now (bound to port 0, then released); printed, so that a failure can be replayed.
func freePort(_ purpose: String = #function) -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let port = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw -> Int in
            guard bind(fd, raw, length) == 0, getsockname(fd, raw, &length) == 0 else { return Int.random(in: 20_000..<60_000) }
            return Int(UInt16(bigEndian: pointer.pointee.sin_port))
        }
    }
    print("[\(purpose)] port \(port)")
    return port
}

/// The random choices of a test, from `SPOTD_TEST_SEED` when set (to replay a failure), else a fresh seed; the seed
/// is printed either way.
struct TestRandom: RandomNumberGenerator {
    private var generator: SeededRandom
    let seed: UInt64

    init(_ purpose: String = #function) {
        seed = ProcessInfo.processInfo.environment["SPOTD_TEST_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...UInt64.max)
        generator = SeededRandom(seed: seed)
        print("[\(purpose)] SPOTD_TEST_SEED=\(seed)")
    }

    mutating func next() -> UInt64 { generator.next() }
}

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
        var random = TestRandom()
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
        let firstKill = Int.random(in: 0...300, using: &random)
        let secondKill = Int.random(in: 100...1500, using: &random)
        print("[sigkillMidDrainFinishesExactlyOnce] kills after \(firstKill) ms and \(secondKill) ms (seed \(random.seed))")
        try await Task.sleep(for: .milliseconds(firstKill))
        server.kill(SIGKILL)
        try await server.start()
        try await Task.sleep(for: .milliseconds(secondKill))
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

    /// Kill the process at random moments while gangs are requeued: after the last restart each gang was requeued
    /// exactly once (one event, one requeue count), only the two lost nodes were replaced, and both gangs run again
    /// in the survivors' zone.
    @Test func sigkillDuringAGangRequeueRequeuesItOnce() async throws {
        var random = TestRandom()
        let directory = try tempDirectory()
        let server = SpotdProcess(
            directory: directory, port: freePort(), extra: ["--sim-boot-seconds", "1", "--drain-margin-seconds", "1"])
        try await server.start()
        try await server.request("POST", "/v1/pools", Seed.pool("spot-a", "spot", zone: "a"))
        try await server.request("POST", "/v1/pools", Seed.pool("spot-a2", "spot", zone: "a", instance: "p4d"))
        try await server.request("POST", "/v1/pools", Seed.pool("spot-b", "spot", zone: "b"))
        for index in 0..<4 { try await server.request("POST", "/v1/nodes", Seed.node("n\(index)", pool: "spot-a")) }
        // One gang requeued at once (not checkpointable), one after its checkpoint deadline.
        try await server.request("POST", "/v1/jobs", Seed.job("g1", tier: "best_effort", gpus: 4, extra: #","nodes":4"#))
        try await server.request(
            "POST", "/v1/jobs", Seed.job("g2", tier: "best_effort", gpus: 4, checkpointable: true, extra: #","nodes":4"#))
        #expect(try await server.eventually { try await server.request("GET", "/v1/jobs?state=running").1["items"]?.array.count == 2 })

        try await server.request(
            "POST", "/v1/interruptions", #"{"node_id":"n1","kind":"termination","notice_seconds":4,"event_id":"e1"}"#)
        let firstKill = Int.random(in: 0...300, using: &random)
        let secondKill = Int.random(in: 100...2500, using: &random)
        print("[sigkillDuringAGangRequeueRequeuesItOnce] kills after \(firstKill) ms and \(secondKill) ms (seed \(random.seed))")
        try await Task.sleep(for: .milliseconds(firstKill))
        server.kill(SIGKILL)
        try await server.start()
        try await server.request(
            "POST", "/v1/interruptions", #"{"node_id":"n2","kind":"termination","notice_seconds":3,"event_id":"e2"}"#)
        try await Task.sleep(for: .milliseconds(secondKill))
        server.kill(SIGKILL)
        try await server.start()

        let done = try await server.eventually(30) {
            try await server.request("GET", "/v1/interruptions?state=completed").1["items"]?.array.count == 2
        }
        #expect(done)
        for gang in ["g1", "g2"] {
            let job = try await server.request("GET", "/v1/jobs/\(gang)").1
            #expect(job["requeue_count"] == .int(1), "\(gang): \(job)")
        }
        let requeues = try await server.request("GET", "/v1/events?type=job.requeued&limit=1000").1["items"]?.array ?? []
        #expect(requeues.compactMap { $0["subject"]?.string }.sorted() == ["jobs/g1", "jobs/g2"])
        let requests = try await server.request("GET", "/v1/provisioning-requests").1["items"]?.array ?? []
        #expect(Set(requests.compactMap { $0["replaces_node_id"]?.string }) == ["n1", "n2"])
        #expect(requests.count == 2)
        // The replacements join the survivors' zone and both gangs run there again, whole.
        #expect(try await server.eventually { try await server.request("GET", "/v1/jobs?state=running").1["items"]?.array.count == 2 })
        for gang in ["g1", "g2"] {
            let job = try await server.request("GET", "/v1/jobs/\(gang)").1
            #expect(job["node_ids"]?.array.count == 4, "\(gang): \(job)")
        }
        server.kill(SIGTERM)
    }

    /// Kill the process at random moments while two replica hosts are reclaimed: after the last restart there is
    /// exactly one surge replica per doomed replica, and the service is whole again once the surges report ready.
    /// SIGKILL while a release is asked and not yet acknowledged (the provisioner holds the call): after the restart
    /// the release is asked again with the same Idempotency-Key, and the node ends `terminated` once.
    @Test func sigkillBetweenReleaseAskedAndAcknowledgedAsksAgainWithTheSameKey() async throws {
        let log = ProvisionerLog()
        let hold = Mutex(true)
        let router = Router()
        router.post("/provision") { request, _ -> HTTPResponse.Status in
            try await log.record(request)
            guard log.all.last?.action == "release" else { return .accepted }
            while hold.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(50)) }
            return .ok
        }
        try await withLoopbackProvisioner(router) { port in
            let directory = try tempDirectory()
            let server = SpotdProcess(
                directory: directory, port: freePort(),
                extra: [
                    "--provider", "webhook", "--provision-webhook-url", "http://127.0.0.1:\(port)/provision", "--drain-margin-seconds", "1",
                ])
            try await server.start()
            try await server.request("POST", "/v1/pools", Seed.pool("spot-a", "spot", zone: "a"))
            try await server.request("POST", "/v1/pools", Seed.pool("spot-b", "spot", zone: "b"))
            try await server.request("POST", "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            try await server.request("POST", "/v1/interruptions", #"{"node_id":"s1","kind":"termination","notice_seconds":2}"#)
            // At the deadline the node is terminated and its release asked; the provisioner sits on the call.
            #expect(try await server.eventually { log.count("release") == 1 })
            server.kill(SIGKILL)
            hold.withLock { $0 = false }
            try await server.start()
            #expect(
                try await server.eventually { try await server.request("GET", "/v1/summary").1["provider"]?["pending_releases"] == .int(0) }
            )
            let releases = log.all.filter { $0.action == "release" }
            #expect(releases.count >= 2)
            #expect(Set(releases.map(\.key)).count == 1, "\(releases.map(\.key))")
            let events = try await server.request("GET", "/v1/events?limit=1000").1["items"]?.array ?? []
            #expect(events.filter { $0["type"] == .string("node.terminated") && $0["subject"] == .string("nodes/s1") }.count == 1)
            #expect(events.filter { $0["type"] == .string("node.released") }.count == 1)
            #expect(try await server.request("GET", "/v1/nodes/s1").1["state"] == .string("terminated"))
            server.kill(SIGTERM)
        }
    }

    @Test func sigkillDuringAServiceSurgeSurgesOncePerDoomedReplica() async throws {
        var random = TestRandom()
        let directory = try tempDirectory()
        let server = SpotdProcess(
            directory: directory, port: freePort(), extra: ["--sim-boot-seconds", "1", "--drain-margin-seconds", "1"])
        try await server.start()
        try await server.request("POST", "/v1/pools", Seed.pool("spot-a", "spot", zone: "a"))
        try await server.request("POST", "/v1/pools", Seed.pool("spot-b", "spot", zone: "b"))
        for index in 0..<3 {
            try await server.request("POST", "/v1/nodes", Seed.node("a\(index)", pool: "spot-a"))
            try await server.request("POST", "/v1/nodes", Seed.node("b\(index)", pool: "spot-b"))
        }
        try await server.request("POST", "/v1/services", #"{"id":"chat","tier":"best_effort","replicas":4,"gpus_per_replica":8}"#)
        func members() async throws -> [JSONValue] {
            try await server.request("GET", "/v1/services/chat").1["members"]?.array ?? []
        }
        func readyStarting() async throws {
            for member in try await members() where member["state"]?.string == "starting" {
                try await server.request("POST", "/v1/services/chat/replicas/\(member["id"]!.string!)/ready")
            }
        }
        #expect(
            try await server.eventually {
                try await members().filter { (m: JSONValue) -> Bool in m["state"]?.string == "starting" }.count == 4
            })
        try await readyStarting()
        let hosts = try await members().compactMap { $0["node_id"]?.string }.prefix(2)
        for (index, host) in hosts.enumerated() {
            try await server.request(
                "POST", "/v1/interruptions", #"{"node_id":"\#(host)","kind":"termination","notice_seconds":8,"event_id":"s\#(index)"}"#)
        }
        let firstKill = Int.random(in: 0...300, using: &random)
        let secondKill = Int.random(in: 50...800, using: &random)
        print(
            "[sigkillDuringAServiceSurgeSurgesOncePerDoomedReplica] kills after \(firstKill) ms and \(secondKill) ms (seed \(random.seed))")
        try await Task.sleep(for: .milliseconds(firstKill))
        server.kill(SIGKILL)
        try await server.start()
        try await Task.sleep(for: .milliseconds(secondKill))
        server.kill(SIGKILL)
        try await server.start()

        let surged = try await server.eventually {
            try await members().filter { (m: JSONValue) -> Bool in m["replaces"]?.string != nil }.count == 2
        }
        let afterRestart = try await members()
        #expect(surged, "\(afterRestart)")
        // Give the worker more passes: still exactly one surge each.
        try await Task.sleep(for: .milliseconds(600))
        let surges = try await members().filter { (m: JSONValue) -> Bool in m["replaces"]?.string != nil }
        #expect(surges.count == 2)
        let doomed = try await members().filter { (m: JSONValue) -> Bool in hosts.contains(m["node_id"]?.string ?? "") }
        #expect(Set(surges.compactMap { $0["replaces"]?.string }) == Set(doomed.compactMap { $0["id"]?.string }))
        let events = try await server.request("GET", "/v1/events?type=service.replica_surged").1["items"]?.array ?? []
        #expect(events.count == 2, "\(events)")
        // The surges serve; the service is whole again, the doomed replicas drain away.
        #expect(try await server.eventually { try await members().contains { $0["state"]?.string == "starting" } })
        try await readyStarting()
        let whole = try await server.eventually(20) {
            let service = try await server.request("GET", "/v1/services/chat").1
            return service["ready_replicas"] == .int(4)
                && (service["members"]?.array ?? []).filter { (m: JSONValue) -> Bool in m["state"]?.string == "gone" }.count == 2
        }
        let final = try await members()
        #expect(whole, "\(final)")
        server.kill(SIGTERM)
    }
}
