import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import Testing

@testable import SpotCore

/// Headers of a notice signed with `secret` at `timestamp`.
func signedHeaders(_ body: String, secret: String, timestamp: String) -> HTTPFields {
    [
        HTTPField.Name("X-Spotd-Timestamp")!: timestamp,
        HTTPField.Name("X-Spotd-Signature")!: "sha256=" + Signature.hex(secret: secret, timestamp: timestamp, body: Data(body.utf8)),
    ]
}

@Suite("Hardening: every input is checked before use")
struct InputHardeningTests {
    static let secret = "whsec-hardening-0123456789"

    /// A signed notice's timestamp is plain decimal digits: any other spelling is 401 and stores nothing, and no
    /// value can make the skew arithmetic trap (Int64.min used to stop the process).
    @Test func signatureTimestampsAreStrictAndCannotTrap() async throws {
        let env = try TestEnv { $0.webhookSecret = Self.secret }
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-a", "spot"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            let body = #"{"node_id":"s1","kind":"termination","event_id":"ts-1"}"#
            let now = env.clock.now() / 1000
            let before = try env.snapshot()
            for timestamp in [
                "-9223372036854775808", "-9223372036854774000", "9223372036854775807", "99999999999999999999", "+\(now)",
                "0\(now)", "\(now).0", "1e9", "", "-\(now)", "\(now)0000000000",
            ] {
                for route in ["/v1/interruptions", "/v1/interruptions/aws", "/v1/interruptions/gcp", "/v1/interruptions/azure"] {
                    let reply = try await client.expectProblem(
                        .unauthorized, .post, route, body, headers: signedHeaders(body, secret: Self.secret, timestamp: timestamp))
                    #expect(reply["detail"]?.string?.contains("X-Spotd-Timestamp") == true, "\(timestamp): \(reply.text)")
                }
            }
            // HTTP trims a field's surrounding spaces, so these arrive as plain digits: the signature (made over the
            // spaced text) is what fails.
            for timestamp in [" \(now)", "\(now) "] {
                try await client.expectProblem(
                    .unauthorized, .post, "/v1/interruptions", body, headers: signedHeaders(body, secret: Self.secret, timestamp: timestamp)
                )
            }
            #expect(try env.snapshot() == before)
            try await client.expect(
                .accepted, .post, "/v1/interruptions", body, headers: signedHeaders(body, secret: Self.secret, timestamp: "\(now)"))
        }
        #expect(StrictInteger.parse("-9223372036854775808", signed: true) == nil)
        #expect(StrictInteger.parse("999999999999999999") == 999_999_999_999_999_999)
        #expect(StrictInteger.parse("0") == 0)
        #expect(StrictInteger.parse("-0", signed: true) == nil)
        #expect(StrictInteger.parse("-12", signed: true) == -12)
        #expect(StrictInteger.parse("-12") == nil)
    }

    /// A signed notice counts once: the same (timestamp, signature) again records nothing and answers 200 with the
    /// first record, even for a generic notice without an event id (which used to make a new record each time).
    @Test func signedNoticeReplayCountsOnce() async throws {
        let env = try TestEnv { $0.webhookSecret = Self.secret }
        try await env.app().test(.router) { client in
            let timestamp = "\(env.clock.now() / 1000)"
            let body = #"{"node_id":"ghost","kind":"termination"}"#
            let headers = signedHeaders(body, secret: Self.secret, timestamp: timestamp)
            let first = try await client.expect(.accepted, .post, "/v1/interruptions", body, headers: headers)
            let afterFirst = try env.snapshot()
            for _ in 0..<2 {
                let again = try await client.expect(.ok, .post, "/v1/interruptions", body, headers: headers)
                #expect(again["id"] == first["id"])
            }
            #expect(try env.snapshot() == afterFirst)
            #expect(try env.count("interruptions") == 1)
            // A new timestamp is a new request (the sender meant it): recorded again, as unmatched notices are.
            let later = "\(env.clock.now() / 1000 + 1)"
            try await client.expect(
                .accepted, .post, "/v1/interruptions", body, headers: signedHeaders(body, secret: Self.secret, timestamp: later))
            #expect(try env.count("interruptions") == 2)

            // An Azure document: the replay answers the same records, 200, and writes no `interruption.ignored` again.
            let azure = try filled("azure-preempt.json", now: env.clock.now(), instances: ["vm-a", "vm-b", "vm-c"])
            let azureHeaders = signedHeaders(azure, secret: Self.secret, timestamp: timestamp)
            let firstAzure = try await client.expect(.accepted, .post, "/v1/interruptions/azure", azure, headers: azureHeaders)
            let afterAzure = try env.snapshot()
            let replayed = try await client.expect(.ok, .post, "/v1/interruptions/azure", azure, headers: azureHeaders)
            #expect(replayed["items"]?.array.compactMap { $0["id"]?.string } == firstAzure["items"]?.array.compactMap { $0["id"]?.string })
            #expect(try env.snapshot() == afterAzure)
        }
    }

    /// The same signed body sent to another endpoint is not a replay of the first: each endpoint reads it as its own
    /// (a body can be a valid Azure document and a valid GCP notice at once), and nothing traps.
    @Test func aSignedBodyReplayedToAnotherEndpointIsReadThere() async throws {
        let env = try TestEnv { $0.webhookSecret = Self.secret }
        try await env.app().test(.router) { client in
            let body = #"{"DocumentIncarnation":1,"Events":[],"instance_name":"gpu-x","preempted":true}"#
            let headers = signedHeaders(body, secret: Self.secret, timestamp: "\(env.clock.now() / 1000)")
            let azure = try await client.expect(.ok, .post, "/v1/interruptions/azure", body, headers: headers)
            #expect(azure["items"]?.array.isEmpty == true)
            let gcp = try await client.expect(.accepted, .post, "/v1/interruptions/gcp", body, headers: headers)
            #expect(gcp["node_id"] == .string("gpu-x"))
            try await client.expect(.ok, .post, "/v1/interruptions/gcp", body, headers: headers)
            try await client.expect(.ok, .post, "/v1/interruptions/azure", body, headers: headers)
            #expect(try env.count("interruptions") == 1)
        }
    }

    /// Ids that go into paths can always be addressed again; no string holds a control character.
    @Test func idsStayAddressableAndStringsHoldNoControlCharacters() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od", "on_demand"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("o1", pool: "od"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("j1", tier: "premium"))
            let before = try env.snapshot()
            try await client.expectProblem(.badRequest, .post, "/v1/jobs", #"{"id":"j/1","tier":"premium","gpus":1}"#, field: "id")
            try await client.expectProblem(.badRequest, .post, "/v1/jobs", #"{"id":"j\u00001","tier":"premium","gpus":1}"#, field: "id")
            try await client.expectProblem(.badRequest, .post, "/v1/jobs", #"{"id":"j 1","tier":"premium","gpus":1}"#, field: "id")
            try await client.expectProblem(.badRequest, .post, "/v1/nodes", #"{"id":"i-1/..","pool":"od"}"#, field: "id")
            try await client.expectProblem(
                .badRequest, .post, "/v1/interruptions", #"{"node_id":"a/b","kind":"termination"}"#, field: "node_id")
            try await client.expectProblem(
                .badRequest, .post, "/v1/interruptions", #"{"node_id":"o1","kind":"termination","event_id":"e\u0000"}"#, field: "event_id")
            try await client.expectProblem(.badRequest, .post, "/v1/jobs/j1/cancel", #"{"reason":"done\u0000 really"}"#, field: "reason")
            try await client.expectProblem(.badRequest, .post, "/v1/jobs/j1/cancel", #"{"reason":"bell\u0007"}"#, field: "reason")
            try await client.expectProblem(.badRequest, .post, "/v1/jobs/j1/cancel", #"{"reason":"c1\u0085"}"#, field: "reason")
            #expect(try env.snapshot() == before)
            // Underscores (Azure VM names) are ids too.
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("vm_gpu_1", pool: "od"))
            try await client.expect(.ok, .get, "/v1/nodes/vm_gpu_1")
        }
    }

    /// Ids are found however a client encodes them in the path (`encodeURIComponent` writes `:` as `%3A`).
    @Test func percentEncodedPathIdsAreFound() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od", "on_demand"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("zone:a:vm_1", pool: "od"))
            let node = try await client.expect(.ok, .get, "/v1/nodes/zone%3Aa%3Avm_1")
            #expect(node["id"] == .string("zone:a:vm_1"))
            try await client.expectProblem(.notFound, .get, "/v1/nodes/zone%2Fa")
        }
    }

    @Test func tokenNamesAreUniqueAndNeverASystemActor() async throws {
        let env = try TestEnv { $0.adminToken = AuthTests.admin }
        let admin: HTTPFields = [.authorization: "Bearer \(AuthTests.admin)"]
        try await env.app().test(.router) { client in
            let created = try await client.expect(.created, .post, "/v1/tokens", #"{"name":"ci","role":"viewer"}"#, headers: admin)
            let before = try env.snapshot()
            try await client.expectProblem(.conflict, .post, "/v1/tokens", #"{"name":"ci","role":"operator"}"#, headers: admin)
            try await client.expectProblem(.conflict, .post, "/v1/tokens", #"{"name":"CI","role":"operator"}"#, headers: admin)
            for name in ["worker", "admin", "Anonymous", "autoscaler", "provisioner", "drill", "scheduler-loop"] {
                try await client.expectProblem(
                    .unprocessableContent, .post, "/v1/tokens", #"{"name":"\#(name)","role":"viewer"}"#, headers: admin, field: "name")
            }
            #expect(try env.snapshot() == before)
            // A revoked token's name is not reused either: the event log names actors by it.
            try await client.expect(.noContent, .delete, "/v1/tokens/\(created["id"]!.string!)", headers: admin)
            try await client.expectProblem(.conflict, .post, "/v1/tokens", #"{"name":"ci","role":"viewer"}"#, headers: admin)
        }
        #expect(TokenName.check("worker") != nil)
        #expect(TokenName.check("a/b") != nil)
        #expect(TokenName.check("grafana") == nil)
    }

    /// Numbers from every place are read exactly and range-checked; times are integer milliseconds.
    @Test func numbersAndTimesAreExact() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-a", "spot"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s2", pool: "spot-a"))
            // A deadline's milliseconds are kept exactly (`.035` used to come back as `.034`).
            let notice = try await client.expect(
                .accepted, .post, "/v1/interruptions", #"{"node_id":"s2","kind":"termination","deadline":"2027-01-15T08:00:51.035Z"}"#)
            #expect(notice["deadline"] == .string("2027-01-15T08:00:51.035Z"))
            // A whole number written with a fraction is a whole number: 2^53 is a valid step.
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("j", tier: "best_effort", checkpointable: true))
            try await env.step()
            let step = try await client.expect(.ok, .post, "/v1/jobs/j/checkpoints", #"{"uri":"s3://c/1","step":9007199254740992.0}"#)
            #expect(step["last_checkpoint"]?["step"] == .int(9_007_199_254_740_992))
            try await client.expectProblem(.badRequest, .post, "/v1/jobs/j/checkpoints", #"{"uri":"s3://c/1","step":9007199254740993}"#)
            try await client.expectProblem(.badRequest, .post, "/v1/jobs/j/checkpoints", #"{"uri":"s3://c/1","step":1e300}"#, field: "step")
            // Azure's NotBefore is RFC 1123 exactly; GCP's preempted is a boolean or TRUE/FALSE: other spellings are 400.
            let before = try env.snapshot()
            // The shape (and days the month never has) is the schema's: 400. A day that only this year lacks, or a
            // weekday the date does not fall on, is a rule beyond the schema: 422.
            for (notBefore, status) in [
                ("Mon, 30 Nov 2026 -1:-1:-1 GMT", HTTPResponse.Status.badRequest), ("Mon, 31 Feb 2026 10:00:00 GMT", .badRequest),
                ("Tue, 30 Nov 2026 10:00:00 GMT", .unprocessableContent), ("Sun, 29 Feb 2026 10:00:00 GMT", .unprocessableContent),
            ] {
                try await client.expectProblem(
                    status, .post, "/v1/interruptions/azure",
                    #"{"DocumentIncarnation":1,"Events":[{"EventId":"x","EventType":"Preempt","Resources":["s1"],"NotBefore":"\#(notBefore)"}]}"#,
                    field: "Events[0].NotBefore")
            }
            try await client.expectProblem(
                .badRequest, .post, "/v1/interruptions/gcp", #"{"instance_name":"s1","preempted":"yes"}"#, field: "preempted")
            // Cursors are exactly what openapi.yaml's pattern says.
            for cursor in ["c%2B1", "c+1", "cG", "C1", "c", "c-1", "c0000000000000000", "c%201"] {
                try await client.expectProblem(.badRequest, .get, "/v1/jobs?cursor=\(cursor)", field: "query.cursor")
            }
            for limit in ["+5", "05", "5.0", "-0", "1e2", "9223372036854775808"] {
                try await client.expectProblem(.badRequest, .get, "/v1/jobs?limit=\(limit)", field: "query.limit")
            }
            try await client.expect(.ok, .get, "/v1/jobs?cursor=c0&limit=5")
            #expect(try env.snapshot() == before)
        }
    }

    /// The summary counts as free only GPUs a job could land on: not those of cordoned or drained nodes.
    @Test func summaryCountsFreeGPUsOfReadyNodesOnly() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-a", "spot"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s2", pool: "spot-a"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s3", pool: "spot-a"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("j", tier: "best_effort", gpus: 3))
            try await env.step()
            try await client.expect(.ok, .post, "/v1/nodes/s2/cordon")
            try await client.expect(.accepted, .post, "/v1/interruptions", #"{"node_id":"s3","kind":"termination","notice_seconds":60}"#)
            try await env.step()
            #expect(try await env.store.node("s3")?.node.state == .drained)
            let summary = try await client.expect(.ok, .get, "/v1/summary")
            // s1 is the only ready node: 8 GPUs, 3 of them taken.
            #expect(summary["pools"]?[0]?["gpus_free"] == .int(5))
            #expect(summary["capacity_types"]?["spot"]?["gpus_free"] == .int(5))
            #expect(summary["pools"]?[0]?["gpus_total"] == .int(24))
        }
    }

    /// Every requeue counts in `spotd_requeues_total`, whichever path requeued the job; read from this server's own
    /// registry, which no other test fills.
    @Test func everyRequeuePathIsCounted() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            for node in ["s1", "s2"] { try await client.expect(.created, .post, "/v1/nodes", Seed.node(node, pool: "spot-a")) }
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("ckpt", tier: "best_effort", gpus: 8, checkpointable: true))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("plain", tier: "best_effort", gpus: 8))
            try await env.step()
            func requeues() async throws -> String? {
                let text = try await client.expect(.ok, .get, "/metrics").text
                return text.split(separator: "\n").first { $0.hasPrefix("spotd_requeues_total ") }.map {
                    String($0.split(separator: " ")[1])
                }
            }
            #expect(try await requeues() == "0")
            try await client.expect(.accepted, .post, "/v1/interruptions", #"{"node_id":"s1","kind":"termination","notice_seconds":60}"#)
            try await client.expect(.accepted, .post, "/v1/interruptions", #"{"node_id":"s2","kind":"termination","notice_seconds":60}"#)
            try await env.step()
            // The uncheckpointable job was requeued by the drain: 1.
            #expect(try await requeues() == "1")
            // The checkpoint report requeues the other one: 2 (this path used to go uncounted).
            try await client.expect(.ok, .post, "/v1/jobs/ckpt/checkpoints", #"{"uri":"s3://c/1","step":1}"#)
            #expect(try await requeues() == "2")
            #expect(env.runtime.metrics.render(.init()).contains(#"spotd_events_total{type="job.requeued"} 2"#))
        }
    }
}

@Suite("Retention")
struct RetentionTests {
    /// Finished records and events older than the window go; live ones stay, whatever their age.
    @Test func removesOnlyFinishedRecordsPastTheWindow() async throws {
        let env = try TestEnv { $0.retentionDays = 30 }
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("o1", pool: "od"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("gone", pool: "od"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("done", tier: "premium"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("live", tier: "premium"))
            try await env.step()
            try await client.expect(.ok, .post, "/v1/jobs/done/complete")
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("waiting", tier: "premium", gpus: 64))
            try await client.expect(.accepted, .post, "/v1/interruptions", #"{"node_id":"nobody","kind":"termination"}"#)
            try await client.expect(.ok, .delete, "/v1/nodes/gone")
            // A service scaled down: its surplus replica (never ready) is gone at once, the other stays.
            try await client.expect(.created, .post, "/v1/services", #"{"id":"svc","tier":"premium","replicas":2,"gpus_per_replica":1}"#)
            try await env.step()
            try await client.expect(.ok, .patch, "/v1/services/svc", #"{"replicas":1}"#)
            try await env.step()
            #expect(try env.count("service_replicas") == 2)
            // A node given back (its pool emptied): released, acknowledged, terminated.
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("spare", pool: "spot-a"))
            try await client.expect(.ok, .patch, "/v1/pools/spot-a", #"{"max_nodes":0}"#)
            try await env.advance(601)
            try await env.advance(1)
            #expect(try await client.expect(.ok, .get, "/v1/nodes/spare")["state"] == .string("terminated"))
            #expect(try env.count("node_releases") == 1)
            let retention = Retention(store: env.store, days: 30, batch: 2)

            // Inside the window nothing goes.
            env.clock.advance(seconds: 29 * 86_400)
            #expect(try await retention.run(now: env.clock.now(), lease: try await env.lease(), logger: .init(label: "test")).total == 0)

            env.clock.advance(seconds: 2 * 86_400)
            try await client.expect(.ok, .post, "/v1/nodes/o1/cordon")
            let eventsBefore = try env.count("events")
            let removed = try await retention.run(now: env.clock.now(), lease: try await env.lease(), logger: .init(label: "test"))
            #expect(removed.jobs == 1)
            #expect(removed.interruptions == 1)
            #expect(removed.nodes == 2)
            #expect(removed.replicas == 1)
            #expect(removed.releases == 2, "the acknowledged release and the simulated cloud's released instance")
            #expect(try env.count("node_releases") == 0)
            #expect(try env.count("service_replicas") == 1)
            #expect(removed.events == eventsBefore - 1)
            #expect(try await env.store.job("done") == nil)
            #expect(try await env.store.job("live")?.0.state == .running)
            #expect(try await env.store.job("waiting")?.0.state == .queued)
            #expect(try await env.store.node("o1") != nil)
            #expect(try await env.store.node("gone") == nil)
            #expect(try env.count("interruptions") == 0)
            // The event written inside the window stays.
            let events = try await client.expect(.ok, .get, "/v1/events")
            #expect(events["items"]?.array.map { $0["type"]?.string } == ["node.cordoned"])
        }
    }

    /// An interruption whose replacement request still exists goes after that request (the foreign key), not before.
    @Test func interruptionsGoAfterTheirProvisioningRequests() async throws {
        let env = try TestEnv { $0.simBootSeconds = 1 }
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            try await client.expect(.accepted, .post, "/v1/interruptions", #"{"node_id":"s1","kind":"termination","notice_seconds":5}"#)
            try await env.step()
            try await env.advance(2)
            try await env.advance(10)
            #expect(try await client.call(.get, "/v1/interruptions?state=completed")["items"]?.array.count == 1)
            #expect(try env.count("provisioning_requests") == 1)
            env.clock.advance(seconds: 31 * 86_400)
            let removed = try await Retention(store: env.store, days: 30).run(
                now: env.clock.now(), lease: try await env.lease(), logger: .init(label: "test"))
            #expect(removed.provisioningRequests == 1 && removed.interruptions == 1, "\(removed)")
            #expect(try env.count("interruptions") == 0)
            #expect(try env.count("interruption_steps") == 0)
        }
    }

    /// Replay records outlive the longest time a replay could still be taken (10 minutes), then go.
    @Test func replayRecordsGoAfterTenMinutes() async throws {
        let env = try TestEnv { $0.webhookSecret = InputHardeningTests.secret }
        try await env.app().test(.router) { client in
            let body = #"{"node_id":"ghost","kind":"rebalance"}"#
            try await client.expect(
                .accepted, .post, "/v1/interruptions", body,
                headers: signedHeaders(body, secret: InputHardeningTests.secret, timestamp: "\(env.clock.now() / 1000)"))
            let retention = Retention(store: env.store, days: 30)
            env.clock.advance(seconds: 659)
            #expect(try await retention.run(now: env.clock.now(), lease: try await env.lease(), logger: .init(label: "test")).replays == 0)
            env.clock.advance(seconds: 2)
            #expect(try await retention.run(now: env.clock.now(), lease: try await env.lease(), logger: .init(label: "test")).replays == 1)
        }
    }
}

@Suite("Limits that keep one client from hurting the others", .serialized)
struct ClientIsolationTests {
    /// Polls until `check` holds or `seconds` pass.
    func eventually(_ seconds: Double = 5, _ check: () async throws -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try await check() { return true }
            try await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    @Test func malformedChunkedBodyIs400() async throws {
        let env = try TestEnv()
        try await env.app().test(.live) { client in
            let before = try env.snapshot()
            let socket = try RawSocket(port: try #require(client.port))
            socket.send(
                "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
            )
            let answer = await socket.read(until: "}", timeoutSeconds: 5)
            #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
            #expect(answer.contains("application/problem+json"), "\(answer)")
            #expect(try env.snapshot() == before)
        }
    }

    /// Bodies held at once are capped over all requests: past the cap a request gets 503 and changes nothing; the
    /// bytes come back as soon as their request is answered or its client goes.
    @Test func bufferedBodiesHaveATotalCap() async throws {
        let env = try TestEnv { $0.maxBufferedBodyMiB = 1 }
        let budget = env.runtime.bodyBudget
        try await env.app().test(.live) { client in
            let port = try #require(client.port)
            let slow = try RawSocket(port: port)
            slow.send("POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
            slow.send(#"{"id":""# + String(repeating: "a", count: 700_000))
            #expect(try await eventually { budget.inUse >= 700_000 }, "the slow body was not held: \(budget.inUse)")
            let before = try env.snapshot()
            let big = #"{"tier":"premium","gpus":1,"id":""# + String(repeating: "b", count: 600_000) + #""}"#
            let refused = try await client.expectProblem(.serviceUnavailable, .post, "/v1/jobs", big)
            #expect(refused.headers[.retryAfter] == "1")
            #expect(try env.snapshot() == before)
            // The slow sender goes away: its bytes are given back at once.
            slow.close()
            #expect(try await eventually { budget.inUse == 0 }, "still held: \(budget.inUse)")
            try await client.expectProblem(.badRequest, .post, "/v1/jobs", big, field: "id")
            #expect(budget.inUse == 0)
        }
    }

    /// A body that trickles in past the deadline gets 408; a sender that stops mid-body is disconnected.
    @Test func bodiesMustArriveWholeInTime() async throws {
        let env = try TestEnv { $0.bodyTimeoutSeconds = 1 }
        try await env.app().test(.live) { client in
            let port = try #require(client.port)
            let before = try env.snapshot()
            let trickle = try RawSocket(port: port)
            trickle.send(
                "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"tier\"")
            // Half a second past the deadline, half a second before the connection-level backstop.
            try await Task.sleep(for: .milliseconds(1500))
            trickle.send(":\"premium\"")
            let answer = await trickle.read(until: "}", timeoutSeconds: 5)
            #expect(answer.hasPrefix("HTTP/1.1 408"), "\(answer)")
            #expect(answer.lowercased().contains("connection: close"), "\(answer)")

            let stalled = try RawSocket(port: port)
            let started = Date()
            stalled.send(
                "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"tier\"")
            #expect(await stalled.readUntilClosed(timeoutSeconds: 5), "the stalled connection stayed open")
            // Closed by the backstop a second after the deadline, long before the 60 s idle timeout.
            #expect(Date().timeIntervalSince(started) < 4)
            #expect(try env.snapshot() == before)
        }
    }

    /// Streams are capped (503 past the cap), and a stream's slot is free as soon as its client hangs up.
    @Test func eventStreamsAreCappedAndFreedWhenTheirClientGoes() async throws {
        let env = try TestEnv { $0.maxEventStreams = 2 }
        let feed = env.runtime.feed
        try await env.app().test(.live) { client in
            let port = try #require(client.port)
            func open() async throws -> (RawSocket, String) {
                let socket = try RawSocket(port: port)
                socket.send("GET /v1/events/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
                return (socket, await socket.read(until: "\n\r\n", timeoutSeconds: 5))
            }
            let (first, firstAnswer) = try await open()
            let (second, secondAnswer) = try await open()
            #expect(firstAnswer.hasPrefix("HTTP/1.1 200") && secondAnswer.hasPrefix("HTTP/1.1 200"))
            #expect(feed.count == 2)
            let (third, thirdAnswer) = try await open()
            #expect(thirdAnswer.hasPrefix("HTTP/1.1 503"), "\(thirdAnswer)")
            _ = third
            first.close()
            #expect(try await eventually(2) { feed.count == 1 }, "the closed stream kept its slot")
            let (fourth, fourthAnswer) = try await open()
            #expect(fourthAnswer.hasPrefix("HTTP/1.1 200"), "\(fourthAnswer)")
            // Both live streams get the same event from the one shared reader.
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("live", "spot"))
            #expect(await second.read(until: "event: pool.created", timeoutSeconds: 5).contains("pools/live"))
            #expect(await fourth.read(until: "event: pool.created", timeoutSeconds: 5).contains("pools/live"))
            second.close()
            fourth.close()
            #expect(try await eventually(2) { feed.count == 0 })
        }
    }

    /// Writes `count` events straight into the store (fast), so that a stream from `since=0` has much to send.
    func seedEvents(_ env: TestEnv, count: Int) async throws {
        try await env.store.write { db in
            for index in 0..<count {
                try db.appendEvent(
                    "test.filler", subject: "filler/\(index)", actor: "test", at: 0,
                    data: ["padding": .string(String(repeating: "x", count: 200))])
            }
        }
    }

    /// A client that opens streams and never reads keeps its slot only while the server can write to it: once a
    /// write has waited `streamStallSeconds`, the connection is cut and the slot is free. The cap holds meanwhile:
    /// a slot is held until the response is over, however the stream ended.
    @Test func streamsThatDoNotReadAreCutOffAndTheCapHolds() async throws {
        let env = try TestEnv {
            $0.maxEventStreams = 2
            $0.streamStallSeconds = 1
        }
        try await seedEvents(env, count: 20_000)
        let feed = env.runtime.feed
        try await env.app().test(.live) { client in
            let port = try #require(client.port)
            var silent: [RawSocket] = []
            for _ in 0..<2 {
                let socket = try RawSocket(port: port, receiveBuffer: 4096)
                socket.send("GET /v1/events/stream?since=0 HTTP/1.1\r\nHost: localhost\r\n\r\n")
                silent.append(socket)
            }
            #expect(try await eventually { feed.count == 2 })
            // Full: a third is refused while the two silent ones are held, however far behind they are.
            let third = try RawSocket(port: port)
            third.send("GET /v1/events/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
            #expect(await third.read(until: "\r\n\r\n", timeoutSeconds: 5).hasPrefix("HTTP/1.1 503"))
            // The silent clients are cut off after their stalled write, and their slots come back.
            #expect(try await eventually(8) { feed.count == 0 }, "the silent streams kept their slots")
            for socket in silent { #expect(await socket.readUntilClosed(timeoutSeconds: 5)) }
            let fresh = try RawSocket(port: port)
            fresh.send("GET /v1/events/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
            #expect(await fresh.read(until: ": spotd event stream", timeoutSeconds: 5).hasPrefix("HTTP/1.1 200"))
        }
    }

    /// Revoking a token ends its streams at once, also a stream whose client reads slowly with much left to send:
    /// nothing already prepared keeps flowing after the revocation.
    @Test func revokedTokensSlowStreamIsCutAtOnce() async throws {
        let env = try TestEnv { $0.adminToken = AuthTests.admin }
        let admin: HTTPFields = [.authorization: "Bearer \(AuthTests.admin)"]
        try await seedEvents(env, count: 20_000)
        try await env.app().test(.live) { client in
            let created = try await client.expect(.created, .post, "/v1/tokens", #"{"name":"slow","role":"viewer"}"#, headers: admin)
            let secret = try #require(created["token"]?.string)
            let stream = try RawSocket(port: try #require(client.port), receiveBuffer: 4096)
            stream.send("GET /v1/events/stream?since=0 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \(secret)\r\n\r\n")
            #expect(await stream.read(until: "event: test.filler", timeoutSeconds: 5).hasPrefix("HTTP/1.1 200"))
            try await client.expect(.noContent, .delete, "/v1/tokens/\(created["id"]!.string!)", headers: admin)
            let (closed, bytes) = await stream.readUntilClosedCounting(timeoutSeconds: 3)
            #expect(closed, "the revoked token's stream is still open")
            // What was already in flight (kernel buffers, one page) may arrive; the 5 MB still to send may not.
            #expect(bytes < 1_000_000, "\(bytes) bytes arrived after the revocation")
        }
    }

    /// Open connections are capped: past the cap a new one is closed at once, and a freed one lets the next in.
    @Test func connectionsAreCapped() async throws {
        let env = try TestEnv { $0.maxConnections = 3 }
        try await env.app().test(.live) { client in
            try await client.expect(.ok, .get, "/healthz")  // the test client's own connection: 1
            let port = try #require(client.port)
            let held = try (0..<2).map { _ in try RawSocket(port: port) }
            #expect(try await eventually { env.runtime.connections.count == 3 })
            let refused = try RawSocket(port: port)
            #expect(await refused.readUntilClosed(timeoutSeconds: 2), "a connection past the cap stayed open")
            held[0].close()
            #expect(try await eventually { env.runtime.connections.count == 2 })
            let next = try RawSocket(port: port)
            next.send("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            #expect(await next.read(until: "}", timeoutSeconds: 5).hasPrefix("HTTP/1.1 200"))
        }
    }

    /// A quarter of the body budget is kept for interruption notices: clients of other routes holding bodies
    /// cannot keep a notice out.
    @Test func noticesKeepAShareOfTheBodyBudget() async throws {
        let env = try TestEnv { $0.maxBufferedBodyMiB = 1 }
        let budget = env.runtime.bodyBudget
        try await env.app().test(.live) { client in
            let slow = try RawSocket(port: try #require(client.port))
            slow.send("POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
            slow.send(#"{"id":""# + String(repeating: "a", count: 700_000))
            #expect(try await eventually { budget.inUse >= 700_000 })
            let padding = String(repeating: "p", count: 150_000)
            // A job body that would pass the non-notice share is refused...
            try await client.expectProblem(.serviceUnavailable, .post, "/v1/jobs", #"{"tier":"premium","gpus":1,"id":"\#(padding)"}"#)
            // ...a notice of the same size is still read (and then refused for its unknown field, not for the budget).
            let big = try await client.call(.post, "/v1/interruptions", #"{"node_id":"ghost","kind":"rebalance","pad":"\#(padding)"}"#)
            #expect(big.status == .badRequest && big.text.contains("pad"), "\(big.text)")
        }
    }

    /// A stream of one event type is not held up by a burst of other types ahead of its next event.
    @Test func aTypedStreamLooksPastOtherTypes() async throws {
        let env = try TestEnv()
        try await env.app().test(.live) { client in
            let port = try #require(client.port)
            let stream = try RawSocket(port: port)
            stream.send("GET /v1/events/stream?type=pool.created HTTP/1.1\r\nHost: localhost\r\n\r\n")
            #expect(await stream.read(until: ": spotd event stream", timeoutSeconds: 5).hasPrefix("HTTP/1.1 200"))
            try await seedEvents(env, count: 3000)
            env.runtime.feed.poke()
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("after-burst", "spot"))
            let started = Date()
            let received = await stream.read(until: "pools/after-burst", timeoutSeconds: 10)
            #expect(received.contains("pools/after-burst"))
            #expect(!received.contains("test.filler"))
            // Well before a keep-alive interval (15 s) would have let it look at the next page.
            #expect(Date().timeIntervalSince(started) < 5)
        }
    }

    /// Revoking a token ends its open streams at once.
    @Test func revokedTokensStreamEndsAtOnce() async throws {
        let env = try TestEnv { $0.adminToken = AuthTests.admin }
        let admin: HTTPFields = [.authorization: "Bearer \(AuthTests.admin)"]
        try await env.app().test(.live) { client in
            let created = try await client.expect(.created, .post, "/v1/tokens", #"{"name":"dash","role":"viewer"}"#, headers: admin)
            let secret = try #require(created["token"]?.string)
            let other = try await client.expect(.created, .post, "/v1/tokens", #"{"name":"dash2","role":"viewer"}"#, headers: admin)
            let port = try #require(client.port)
            let stream = try RawSocket(port: port)
            stream.send("GET /v1/events/stream HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \(secret)\r\n\r\n")
            #expect(await stream.read(until: ": spotd event stream", timeoutSeconds: 5).hasPrefix("HTTP/1.1 200"))
            let kept = try RawSocket(port: port)
            kept.send("GET /v1/events/stream HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \(other["token"]!.string!)\r\n\r\n")
            #expect(await kept.read(until: ": spotd event stream", timeoutSeconds: 5).hasPrefix("HTTP/1.1 200"))
            let started = Date()
            try await client.expect(.noContent, .delete, "/v1/tokens/\(created["id"]!.string!)", headers: admin)
            #expect(await stream.readUntilClosed(timeoutSeconds: 3), "the revoked token's stream is still open")
            #expect(Date().timeIntervalSince(started) < 1.5)
            #expect(try await eventually { env.runtime.feed.count == 1 })
        }
    }
}
