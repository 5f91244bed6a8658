import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import SpotCore

/// The operator CLI (`spotd status`, `get`, `cordon`, `uncordon`, `drain`, `drill`): the real binary against a real
/// `spotd serve`, its output compared with what the API says.
@Suite("CLI against a real server", .serialized)
struct CLITests {
    func tempDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// A server (no scheduling loop: nothing moves unless asked) with two pools, four nodes and two running jobs,
    /// all with fixed ids: n1 (spot-a) runs j1 on 4 GPUs, od1 (od) runs p1 on 8, n2 is idle, n3 is cordoned.
    func seededServer(extra: [String] = []) async throws -> SpotdProcess {
        let server = SpotdProcess(directory: try tempDirectory(), port: freePort(), extra: ["--no-auto-place"] + extra)
        try await server.start()
        #expect(try await server.request("POST", "/v1/pools", Seed.pool("spot-a", "spot")).0 == 201)
        #expect(try await server.request("POST", "/v1/pools", Seed.pool("od", "on_demand", price: 98)).0 == 201)
        #expect(try await server.request("POST", "/v1/nodes", Seed.node("n1", pool: "spot-a")).0 == 201)
        #expect(try await server.request("POST", "/v1/nodes", Seed.node("od1", pool: "od")).0 == 201)
        #expect(try await server.request("POST", "/v1/jobs", Seed.job("j1", tier: "best_effort", gpus: 4, checkpointable: true)).0 == 201)
        #expect(try await server.request("POST", "/v1/jobs", Seed.job("p1", tier: "premium", gpus: 8)).0 == 201)
        // One candidate node each, so the placement is not a tie.
        #expect(try await server.request("POST", "/v1/placements", #"{"job_id":"j1"}"#).1["node_id"] == .string("n1"))
        #expect(try await server.request("POST", "/v1/placements", #"{"job_id":"p1"}"#).1["node_id"] == .string("od1"))
        #expect(try await server.request("POST", "/v1/nodes", Seed.node("n2", pool: "spot-a")).0 == 201)
        #expect(try await server.request("POST", "/v1/nodes", Seed.node("n3", pool: "spot-a")).0 == 201)
        #expect(try await server.request("POST", "/v1/nodes/n3/cordon").0 == 200)
        return server
    }

    /// Runs `spotd ARGUMENTS` against the server (SPOTD_URL set; other SPOTD_ variables unset).
    func cli(_ server: SpotdProcess, _ arguments: [String], environment: [String: String] = [:]) async throws -> CommandResult {
        try await runSpotd(arguments, environment: ["SPOTD_URL": "http://127.0.0.1:\(server.port)"].merging(environment) { $1 })
    }

