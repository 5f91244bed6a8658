import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import SpotCore

// spotd-bench: starts a real `spotd serve` (the binary next to this one) on a fresh SQLite file, loads it over HTTP,
// and prints every figure of the benchmark as a table and as JSON, with the trivial-route ceiling of the same run.
// Run: swift build -c release && .build/release/spotd-bench   (options: --nodes N --jobs N --placements N --burst N
// --connections N --seconds S; --db postgres://user:password@host/any-database makes a fresh database on that server
// and runs --replicas N processes on it, the load spread over them round-robin)

/// Writes a line at once (stdout is block-buffered when it is not a terminal).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

// MARK: - Settings

struct Settings {
    var nodes = 10_000
    var jobs = 40_000
    var placements = 20_000
    var burst = 1_000
    var connections = 64
    var ceilingSeconds = 5.0
    /// A PostgreSQL server (`--db`): the bench makes a fresh database there.
    var postgres: String?
    var replicas = 1

    init(_ arguments: [String]) {
        var iterator = arguments.dropFirst().makeIterator()
        while let flag = iterator.next() {
            if flag == "--db" {
                postgres = iterator.next()
                continue
            }
            guard let value = iterator.next().flatMap(Double.init) else { fatalError("usage: spotd-bench [--nodes N] [--jobs N] ...") }
            switch flag {
            case "--nodes": nodes = Int(value)
            case "--jobs": jobs = Int(value)
            case "--placements": placements = Int(value)
            case "--burst": burst = Int(value)
            case "--connections": connections = Int(value)
            case "--seconds": ceilingSeconds = value
            case "--replicas": replicas = max(1, Int(value))
            default: fatalError("unknown option \(flag)")
            }
        }
        placements = min(placements, jobs)
        if postgres == nil { replicas = 1 }
    }
}

// MARK: - The server under test

final class Server: @unchecked Sendable {
    let port: Int
    let db: String
    var process: Process?

    init(port: Int, db: String) {
        self.port = port
        self.db = db
    }

    static var binary: URL {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("spotd")
    }

    /// Starts the server and returns how long it took until `/readyz` answered 200.
    func start(autoPlace: Bool) async throws -> Double {
        let process = Process()
        process.executableURL = Self.binary
        process.arguments =
            ["serve", "--port", String(port), "--db", db, "--sim-boot-seconds", "3600"] + (autoPlace ? [] : ["--no-auto-place"])
        process.environment = ProcessInfo.processInfo.environment.merging(["LOG_LEVEL": "error"]) { $1 }
        process.standardOutput = FileHandle.nullDevice
        let started = Date()
        try process.run()
        self.process = process
        while Date().timeIntervalSince(started) < 60 {
            if let status = try? await oneShot("/readyz"), status == 200 { return Date().timeIntervalSince(started) }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw BenchError.serverDidNotStart
    }

    func oneShot(_ path: String) async throws -> Int {
        try await TestClient.withClient(host: "127.0.0.1", port: port) { client in
            Int(try await client.get(path).head.status.code)
        }
    }

    func stop() {
        guard let process else { return }
        process.terminate()
        process.waitUntilExit()
        self.process = nil
    }

    var residentMiB: Double {
        guard let pid = process?.processIdentifier,
            let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kib = Double(line.split(separator: " ").dropFirst().first ?? "")
        else { return 0 }
        return kib / 1024
    }
}

enum BenchError: Error { case serverDidNotStart, unexpected(String) }

// MARK: - Load

/// Latencies in seconds and how long the whole run took.
struct LoadResult {
    var latencies: [Double]
    var elapsed: Double
    var statuses: [Int: Int]
    /// When the first request was written (CLOCK_MONOTONIC seconds), after every connection was open.
    var firstSent: Double

    var rate: Double { Double(latencies.count) / elapsed }
    func percentile(_ p: Double) -> Double {
        let sorted = latencies.sorted()
        guard !sorted.isEmpty else { return 0 }
        return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p))] * 1000
    }
}

