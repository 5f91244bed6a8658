import Foundation
import Synchronization
import Testing

@testable import SpotCore

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

// Started together and called from several tasks at once; each process handle is only started and killed by the test.
extension SpotdProcess: @unchecked Sendable {}

/// Several real `spotd serve` processes on one PostgreSQL database: each serves the whole API, one runs the
/// workflows, and another takes over when it dies.
@Suite(
    "Several replicas on one PostgreSQL", .serialized,
    .enabled(if: TestStore.isPostgres, "needs PostgreSQL: scripts/with-postgres.sh swift test"))
struct ReplicaTests {
    func tempDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-replicas-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// Three replicas started at once on a fresh database: each comes up (the migrations are applied once, under
    /// the advisory lock), and exactly one leads.
    func replicas(_ count: Int, in directory: URL, extra: [String] = []) async throws -> [SpotdProcess] {
        let db = TestStore.location(in: directory)
        let servers = (0..<count).map { _ in SpotdProcess(directory: directory, port: freePort(), extra: extra, db: db) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for server in servers { group.addTask { try await server.start() } }
            try await group.waitForAll()
        }
        return servers
    }

    func leaders(_ servers: [SpotdProcess]) async -> [Int] {
        var found: [Int] = []
        for (index, server) in servers.enumerated() where server.process != nil {
            if let ready = try? await server.request("GET", "/readyz"), ready.1["leader"]?.bool == true { found.append(index) }
        }
        return found
    }

    func all(_ server: SpotdProcess, _ path: String) async throws -> [JSONValue] {
        var items: [JSONValue] = []
        var cursor: String?
        repeat {
            let separator = path.contains("?") ? "&" : "?"
            let page = try await server.request("GET", path + separator + "limit=500" + (cursor.map { "&cursor=\($0)" } ?? "")).1
            items += page["items"]?.array ?? []
            cursor = page["next_cursor"]?.string
        } while cursor != nil
        return items
    }

    @Test func startingTogetherTheyMigrateOnceAndOneLeads() async throws {
        let directory = try tempDirectory()
        let servers = try await replicas(3, in: directory)
        for server in servers {
            let (status, ready) = try await server.request("GET", "/readyz")
            #expect(status == 200 && ready["store"]?.string == "postgres", "\(ready)")
        }
        #expect(try await servers[0].eventually { await leaders(servers).count == 1 })
        let store = try SpotStore(location: servers[0].dbPath, connections: 1)
        let versions = try store.blockingRead { db in try Int.fetchAll(db, sql: "SELECT version FROM schema_migrations ORDER BY version") }
        #expect(versions == Migration.embeddedPostgres.map(\.version))
        try store.close()
        for server in servers { server.kill(SIGTERM) }
    }