    func json(_ text: String) -> JSONValue {
        (try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))) ?? .null
    }

    @Test func statusPrintsTheFleetAndItsJSON() async throws {
        let server = try await seededServer()
        defer { server.kill(SIGTERM) }
        let result = try await cli(server, ["status"])
        #expect(result.status == 0, "\(result.stderr)")
        // No times in it: the whole text is compared.
        #expect(
            result.stdout == """
                POOL    TYPE       GPU   READY  CORDONED  DRAINING  DRAINED  GPUS FREE/TOTAL
                spot-a  spot       H100  2      1         0         0        12/24
                od      on_demand  H100  1      0         0         0        0/8

                TIER         QUEUED  RUNNING  CHECKPOINTING  COMPLETED  FAILED  CANCELLED
                premium      0       1        0              0          0       0
                standard     0       0        0              0          0       0
                best_effort  0       1        0              0          0       0

                services: none
                active interruptions: 0
                pending provisioning requests: 0
                provider: simulated (live instances 4, pending releases 0)

                """)
        #expect(result.stderr.isEmpty)

        let json = try await cli(server, ["status", "-o", "json"])
        #expect(json.status == 0)
        let summary = try await server.request("GET", "/v1/summary").1
        #expect(self.json(json.stdout) == summary)
        #expect(self.json(json.stdout)["pools"]?[0]?["gpus_free"] == .int(12))
    }

    @Test func statusOfAnEmptyFleetSaysSo() async throws {
        let server = SpotdProcess(directory: try tempDirectory(), port: freePort(), extra: ["--no-auto-place"])
        try await server.start()
        defer { server.kill(SIGTERM) }
        let result = try await cli(server, ["status"])
        #expect(result.status == 0)
        #expect(result.stdout.hasPrefix("no pools yet (create one: POST /v1/pools)\n\nno jobs yet\n\nservices: none\n"), "\(result.stdout)")
        let nodes = try await cli(server, ["get", "nodes"])
        #expect(nodes.stdout == "no nodes\n")
        #expect(try await cli(server, ["get", "nodes", "-o", "json"]).stdout == "[]\n")
    }

    @Test func getNodesAsATableAndAsTheServersJSON() async throws {
        let server = try await seededServer()
        defer { server.kill(SIGTERM) }
        let table = try await cli(server, ["get", "nodes"])
        #expect(table.status == 0, "\(table.stderr)")
        #expect(
            table.stdout == """
                ID   POOL    TYPE       STATE     GPUS USED/TOTAL  JOBS  INTERRUPTION
                n1   spot-a  spot       ready     4/8              j1    -
                od1  od      on_demand  ready     8/8              p1    -
                n2   spot-a  spot       ready     0/8              -     -
                n3   spot-a  spot       cordoned  0/8              -     -

                """)

        let one = try await cli(server, ["get", "nodes", "n1", "-o", "json"])
        #expect(one.status == 0)
        #expect(json(one.stdout) == (try await server.request("GET", "/v1/nodes/n1").1))
        #expect(json(one.stdout)["state"] == .string("ready"))
        let view = try await cli(server, ["get", "node", "n1"])
        #expect(view.stdout.hasPrefix("id:                      n1\npool:                    spot-a\n"), "\(view.stdout)")

        // Every page is followed (one item a page here), and the list is the server's items, in order.
        let all = try await cli(server, ["get", "nodes", "-o", "json", "--page-size", "1"])
        #expect(all.status == 0)
        #expect(json(all.stdout) == (try await server.request("GET", "/v1/nodes?limit=100").1["items"]))
        #expect(json(all.stdout).array.compactMap { $0["id"]?.string } == ["n1", "od1", "n2", "n3"])
        // --limit stops early and says so on standard error, not in the output.
        let two = try await cli(server, ["get", "nodes", "--limit", "2", "--page-size", "1"])
        #expect(two.stdout.split(separator: "\n").count == 3)
        #expect(two.stderr == "spotd: showing the first 2 nodes; there are more (raise --limit)\n")
        let ready = try await cli(server, ["get", "nodes", "--state", "cordoned", "-o", "json"])
        #expect(json(ready.stdout).array.compactMap { $0["id"]?.string } == ["n3"])
    }

    @Test func cordonAndUncordonChangeTheNode() async throws {
        let server = try await seededServer()
        defer { server.kill(SIGTERM) }
        let cordon = try await cli(server, ["cordon", "n1"])
        #expect(cordon.status == 0, "\(cordon.stderr)")
        #expect(cordon.stdout == "node n1 is cordoned: it takes no new work (still running: j1)\n")
        #expect(try await server.request("GET", "/v1/nodes/n1").1["state"] == .string("cordoned"))
        let uncordon = try await cli(server, ["uncordon", "n1"])
        #expect(uncordon.status == 0)
        #expect(uncordon.stdout == "node n1 is ready: it takes work again\n")
        #expect(try await server.request("GET", "/v1/nodes/n1").1["state"] == .string("ready"))
        // An operator's drain: a new interruption (202), then the same one again (200).
        let drain = try await cli(server, ["drain", "n2", "--deadline-seconds", "600"])
        #expect(drain.status == 0, "\(drain.stderr)")
        #expect(drain.stdout.hasPrefix("node n2 is being drained: interruption int-"), "\(drain.stdout)")
        let interruptions = try await server.request("GET", "/v1/interruptions?node=n2").1["items"]?.array ?? []
        #expect(interruptions.first?["source"] == .string("operator"))
        let again = try await cli(server, ["drain", "n2", "-o", "json"])
        #expect(json(again.stdout)["id"] == interruptions.first?["id"])
    }

    @Test func exitCodesTellScriptsWhatWentWrong() async throws {
        let server = try await seededServer()
        defer { server.kill(SIGTERM) }
        // 1: the server refused (404, 409).
        let missing = try await cli(server, ["get", "nodes", "n9"])
        #expect(missing.status == 1)
        #expect(missing.stderr == "spotd: node n9 not found (404): node 'n9' does not exist\n")
        #expect(missing.stdout.isEmpty)
        let cordonMissing = try await cli(server, ["cordon", "n9"])
        #expect(cordonMissing.status == 1)
        #expect(cordonMissing.stderr.contains("node 'n9' does not exist"))
        #expect(try await cli(server, ["drill", "nope", "--count", "1"]).status == 1)
        // 2: usage.
        let flag = try await cli(server, ["get", "nodes", "--bogus"])
        #expect(flag.status == 2)
        #expect(flag.stderr.contains("Unknown option '--bogus'"))
        #expect(try await cli(server, ["get", "widgets"]).status == 2)
        #expect(try await cli(server, ["drill", "spot-a"]).status == 2)
        #expect(try await cli(server, ["status", "-o", "yaml"]).status == 2)
        let url = try await runSpotd(["status"], environment: ["SPOTD_URL": "foo"])
        #expect(url.status == 2)
        #expect(url.stderr == "spotd: SPOTD_URL=foo is not an http(s) URL (e.g. http://127.0.0.1:8080)\n")
        // 3: nothing listens there; said at once, not after retrying to the connect timeout (10 s).
        let closed = freePort()
        let started = ContinuousClock.now
        let unreachable = try await runSpotd(["get", "pools"], environment: ["SPOTD_URL": "http://127.0.0.1:\(closed)"])
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(unreachable.status == 3)
        #expect(
            unreachable.stderr
                == "spotd: cannot reach http://127.0.0.1:\(closed) (connection refused); is spotd serve running? set SPOTD_URL or --url\n")
        // --url overrides SPOTD_URL.
        let overridden = try await runSpotd(
            ["get", "pools", "--url", "http://127.0.0.1:\(server.port)/"], environment: ["SPOTD_URL": "http://127.0.0.1:\(closed)"])
        #expect(overridden.status == 0, "\(overridden.stderr)")
    }

    @Test func authenticationAndPermissionExitFour() async throws {
        let directory = try tempDirectory()
        let admin = "cli-admin-token-0123456789abcdef"
        let server = SpotdProcess(directory: directory, port: freePort(), extra: ["--admin-token", admin])
        try await server.start()
        defer { server.kill(SIGTERM) }
        let none = try await cli(server, ["status"])
        #expect(none.status == 4)
        #expect(none.stderr.hasPrefix("spotd: not authenticated (401): a bearer token is required"), "\(none.stderr)")
        let wrong = try await cli(server, ["status"], environment: ["SPOTD_TOKEN": "not-the-token"])
        #expect(wrong.status == 4)
        #expect(wrong.stderr.contains("the bearer token is unknown or revoked"))
        let viewer = try await runSpotd(["token", "create", "--db", server.dbPath, "--role", "viewer", "--name", "cli-viewer"])
        let secret = try #require(viewer.stdout.split(separator: "\n").first { $0.hasPrefix("token:") }?.split(separator: " ").last)
        #expect(try await cli(server, ["status"], environment: ["SPOTD_TOKEN": String(secret)]).status == 0)
        let forbidden = try await cli(server, ["cordon", "n1"], environment: ["SPOTD_TOKEN": String(secret)])
        #expect(forbidden.status == 4)
        #expect(forbidden.stderr.hasPrefix("spotd: forbidden (403): role viewer may not POST /v1/nodes/n1/cordon"), "\(forbidden.stderr)")
        // --token overrides SPOTD_TOKEN.
        let flag = try await cli(server, ["status", "--token", admin], environment: ["SPOTD_TOKEN": "not-the-token"])
        #expect(flag.status == 0, "\(flag.stderr)")
    }

    @Test func drillDryRunChangesNothingAndARealDrillInterrupts() async throws {
        let server = try await seededServer()
        defer { server.kill(SIGTERM) }
        func eventCount() async throws -> Int { try await server.request("GET", "/v1/events?limit=1000").1["items"]?.array.count ?? -1 }
        let before = try await eventCount()
        let plan = try await cli(server, ["drill", "od", "--count", "1", "--dry-run"])
        #expect(plan.status == 0, "\(plan.stderr)")
        #expect(plan.stdout.hasPrefix("dry run: nothing was changed. A drill of pool od would send 120 s termination notices to: od1\n"))
        #expect(plan.stdout.contains("  od1      p1      premium  8     "), "\(plan.stdout)")
        #expect(try await eventCount() == before)
        #expect(try await server.request("GET", "/v1/interruptions").1["items"]?.array.isEmpty == true)

        let started = try await cli(server, ["drill", "spot-a", "--count", "1", "--notice-seconds", "600"])
        #expect(started.status == 0, "\(started.stderr)")
        let interruptions = try await server.request("GET", "/v1/interruptions").1["items"]?.array ?? []
        #expect(interruptions.count == 1)
        #expect(interruptions.first?["source"] == .string("drill"))
        let drillId = try #require(started.stdout.split(separator: " ").dropFirst().first.map(String.init))
        #expect(started.stdout.hasPrefix("drill \(drillId) started on pool spot-a: 600 s termination notices to "))
        // The list shows it, and its report has its outcome and timeline.
        let list = try await cli(server, ["get", "drills", "-o", "json"])
        #expect(json(list.stdout).array.compactMap { $0["id"]?.string } == [drillId])
        let report = try await cli(server, ["get", "drills", drillId])
        #expect(report.status == 0)
        #expect(report.stdout.contains("\noutcome:\n  gpu_minutes_lost:"), "\(report.stdout)")
        #expect(report.stdout.contains("\ntimeline:\n  AT "), "\(report.stdout)")
        let reportJSON = try await cli(server, ["get", "drills", drillId, "-o", "json"])
        #expect(json(reportJSON.stdout)["id"] == .string(drillId))
    }

    /// Whatever a server answers, the CLI prints what it can or says what is wrong (exit 3); it never traps, and a
    /// server's strings cannot send escape sequences to the terminal.
    @Test func oddAnswersNeverCrashTheCLI() async throws {
        let router = Router()
        router.get("/v1/summary") { _, _ in Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "<html>not json"))) }
        router.get("/v1/pools") { _, _ in
            Response(status: .badGateway, body: .init(byteBuffer: ByteBuffer(string: "<html>502 Bad Gateway</html>\n<p>nginx</p>")))
        }
        router.get("/v1/nodes") { _, _ in
            let body = #"""
                {"items":[{"id":"x\u001b[31m","gpus":1e300,"gpus_allocated":"lots","jobs":{"a":1}},{},[],42,
                {"id":"y","pool":99999999999999999999}],"next_cursor":null}
                """#
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        router.get("/v1/nodes/big") { _, _ in Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: #"{"gpus":1e400}"#))) }
        // Escapes in keys, not only in values: a window title (OSC 0), a colour, a screen clear, a right-to-left mark.
        router.get("/v1/nodes/keys") { _, _ in
            let body = #"{"\u001b]0;PWNED\u0007key":1,"nested":{"\u001b[2Jclear":"x"},"timeline":[{"\u001b[31mstep":"a\u200fb"}]}"#
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        router.get("/v1/jobs") { _, _ in Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: #"{"items":7}"#))) }
        router.get("/v1/services") { _, _ in
            Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: #"{"items":[{"id":"s"}],"next_cursor":"c1"}"#)))
        }
        try await withLoopbackProvisioner(router) { port in
            let env = ["SPOTD_URL": "http://127.0.0.1:\(port)"]
            let summary = try await runSpotd(["status"], environment: env)
            #expect(summary.status == 3)
            #expect(summary.stderr.hasPrefix("spotd: the answer to GET /v1/summary is not valid JSON"), "\(summary.stderr)")
            let pools = try await runSpotd(["get", "pools"], environment: env)
            #expect(pools.status == 3)
            #expect(pools.stderr == "spotd: the server failed to list pools (502): <html>502 Bad Gateway</html>\n")
            let nodes = try await runSpotd(["get", "nodes"], environment: env)
            #expect(nodes.status == 0, "\(nodes.stderr)")
            #expect(
                nodes.stdout == """
                    ID      POOL   TYPE  STATE  GPUS USED/TOTAL  JOBS     INTERRUPTION
                    x?[31m  -      -     -      lots/1e+300      {"a":1}  -
                    -       -      -     -      -/-              -        -
                    -       -      -     -      -/-              -        -
                    -       -      -     -      -/-              -        -
                    y       1e+20  -     -      -/-              -        -

                    """)
            let keys = try await runSpotd(["get", "nodes", "keys"], environment: env)
            #expect(keys.status == 0, "\(keys.stderr)")
            #expect(!keys.stdout.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 || $0.value == 0x200F }, "\(keys.stdout)")
            #expect(keys.stdout.contains("?]0;PWNED?key: 1") && keys.stdout.contains("?[2Jclear: x"), "\(keys.stdout)")
            let big = try await runSpotd(["get", "nodes", "big"], environment: env)
            #expect(big.status == 3)
            #expect(big.stderr.contains("number out of range"))
            #expect(try await runSpotd(["get", "jobs"], environment: env).status == 3)
            // A cursor that does not advance is refused, not followed for ever.
            let services = try await runSpotd(["get", "services", "--page-size", "1", "--limit", "10"], environment: env)
            #expect(services.status == 3)
            #expect(services.stderr.contains("do not advance"), "\(services.stderr)")
        }
    }
}