/// Sends `count` requests (made by `make(index)`) over `connections` keep-alive connections (see LoadClient), and
/// remembers when the phase ran (CLOCK_MONOTONIC seconds) for `scripts/profile.sh`.
func load(
    _ phase: String, port: Int, connections: Int, count: Int, duration: Double? = nil,
    make: (Int) -> (method: String, path: String, body: String?)
) throws -> LoadResult {
    let start = LoadClient.monotonicSeconds()
    defer { phases.append("\(phase) \(start) \(LoadClient.monotonicSeconds())") }
    // `port` is the first replica's; the load goes to every replica.
    let ports = port == servers[0].port ? servers.map(\.port) : [port]
    return try LoadClient.run(ports: ports, connections: connections, count: duration == nil ? count : nil, duration: duration, make: make)
}

nonisolated(unsafe) var phases: [String] = []

/// Lets this process (and the server it starts) hold a thousand-connection burst.
func raiseOpenFileLimit() {
    var limit = rlimit()
    guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
    limit.rlim_cur = max(limit.rlim_cur, min(limit.rlim_max, 65_536))
    setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
}

func json(_ port: Int, _ path: String) async throws -> [String: Any] {
    try await TestClient.withClient(host: "127.0.0.1", port: port) { client in
        let response = try await client.get(path)
        let data = Data(buffer: response.body ?? ByteBuffer())
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw BenchError.unexpected(path) }
        return object
    }
}

/// A Prometheus histogram read from `/metrics`: cumulative counts per upper bound.
struct Histogram {
    var buckets: [(bound: Double, count: Double)]

    /// The upper bound of the bucket that holds quantile `q` (what a histogram can say).
    func quantile(_ q: Double) -> Double {
        guard let total = buckets.last?.count, total > 0 else { return 0 }
        return buckets.first { $0.count >= q * total }?.bound ?? .infinity
    }
}

func histogram(_ port: Int, _ name: String) async throws -> Histogram {
    let text = try await TestClient.withClient(host: "127.0.0.1", port: port) { client in
        String(buffer: try await client.get("/metrics").body ?? ByteBuffer())
    }
    var buckets: [(Double, Double)] = []
    for line in text.split(separator: "\n") where line.hasPrefix("\(name)_bucket{") {
        guard let start = line.range(of: "le=\""), let end = line[start.upperBound...].firstIndex(of: "\""),
            let count = line.split(separator: " ").last.flatMap({ Double($0) })
        else { continue }
        let bound = line[start.upperBound..<end] == "+Inf" ? Double.infinity : Double(line[start.upperBound..<end]) ?? .infinity
        buckets.append((bound, count))
    }
    return Histogram(buckets: buckets.sorted { $0.0 < $1.0 })
}

func waitUntil(_ timeout: Double, _ check: () async throws -> Bool) async throws -> Double {
    let started = Date()
    while Date().timeIntervalSince(started) < timeout {
        if try await check() { return Date().timeIntervalSince(started) }
        try await Task.sleep(for: .milliseconds(20))
    }
    return .infinity
}

// MARK: - The run

let settings = Settings(CommandLine.arguments)
raiseOpenFileLimit()
guard FileManager.default.isExecutableFile(atPath: Server.binary.path) else {
    say("spotd-bench: no spotd binary at \(Server.binary.path); run `swift build -c release` first")
    exit(2)
}
let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-bench-\(UUID().uuidString)")
try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(at: directory) }
let db =
    try settings.postgres.map {
        try PostgresScratch.createDatabase(serverURL: $0, name: "spotd_bench_\(Int(Date().timeIntervalSince1970))")
    }
    ?? directory.appendingPathComponent("bench.sqlite").path