    /// 60 placements at once, spread over three replicas, for 20 free GPUs: exactly 20 are placed, no node holds
    /// more than it has.
    @Test func sixtyConcurrentPlacementsForTwentySlots() async throws {
        let directory = try tempDirectory()
        let servers = try await replicas(3, in: directory, extra: ["--no-auto-place"])
        let first = servers[0]
        // max_nodes 5: the demand planner may not add capacity while the placements race.
        #expect(try await first.request("POST", "/v1/pools", Seed.pool("od", "on_demand", gpus: 4, max: 5)).0 == 201)
        for index in 0..<5 { #expect(try await first.request("POST", "/v1/nodes", Seed.node("n\(index)", pool: "od")).0 == 201) }
        for index in 0..<60 {
            let server = servers[index % 3]
            #expect(try await server.request("POST", "/v1/jobs", Seed.job("j\(index)", tier: "premium")).0 == 201)
        }
        final class Tally: Sendable { let statuses = Mutex<[Int: Int]>([:]) }
        let tally = Tally()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<60 {
                group.addTask {
                    let (status, _) = try await servers[index % 3].request("POST", "/v1/placements", #"{"job_id":"j\#(index)"}"#)
                    tally.statuses.withLock { $0[status, default: 0] += 1 }
                }
            }
            try await group.waitForAll()
        }
        #expect(tally.statuses.withLock { $0 } == [201: 20, 409: 40])
        let nodes = try await all(servers[1], "/v1/nodes")
        #expect(nodes.map { $0["gpus_allocated"]?.int ?? -1 } == [4, 4, 4, 4, 4], "\(nodes)")
        let running = try await all(servers[2], "/v1/jobs?state=running")
        #expect(running.count == 20)
        for server in servers { server.kill(SIGTERM) }
    }

    /// A 100-node reclaim over three replicas; the leader is SIGKILLed in the middle. Another takes over within 5 s,
    /// and afterwards every workflow has run exactly once: one replacement per lost node, one requeue per job, every
    /// interruption completed, no step in the event log twice.
    @Test func theLeaderDiesInTheMiddleOfAHundredNodeReclaim() async throws {
        let directory = try tempDirectory()
        let servers = try await replicas(3, in: directory, extra: ["--sim-boot-seconds", "1", "--drain-margin-seconds", "1"])
        let first = servers[0]
        #expect(try await first.request("POST", "/v1/pools", Seed.pool("spot-a", "spot", zone: "a")).0 == 201)
        #expect(try await first.request("POST", "/v1/pools", Seed.pool("spot-b", "spot", zone: "b")).0 == 201)
        for index in 0..<100 {
            #expect(try await servers[index % 3].request("POST", "/v1/nodes", Seed.node("n\(index)", pool: "spot-a")).0 == 201)
        }
        for index in 0..<100 {
            let job = Seed.job("j\(index)", tier: "best_effort", gpus: 8, checkpointable: index % 4 == 0)
            #expect(try await servers[index % 3].request("POST", "/v1/jobs", job).0 == 201)
        }
        #expect(try await first.eventually(30) { try await all(first, "/v1/jobs?state=running").count == 100 })
        let leader = try #require(await leaders(servers).first)
        print("[theLeaderDiesInTheMiddleOfAHundredNodeReclaim] replica \(leader) leads")

        let survivors = servers.indices.filter { $0 != leader }.map { servers[$0] }
        // Watched from the moment of the kill, while the rest of the notices go to the survivors.
        var watcher: Task<Double?, Never>?
        for index in 0..<100 {
            if index == 50 {
                servers[leader].kill(SIGKILL)
                let killedAt = Date()
                watcher = Task {
                    while Date().timeIntervalSince(killedAt) < 15 {
                        if await leaders(survivors).count == 1 { return Date().timeIntervalSince(killedAt) }
                        try? await Task.sleep(for: .milliseconds(100))
                    }
                    return nil
                }
            }
            let live = servers.indices.filter { servers[$0].process != nil }
            let server = servers[live[index % live.count]]
            let (status, answer) = try await server.request(
                "POST", "/v1/interruptions", #"{"node_id":"n\#(index)","kind":"termination","notice_seconds":4,"event_id":"e\#(index)"}"#)
            #expect(status == 202, "\(answer)")
        }
        let takeover = await watcher?.value
        print("[theLeaderDiesInTheMiddleOfAHundredNodeReclaim] a new leader \(takeover.map { "\($0) s" } ?? "never") after the kill")
        #expect(takeover.map { $0 <= 5 } == true, "took over after \(String(describing: takeover)) s")

        let reader = survivors[0]
        let done = try await reader.eventually(60) { try await all(reader, "/v1/interruptions?state=completed").count == 100 }
        #expect(done)
        let replacements = try await all(reader, "/v1/provisioning-requests").filter { $0["reason"]?.string == "replacement" }
        #expect(replacements.count == 100)
        #expect(Set(replacements.compactMap { $0["replaces_node_id"]?.string }).count == 100)
        #expect(try await reader.eventually(30) { try await all(reader, "/v1/jobs?state=running").count == 100 })
        for index in 0..<100 {
            let job = try await reader.request("GET", "/v1/jobs/j\(index)").1
            #expect(job["requeue_count"] == .int(1), "j\(index): \(job)")
        }
        // The event log, read from a replica that never led: each workflow step once per subject.
        let events = try await all(reader, "/v1/events")
        #expect(Set(events.compactMap { $0["id"]?.int }).count == events.count)
        for type in ["job.requeued", "interruption.completed", "node.cordoned", "node.draining", "node.drained", "node.terminated"] {
            let subjects = events.filter { $0["type"]?.string == type }.compactMap { $0["subject"]?.string }
            // Once per subject; every one of the 100 where each reclaim passes through it (a node whose deadline came
            // before its drain ended goes from draining to terminated, not drained).
            let everyOne = ["job.requeued", "interruption.completed", "node.cordoned", "node.draining"].contains(type)
            #expect(
                Set(subjects).count == subjects.count && (!everyOne || subjects.count == 100),
                "\(type): \(subjects.count) events, \(Set(subjects).count) subjects")
        }
        let ids = events.compactMap { $0["id"]?.int }
        #expect(ids == ids.sorted())
        // Every step of every interruption's timeline once (a checkpoint asked for once per job).
        for index in 0..<100 {
            let items = try await all(reader, "/v1/interruptions?node=n\(index)")
            let id = try #require(items.first?["id"]?.string, "n\(index) has its interruption")
            let timeline = try await reader.request("GET", "/v1/interruptions/\(id)").1["timeline"]?.array ?? []
            let steps = timeline.map { "\($0["step"]?.string ?? "") \($0["job_id"]?.string ?? "")" }
            #expect(Set(steps).count == steps.count, "n\(index): \(steps)")
            #expect(steps.contains { $0.hasPrefix("completed") } && steps.contains { $0.hasPrefix("requeued j") }, "n\(index): \(steps)")
        }
        for server in survivors { server.kill(SIGTERM) }
    }
}

/// A PostgreSQL cluster of the test's own (scripts/pg-cluster.sh), to stop and start without disturbing other tests.
final class OwnCluster {
    let directory: URL
    let url: String
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("scripts/pg-cluster.sh").path

