import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import Testing

@testable import SpotCore

@Suite("Pools, nodes, jobs, events, summary")
struct ResourceAPITests {
    @Test func poolLifecycle() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            let created = try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-a", "spot"))
            #expect(created.headers[.location] == "/v1/pools/spot-a")
            #expect(created["gpus_per_node"] == .int(8))
            try await client.expectProblem(.conflict, .post, "/v1/pools", Seed.pool("spot-a", "spot"))
            let patched = try await client.expect(.ok, .patch, "/v1/pools/spot-a", #"{"stockout":true,"max_nodes":5}"#)
            #expect(patched["stockout"] == .bool(true))
            #expect(patched["max_nodes"] == .int(5))
            try await client.expectProblem(.badRequest, .patch, "/v1/pools/spot-a", #"{"gpu_type":"A100"}"#, field: "gpu_type")
            try await client.expectProblem(.unprocessableContent, .patch, "/v1/pools/spot-a", #"{"min_nodes":9}"#, field: "min_nodes")
            try await client.expectProblem(.badRequest, .patch, "/v1/pools/spot-a", #"{"stockout":null}"#, field: "stockout")
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("n1", pool: "spot-a"))
            try await client.expectProblem(.conflict, .delete, "/v1/pools/spot-a")
            try await client.expect(.ok, .delete, "/v1/nodes/n1")
            try await client.expect(.noContent, .delete, "/v1/pools/spot-a")
            try await client.expectProblem(.notFound, .get, "/v1/pools/spot-a")
        }
    }

    @Test func badPoolInputIsRefusedAndChangesNothing() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            let before = try env.snapshot()
            let cases: [(String, String?)] = [
                (#"{"name":"ok","capacity_type":"spot"#, nil),
                (
                    #"{"name":"UPPER","capacity_type":"spot","gpu_type":"H100","gpus_per_node":8,"zone":"z","instance_type":"i","hourly_price":1}"#,
                    "name"
                ),
                (
                    #"{"name":"a","capacity_type":"preemptible","gpu_type":"H100","gpus_per_node":8,"zone":"z","instance_type":"i","hourly_price":1}"#,
                    "capacity_type"
                ),
                (
                    #"{"name":"a","capacity_type":"spot","gpu_type":"H100","gpus_per_node":65,"zone":"z","instance_type":"i","hourly_price":1}"#,
                    "gpus_per_node"
                ),
                (
                    #"{"name":"a","capacity_type":"spot","gpu_type":"H100","gpus_per_node":"8","zone":"z","instance_type":"i","hourly_price":1}"#,
                    "gpus_per_node"
                ),
                (
                    #"{"name":"a","capacity_type":"spot","gpu_type":"H100","gpus_per_node":8.5,"zone":"z","instance_type":"i","hourly_price":1}"#,
                    "gpus_per_node"
                ),
                (
                    #"{"name":"a","capacity_type":"spot","gpu_type":"H100","gpus_per_node":8,"zone":"z","instance_type":"i","hourly_price":-1}"#,
                    "hourly_price"
                ),
                (
                    #"{"name":"a","capacity_type":"spot","gpu_type":"H100","gpus_per_node":8,"zone":"z","instance_type":"i","hourly_price":1e400}"#,
                    nil
                ),
                (
                    #"{"name":"a","capacity_type":"spot","gpu_type":"H100","gpus_per_node":8,"zone":"z","instance_type":"i","hourly_price":1,"color":"red"}"#,
                    "color"
                ),
                (
                    #"{"name":"a","capacity_type":"spot","gpu_type":"H100","gpus_per_node":8,"zone":"z","instance_type":"i","hourly_price":1,"stockout":null}"#,
                    "stockout"
                ),
                (#"{"capacity_type":"spot"}"#, "name"),
                ("[]", "body"),
                ("", nil),
                (#"{"name":"\#(String(repeating: "a", count: 70))","capacity_type":"spot"}"#, "name"),
            ]
            for (body, field) in cases {
                try await client.expectProblem(.badRequest, .post, "/v1/pools", body, field: field)
            }
            try await client.expectProblem(.badRequest, .post, "/v1/pools?dry=1", Seed.pool("a", "spot"), field: "query.dry")
            let crossField =
                #"{"name":"a","capacity_type":"spot","gpu_type":"H100","gpus_per_node":8,"zone":"z","instance_type":"i","hourly_price":1,"min_nodes":3,"max_nodes":2}"#
            try await client.expectProblem(.unprocessableContent, .post, "/v1/pools", crossField, field: "min_nodes")
            #expect(try env.snapshot() == before)
        }
    }

    @Test func oversizeAndDeeplyNestedBodies() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            let before = try env.snapshot()
            let big = #"{"name":"a","pad":""# + String(repeating: "x", count: (1 << 20) + 10) + "\"}"
            try await client.expectProblem(.contentTooLarge, .post, "/v1/pools", big)
            let deep = String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000)
            try await client.expectProblem(.badRequest, .post, "/v1/jobs", deep)
            var invalidUTF8 = ByteBuffer(string: #"{"id":""#)
            invalidUTF8.writeBytes([0xFF, 0xFE, 0xC3])
            invalidUTF8.writeString(#"","tier":"premium","gpus":1}"#)
            let status = try await client.execute(
                uri: "/v1/jobs", method: .post, headers: [.contentType: "application/json"], body: invalidUTF8
            ) { $0.status }
            #expect(status == .badRequest)
            // Ambiguous or broken JSON that a lenient parser would accept: refused, naming what is wrong.
            let twice = try await client.expectProblem(
                .badRequest, .post, "/v1/jobs", #"{"id":"a","tier":"best_effort","gpus":1,"tier":"premium"}"#)
            #expect(twice["detail"]?.string?.contains("'tier' twice") == true, "problem: \(twice.text)")
            let surrogate = try await client.expectProblem(
                .badRequest, .post, "/v1/jobs", #"{"id":"a\ud800","tier":"premium","gpus":1}"#)
            #expect(surrogate["detail"]?.string?.contains("surrogate") == true, "problem: \(surrogate.text)")
            let trailing = try await client.expectProblem(
                .badRequest, .post, "/v1/jobs", #"{"id":"a","tier":"premium","gpus":1} {}"#)
            #expect(trailing["detail"]?.string?.contains("end of document") == true, "problem: \(trailing.text)")
            #expect(try env.snapshot() == before)
        }
    }

    @Test func nodesRegisterFilterCordonAndPage() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            for index in 0..<5 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("s\(index)", pool: "spot-a")) }
            try await client.expect(.created, .post, "/v1/nodes", #"{"id":"o1","pool":"od","gpus":4}"#)
            try await client.expectProblem(.conflict, .post, "/v1/nodes", Seed.node("s0", pool: "spot-a"))
            try await client.expectProblem(.unprocessableContent, .post, "/v1/nodes", Seed.node("x", pool: "missing"), field: "pool")
            try await client.expectProblem(.badRequest, .post, "/v1/nodes", #"{"id":"bad id!","pool":"od"}"#, field: "id")

            let onDemand = try await client.expect(.ok, .get, "/v1/nodes?capacity_type=on_demand")
            #expect(onDemand["items"]?.array.map { $0["id"]?.string } == ["o1"])
            #expect(onDemand["items"]?[0]?["gpus"] == .int(4))
            try await client.expectProblem(.badRequest, .get, "/v1/nodes?state=sleeping", field: "query.state")
            try await client.expectProblem(.badRequest, .get, "/v1/nodes?limit=0", field: "query.limit")
            try await client.expectProblem(.badRequest, .get, "/v1/nodes?limit=1001", field: "query.limit")
            try await client.expectProblem(.badRequest, .get, "/v1/nodes?cursor=garbage!", field: "query.cursor")

            var seen: [String] = []
            var cursor: String?
            repeat {
                let page = try await client.expect(.ok, .get, "/v1/nodes?pool=spot-a&limit=2" + (cursor.map { "&cursor=\($0)" } ?? ""))
                seen += page["items"]!.array.compactMap { $0["id"]?.string }
                cursor = page["next_cursor"]?.string
            } while cursor != nil
            #expect(seen == ["s0", "s1", "s2", "s3", "s4"])

            let cordoned = try await client.expect(.ok, .post, "/v1/nodes/s1/cordon")
            #expect(cordoned["schedulable"] == .bool(false))
            #expect(try await client.expect(.ok, .get, "/v1/nodes?state=cordoned")["items"]?.array.count == 1)
            let uncordoned = try await client.expect(.ok, .post, "/v1/nodes/s1/uncordon")
            #expect(uncordoned["state"] == .string("ready"))
            try await client.expectProblem(.notFound, .post, "/v1/nodes/zzz/cordon")
            try await client.expectProblem(.badRequest, .post, "/v1/nodes/s1/cordon", #"{"force":true}"#, field: "force")
        }
    }

    @Test func jobsSubmitReportAndFinish() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("o1", pool: "od"))
            let generated = try await client.expect(.created, .post, "/v1/jobs", #"{"tier":"standard","gpus":2}"#)
            #expect(generated["id"]?.string?.hasPrefix("job-") == true)
            #expect(generated["attempt"] == .int(0))
            try await client.expectProblem(.badRequest, .post, "/v1/jobs", #"{"tier":"gold","gpus":2}"#, field: "tier")
            try await client.expectProblem(.badRequest, .post, "/v1/jobs", #"{"tier":"standard","gpus":0}"#, field: "gpus")
            try await client.expectProblem(
                .badRequest, .post, "/v1/jobs", #"{"tier":"standard","gpus":1,"checkpointable":"yes"}"#, field: "checkpointable")
            try await client.expectProblem(
                .badRequest, .post, "/v1/jobs", #"{"tier":"standard","gpus":1,"priority":99999999999}"#, field: "priority")
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("j1", tier: "premium", gpus: 2))
            try await client.expectProblem(.conflict, .post, "/v1/jobs", Seed.job("j1", tier: "premium", gpus: 2))
            try await client.expectProblem(.conflict, .post, "/v1/jobs/j1/complete")
            try await env.step()
            let running = try await client.expect(.ok, .get, "/v1/jobs/j1")
            #expect(running["state"] == .string("running"))
            #expect(running["attempt"] == .int(1))
            #expect(running["history"]?.array.map { $0["type"]?.string } == ["job.submitted", "job.placed"])
            try await client.expectProblem(.conflict, .post, "/v1/jobs/j1/checkpoints", #"{"uri":"s3://x","step":1,"attempt":7}"#)
            try await client.expect(.ok, .post, "/v1/jobs/j1/checkpoints", #"{"uri":"s3://x","step":5}"#)
            try await client.expectProblem(.conflict, .post, "/v1/jobs/j1/checkpoints", #"{"uri":"s3://x","step":4}"#)
            let completed = try await client.expect(.ok, .post, "/v1/jobs/j1/complete", #"{"attempt":1}"#)
            #expect(completed["state"] == .string("completed"))
            // The generated standard job still holds its 2 GPUs on the same on-demand node.
            #expect(try await env.store.node("o1")?.node.gpusAllocated == 2)
            try await client.expectProblem(.conflict, .post, "/v1/jobs/j1/cancel")
            try await client.expect(.ok, .post, "/v1/jobs/\(generated["id"]!.string!)/cancel", #"{"reason":"not needed"}"#)
            #expect(try await env.store.node("o1")?.node.gpusAllocated == 0)
            let filtered = try await client.expect(.ok, .get, "/v1/jobs?state=completed&tier=premium")
            #expect(filtered["items"]?.array.count == 1)
            try await client.expectProblem(.notFound, .get, "/v1/jobs/nope")
        }
    }

    @Test func eventsSummaryAndOps() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("j", tier: "best_effort", gpus: 3))
            let events = try await client.expect(.ok, .get, "/v1/events")
            let types = events["items"]!.array.compactMap { $0["type"]?.string }
            #expect(types == ["pool.created", "pool.created", "pool.created", "node.registered", "job.submitted"])
            let since = events["items"]![2]!["id"]!.int!
            let later = try await client.expect(.ok, .get, "/v1/events?since=\(since)&limit=1")
            #expect(later["items"]?.array.count == 1)
            #expect(later["next_cursor"]?.string != nil)
            let onlyNodes = try await client.expect(.ok, .get, "/v1/events?type=node.registered")
            #expect(onlyNodes["items"]?.array.count == 1)
            let summary = try await client.expect(.ok, .get, "/v1/summary")
            #expect(summary["jobs"]?["best_effort"]?["queued"] == .int(1))
            #expect(summary["capacity_types"]?["spot"]?["gpus_free"] == .int(8))
            try await client.expect(.ok, .get, "/healthz")
            try await client.expect(.ok, .get, "/readyz")
            let metrics = try await client.expect(.ok, .get, "/metrics")
            #expect(metrics.text.contains("spotd_queue_depth"))
            try await client.expectProblem(.notFound, .get, "/v1/nothing")
            try await client.expectProblem(.methodNotAllowed, .put, "/v1/jobs")
        }
    }
}

@Suite("Raw connections")
struct RawConnectionTests {
    /// A client that starts a request and then goes quiet is disconnected, and its half request changes nothing.
    @Test func idleConnectionIsClosedAndNothingIsStored() async throws {
        let env = try TestEnv { $0.idleTimeoutSeconds = 1 }
        try await env.app().test(.live) { client in
            let socket = try RawSocket(port: try #require(client.port))
            let before = try env.snapshot()
            socket.send(
                "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"tier\"")
            try await Task.sleep(for: .milliseconds(2500))
            // The server has closed the connection: reading reaches end of file within the timeout.
            #expect(await socket.readUntilClosed(timeoutSeconds: 3), "the idle connection should have been closed")
            #expect(try env.snapshot() == before)
        }
    }

    /// `GET /v1/events/stream` sends each event as it is written, as `curl -N` would see it.
    @Test func eventStreamDeliversLiveEvents() async throws {
        let env = try TestEnv()
        try await env.app().test(.live) { client in
            let socket = try RawSocket(port: try #require(client.port))
            socket.send("GET /v1/events/stream HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
            #expect(await socket.read(until: ": spotd event stream", timeoutSeconds: 5).contains("text/event-stream"))
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("live", "spot"))
            let received = await socket.read(until: "event: pool.created", timeoutSeconds: 5)
            #expect(received.contains("event: pool.created"))
            #expect(received.contains("\"subject\":\"pools/live\""))
            // Resuming after an event id replays what came after it; a malformed id is refused.
            let resumed = try RawSocket(port: try #require(client.port))
            resumed.send("GET /v1/events/stream HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: 0\r\n\r\n")
            #expect(await resumed.read(until: "event: pool.created", timeoutSeconds: 5).contains("event: pool.created"))
            try await client.expectProblem(
                .badRequest, .get, "/v1/events/stream", headers: [HTTPField.Name("Last-Event-ID")!: "yesterday"],
                field: "header.Last-Event-ID")
        }
    }
}

/// A plain TCP connection, for what an HTTP client library hides (half requests, endless responses).
final class RawSocket {
    let fd: Int32

    /// Connects to the port on loopback; `receiveBuffer` shrinks the kernel's buffer (a client that reads slowly).
    init(port: Int, receiveBuffer: Int32? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if var size = receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard fd >= 0, connected == 0 else { throw CocoaError(.fileReadUnknown) }
    }

    private var closed = false

    /// Hangs up (once).
    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }

    deinit { close() }

    func send(_ text: String) {
        _ = text.withCString { Glibc.send(fd, $0, strlen($0), 0) }
    }

    /// Reads until `marker` arrives or the time is up; returns all that was read. Never blocks a thread: the server
    /// under test runs on the same cooperative threads as the test.
    func read(until marker: String, timeoutSeconds: Int) async -> String {
        var text = ""
        let deadline = Date().addingTimeInterval(Double(timeoutSeconds))
        var buffer = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline && !text.contains(marker) {
            let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if count > 0 {
                text += String(decoding: buffer[0..<count], as: UTF8.self)
            } else if count == 0 {
                break
            } else {
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
        return text
    }

    /// Whether the peer closes the connection within the time (what it still sends meanwhile is read and dropped).
    func readUntilClosed(timeoutSeconds: Double) async -> Bool {
        await readUntilClosedCounting(timeoutSeconds: timeoutSeconds).closed
    }

    /// Reads until the peer closes or the time is up: whether it closed, and how many bytes came first.
    func readUntilClosedCounting(timeoutSeconds: Double) async -> (closed: Bool, bytes: Int) {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        var buffer = [UInt8](repeating: 0, count: 65_536)
        var total = 0
        while Date() < deadline {
            let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if count == 0 { return (true, total) }
            if count < 0 && errno != EAGAIN && errno != EWOULDBLOCK { return (true, total) }
            if count > 0 { total += count } else { try? await Task.sleep(for: .milliseconds(10)) }
        }
        return (false, total)
    }
}