let servers = (0..<settings.replicas).map { _ in Server(port: LoadClient.freePort(), db: db) }
let server = servers[0]
let port = server.port
nonisolated(unsafe) var figures: [(String, String, Any)] = []
@MainActor func record(_ key: String, _ label: String, _ value: Any) {
    figures.append((key, label, value))
    say("  " + label.padding(toLength: 52, withPad: " ", startingAt: 0) + " \(value)")
}
func round(_ value: Double, _ places: Int = 1) -> Double {
    let scale = pow(10, Double(places))
    return (value * scale).rounded() / scale
}

say(
    "spotd-bench: \(settings.nodes) nodes, \(settings.jobs) jobs, \(settings.burst)-notice burst, \(settings.connections) connections, "
        + (settings.postgres == nil ? "SQLite" : "PostgreSQL, \(settings.replicas) replica(s)"))
for replica in servers { _ = try await replica.start(autoPlace: false) }

// Ceiling: a trivial route on the same server.
let ceiling = try load("ceiling", port: port, connections: settings.connections, count: 0, duration: settings.ceilingSeconds) { _ in
    ("GET", "/healthz", nil)
}
record("ceiling_rps", "ceiling: GET /healthz req/s", round(ceiling.rate, 0))

// Seed over HTTP: pools, nodes, jobs.
let poolCount = 10
for index in 0..<poolCount {
    let type = index < 7 ? "spot" : "on_demand"
    let body = """
        {"name":"pool-\(index)","capacity_type":"\(type)","gpu_type":"H100","gpus_per_node":8,"zone":"zone-\(index % 3)",\
        "instance_type":"p5-\(index)","hourly_price":\(10 + index),"max_nodes":10000}
        """
    _ = try load("seed-pools", port: port, connections: 1, count: 1) { _ in ("POST", "/v1/pools", body) }
}
let seededNodes = try load("seed-nodes", port: port, connections: settings.connections, count: settings.nodes) { index in
    ("POST", "/v1/nodes", #"{"id":"node-\#(index)","pool":"pool-\#(index % poolCount)"}"#)
}
record("seed_nodes_per_s", "seed: node registrations/s (\(settings.nodes))", round(seededNodes.rate, 0))
let seededJobs = try load("seed-jobs", port: port, connections: settings.connections, count: settings.jobs) { index in
    ("POST", "/v1/jobs", #"{"id":"job-\#(index)","tier":"best_effort","gpus":1,"checkpointable":false}"#)
}
record("seed_jobs_per_s", "seed: job submissions/s (\(settings.jobs))", round(seededJobs.rate, 0))

// Placements over HTTP: half of them with every connection (throughput), half with 16 (kube-scheduler's default
// parallelism of binding goroutines), where the latency of a scheduler's calls is read.
let half = settings.placements / 2
let wide = try load("placements-64", port: port, connections: settings.connections, count: half) { index in
    ("POST", "/v1/placements", #"{"job_id":"job-\#(index)"}"#)
}
let narrow = try load("placements-16", port: port, connections: 16, count: settings.placements - half) { index in
    ("POST", "/v1/placements", #"{"job_id":"job-\#(half + index)"}"#)
}
guard wide.statuses[201] == half, narrow.statuses[201] == settings.placements - half else {
    throw BenchError.unexpected("placements answered \(wide.statuses) and \(narrow.statuses)")
}
let c = settings.connections
record("placements_per_s", "placements/s over HTTP (\(c) connections)", round(wide.rate, 0))
record("placement_p50_ms", "placement p50 latency (ms, \(c) connections)", round(wide.percentile(0.5), 2))
record("placement_p99_ms", "placement p99 latency (ms, \(c) connections)", round(wide.percentile(0.99), 2))
record("placement_ratio_to_ceiling", "placements / ceiling", round(wide.rate / ceiling.rate, 3))
record("placements_per_s_16", "placements/s over HTTP (16 connections)", round(narrow.rate, 0))
record("placement_p50_ms_16", "placement p50 latency (ms, 16 connections)", round(narrow.percentile(0.5), 2))
record("placement_p99_ms_16", "placement p99 latency (ms, 16 connections)", round(narrow.percentile(0.99), 2))

// A burst of termination notices at once, one connection each (up to 1,000).
let burst = try load("burst", port: port, connections: min(settings.burst, 1000), count: settings.burst) { index in
    ("POST", "/v1/interruptions", #"{"node_id":"node-\#(index)","kind":"termination","notice_seconds":120,"event_id":"burst-\#(index)"}"#)
}
guard burst.statuses[202] == settings.burst else { throw BenchError.unexpected("notices answered \(burst.statuses)") }
record("burst_answered_s", "burst: all \(settings.burst) notices answered (s)", round(burst.elapsed, 3))
record("burst_answer_p50_ms", "burst: answer latency at the client p50 (ms)", round(burst.percentile(0.5), 1))
record("burst_answer_p99_ms", "burst: answer latency at the client p99 (ms)", round(burst.percentile(0.99), 1))
// Inside spotd: from the handler receiving the notice to the cordon committed (fsync'd), from its own histogram.
var cordon = Histogram(buckets: [])
for replica in servers {
    let one = try await histogram(replica.port, "spotd_cordon_latency_seconds")
    cordon.buckets = cordon.buckets.isEmpty ? one.buckets : zip(cordon.buckets, one.buckets).map { ($0.bound, $0.count + $1.count) }
}
record("notice_cordon_p50_ms", "burst: notice->cordon in spotd p50 (ms, bucket bound)", cordon.quantile(0.5) * 1000)
record("notice_cordon_p99_ms", "burst: notice->cordon in spotd p99 (ms, bucket bound)", cordon.quantile(0.99) * 1000)
let requeued = try await waitUntil(60) {
    let page = try await json(port, "/v1/interruptions?state=received&limit=1")
    return (page["items"] as? [Any])?.isEmpty == true
}
record("burst_requeued_s", "burst: every job on those nodes requeued (s)", round(LoadClient.monotonicSeconds() - burst.firstSent, 3))
_ = requeued

// The scheduling loop: restart with it on and time how long the queue takes to drain, from the process start.
func bestEffort(_ state: String) async throws -> Int {
    let summary = try await json(port, "/v1/summary")
    return ((summary["jobs"] as? [String: Any])?["best_effort"] as? [String: Any])?[state] as? Int ?? 0
}
let queued = try await bestEffort("queued")
let runningBefore = try await bestEffort("running")
for replica in servers { replica.stop() }
let loopStart = Date()
var restart = 0.0
for replica in servers { restart = max(restart, try await replica.start(autoPlace: true)) }
record("restart_s", "restart with all of that in the store (s)", round(restart, 3))
let target = min(10_000, queued)
var tenThousand = Double.infinity
var allPlaced = Double.infinity
_ = try await waitUntil(120) {
    let placed = try await bestEffort("running") - runningBefore
    if placed >= target && tenThousand == .infinity { tenThousand = Date().timeIntervalSince(loopStart) }
    if placed >= queued { allPlaced = Date().timeIntervalSince(loopStart) }
    return placed >= queued
}
record("loop_queued_jobs", "scheduling loop: queued jobs at restart", queued)
record("loop_place_10k_s", "scheduling loop: \(target) of them placed (s, from start)", round(tenThousand, 3))
record("loop_place_all_s", "scheduling loop: all of them placed (s, from start)", round(allPlaced, 3))
record("rss_mib", "resident memory at the end (MiB, one replica)", round(server.residentMiB, 1))
for replica in servers { replica.stop() }

var object: [String: Any] = [:]
for (key, _, value) in figures { object[key] = value }
object["date"] = ISO8601DateFormatter().string(from: Date())
if let path = ProcessInfo.processInfo.environment["SPOTD_BENCH_PHASES"] {
    try (phases.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
}
let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
say(String(decoding: data, as: UTF8.self))