    /// Whether PostgreSQL's server programs are installed here.
    static var installed: Bool {
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        return versions.contains { FileManager.default.isExecutableFile(atPath: "/usr/lib/postgresql/\($0)/bin/initdb") }
    }

    /// Starts one, or returns nil when PostgreSQL is not installed (a failure when `SPOTD_REQUIRE_POSTGRES` is set).
    static func start() async throws -> OwnCluster? {
        guard installed else {
            if ProcessInfo.processInfo.environment["SPOTD_REQUIRE_POSTGRES"] != nil { Issue.record("PostgreSQL is not installed") }
            print("PostgreSQL is not installed: skipping (apt-get install postgresql; .ci/run does)")
            return nil
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-own-pg-\(UUID().uuidString)")
        let result = try await run(["start", directory.path])
        guard result.status == 0 else {
            Issue.record("pg-cluster.sh start failed: \(result.stderr)")
            return nil
        }
        return OwnCluster(directory: directory, url: result.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    private init(directory: URL, url: String) {
        self.directory = directory
        self.url = url
    }

    /// Runs the script with its output in files, not pipes (the server it starts inherits the script's descriptors,
    /// and a pipe it held would never reach its end), and waits for it with `waitpid` (Foundation's `Process` missed
    /// this script's exit and waited for ever).
    static func run(_ arguments: [String]) async throws -> CommandResult {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("pg-cluster-\(UUID().uuidString)").path
        defer {
            try? FileManager.default.removeItem(atPath: output + ".out")
            try? FileManager.default.removeItem(atPath: output + ".err")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output + ".out", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, output + ".err", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let argv = ([script] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, script, &actions, nil, argv, environ) == 0 else {
            return CommandResult(status: -1, stdout: "", stderr: "cannot run \(script)")
        }
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(120)
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Date() > deadline {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                return CommandResult(status: -1, stdout: "", stderr: "\(script) \(arguments) took over 120 s")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        return CommandResult(
            status: (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1,
            stdout: (try? String(contentsOfFile: output + ".out", encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOfFile: output + ".err", encoding: .utf8)) ?? "")
    }

    func stop() async throws { #expect(try await Self.run(["stop", directory.path]).status == 0) }
    func start() async throws { #expect(try await Self.run(["start", directory.path]).status == 0) }
    /// Stops and deletes the cluster, waiting for the script (from a `defer`: also when the test throws).
    func remove() {
        var pid: pid_t = 0
        let strings: [String] = [OwnCluster.script, "remove", directory.path]
        let argv: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        guard posix_spawn(&pid, OwnCluster.script, nil, nil, argv, environ) == 0 else { return }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }
}

@Suite("PostgreSQL going away and wrong settings", .serialized)
struct PostgresOutageTests {
    /// PostgreSQL restarted under a stream of notices: while it is away spotd answers 503 problem+json, it
    /// reconnects by itself, and every notice it accepted (202) is there afterwards; those refused are accepted when
    /// sent again, as a cloud's retry would.
    @Test func aRestartUnderLoadLosesNoAcceptedNotice() async throws {
        guard let cluster = try await OwnCluster.start() else { return }
        defer { cluster.remove() }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-outage-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let db = try PostgresScratch.createDatabase(serverURL: cluster.url, name: "outage")
        let server = SpotdProcess(directory: directory, port: freePort(), db: db)
        try await server.start()
        defer { server.kill(SIGTERM) }
        #expect(try await server.request("POST", "/v1/pools", Seed.pool("spot-a", "spot")).0 == 201)
        let nodes = 300
        for index in 0..<nodes { #expect(try await server.request("POST", "/v1/nodes", Seed.node("n\(index)", pool: "spot-a")).0 == 201) }

        final class Answers: Sendable {
            let accepted = Mutex<[Int]>([])
            let refused = Mutex<[Int]>([])
            let other = Mutex<[String]>([])
        }
        let answers = Answers()
        let sender = Task {
            for index in 0..<nodes {
                let body = #"{"node_id":"n\#(index)","kind":"termination","notice_seconds":120,"event_id":"e\#(index)"}"#
                switch try? await server.request("POST", "/v1/interruptions", body) {
                case (202, _)?: answers.accepted.withLock { $0.append(index) }
                case (503, let problem)? where problem["type"]?.string == "urn:spotd:problem:store-unavailable":
                    answers.refused.withLock { $0.append(index) }
                case let answer: answers.other.withLock { $0.append("n\(index): \(String(describing: answer))") }
                }
                try? await Task.sleep(for: .milliseconds(15))
            }
        }
        #expect(try await server.eventually { answers.accepted.withLock { $0.count } >= 50 })
        try await cluster.stop()
        #expect(try await server.eventually { answers.refused.withLock { $0.count } >= 5 }, "no 503 while PostgreSQL was away")
        let (status, problem) = try await server.request("GET", "/v1/nodes/n0")
        #expect(status == 503 && problem["type"]?.string == "urn:spotd:problem:store-unavailable", "\(problem)")
        let (ready, _) = try await server.request("GET", "/readyz")
        #expect(ready == 503)
        // Prometheus still gets the process's own figures.
        let scrape = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(server.port)/metrics")!)
        #expect((scrape.1 as? HTTPURLResponse)?.statusCode == 200)
        #expect(String(decoding: scrape.0, as: UTF8.self).contains("spotd_leader"))
        try await cluster.start()
        await sender.value
        #expect(answers.other.withLock { $0 }.isEmpty, "\(answers.other.withLock { $0 })")
        #expect(try await server.eventually { try await server.request("GET", "/readyz").0 == 200 }, "spotd did not reconnect")

        // Every accepted notice is stored; the refused ones are accepted when sent again.
        func stored() async throws -> Set<String> {
            var nodes = Set<String>()
            var cursor: String?
            repeat {
                let page = try await server.request("GET", "/v1/interruptions?limit=1000" + (cursor.map { "&cursor=\($0)" } ?? "")).1
                nodes.formUnion((page["items"]?.array ?? []).compactMap { $0["node_id"]?.string })
                cursor = page["next_cursor"]?.string
            } while cursor != nil
            return nodes
        }
        print(
            "[aRestartUnderLoadLosesNoAcceptedNotice] \(answers.accepted.withLock { $0.count }) accepted, "
                + "\(answers.refused.withLock { $0.count }) refused with 503 while PostgreSQL was away")
        let acceptedNodes = Set(answers.accepted.withLock { $0 }.map { "n\($0)" })
        let before = try await stored()
        #expect(acceptedNodes.isSubset(of: before), "lost: \(acceptedNodes.subtracting(before).sorted())")
        for index in answers.refused.withLock({ $0 }) {
            let body = #"{"node_id":"n\#(index)","kind":"termination","notice_seconds":120,"event_id":"e\#(index)"}"#
            #expect(try await server.request("POST", "/v1/interruptions", body).0 == 202)
        }
        #expect(try await stored().count == nodes)

        // Connections cut under spotd's feet mid-request (pg_terminate_backend): 503 store-unavailable, never a 500.
        let admin = try SpotStore(location: db, connections: 1)
        final class Statuses: Sendable { let seen = Mutex<[String]>([]) }
        let statuses = Statuses()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for reader in 0..<8 {
                group.addTask {
                    for _ in 0..<25 {
                        let (status, answer) = try await server.request("GET", "/v1/nodes?limit=200&pool=spot-a")
                        if status != 200 {
                            statuses.seen.withLock { $0.append("\(status) \(answer["type"]?.string ?? "")") }
                        }
                    }
                    _ = reader
                }
            }
            group.addTask {
                for _ in 0..<5 {
                    _ = try admin.blockingRead { db in
                        try Int.fetchAll(
                            db,
                            sql: """
                                SELECT pg_terminate_backend(pid)::int FROM pg_stat_activity
                                WHERE application_name = 'spotd' AND pid <> pg_backend_pid()
                                """)
                    }
                    try await Task.sleep(for: .milliseconds(60))
                }
            }
            try await group.waitForAll()
        }
        try admin.close()
        #expect(
            statuses.seen.withLock { $0 }.allSatisfy { $0 == "503 urn:spotd:problem:store-unavailable" }, "\(statuses.seen.withLock { $0 })"
        )
        print("[aRestartUnderLoadLosesNoAcceptedNotice] \(statuses.seen.withLock { $0.count }) reads cut mid-query answered 503")
        #expect(try await server.request("GET", "/readyz").0 == 200)
        server.kill(SIGTERM)

    }

    /// A database URL that cannot work stops spotd at start with a message that says why: the URL's shape, the
    /// password, the host, the database.
    @Test func badDatabaseSettingsAreNamed() async throws {
        // Every URL carries the same distinctive password, which must never be printed.
        let secret = "Sekret4711"
        let unreachable = "postgres://spotd:\(secret)@127.0.0.1:\(freePort())/spotd?sslmode=disable"
        var cases: [(String, String)] = [
            ("postgres://:\(secret)@", "--db URL is not usable"),
            ("postgres://:\(secret)@127.0.0.1/spotd", "names no user"),
            ("postgres://spotd:\(secret)@127.0.0.1:99999/spotd", "--db URL is not usable"),
            ("postgres://spotd:\(secret)@127.0.0.1/", "names no database"),
            ("postgres://spotd:\(secret)@127.0.0.1/spotd?sslmode=sometimes", "sslmode must be"),
            ("mysql://spotd:\(secret)@127.0.0.1/spotd", "only postgres:// (or postgresql://) URLs"),
            (unreachable, "cannot be reached"),
            ("POSTGRES://spotd:\(secret)@127.0.0.1:\(freePort())/spotd?sslmode=disable", "cannot be reached"),
        ]
        if let server = TestStore.postgresServer, var components = URLComponents(string: server) {
            components.password = secret
            cases.append((components.string!, "password for user 'spotd' was refused"))
            components.password = "spotd"
            components.path = "/no_such_database"
            cases.append((components.string!, "database 'no_such_database' does not exist"))
        }
        for (url, expected) in cases {
            let result = try await runSpotd(["serve", "--port", "\(freePort())", "--db", url], timeout: 30)
            #expect(result.status != 0, "\(url)")
            #expect(result.stderr.contains(expected), "\(url): \(result.stderr)")
            #expect(!result.stderr.contains(secret), "the password is never repeated: \(result.stderr)")
        }
    }
}
