import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Synchronization
import Testing

@testable import SpotCore

@Suite("Replacement capacity")
struct ProvisioningTests {
    /// The reference scenario of the spec, scaled to the test: 20 spot nodes of best-effort work, premium on on-demand,
    /// 5 spot nodes reclaimed at once through AWS notices.
    @Test func referenceScenarioThroughHTTP() async throws {
        let env = try TestEnv { $0.simBootSeconds = 5 }
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            for index in 0..<20 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("spot-\(index)", pool: "spot-a")) }
            for index in 0..<2 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("od-\(index)", pool: "od")) }
            for index in 0..<40 {
                try await client.expect(
                    .created, .post, "/v1/jobs", Seed.job("be-\(index)", tier: "best_effort", gpus: 4, checkpointable: index % 2 == 0))
            }
            for index in 0..<4 { try await client.expect(.created, .post, "/v1/jobs", Seed.job("prem-\(index)", tier: "premium", gpus: 4)) }
            try await env.step()
            let premiumBefore = try await client.call(.get, "/v1/jobs?tier=premium&state=running")
            #expect(premiumBefore["items"]?.array.count == 4)

            let reclaimed = (0..<5).map { "spot-\($0)" }
            for node in reclaimed {
                let reply = try await client.expect(
                    .accepted, .post, "/v1/interruptions/aws",
                    try filled("aws-spot-interruption.json", now: env.clock.now(), instances: [node])
                        .replacingOccurrences(of: "12345678-1234-1234-1234-123456789012", with: "evt-\(node)"))
                #expect(try await env.store.node(node)?.node.state == .cordoned, "\(reply.text)")
            }
            try await env.step()
            // Checkpointable jobs report; the rest were requeued at once.
            let checkpointing = try await client.call(.get, "/v1/jobs?state=checkpointing")
            for job in checkpointing["items"]!.array {
                let id = job["id"]!.string!
                try await client.expect(.ok, .post, "/v1/jobs/\(id)/checkpoints", #"{"uri":"s3://ckpt/\#(id)","step":42}"#)
            }
            try await env.step()
            try await env.advance(6)
            try await env.advance(120)
            try await env.step()

            let requests = try await client.call(.get, "/v1/provisioning-requests")
            #expect(requests["items"]?.array.count == 5)
            #expect(requests["items"]?.array.allSatisfy { $0["state"] == .string("fulfilled") && $0["pool"] == .string("spot-b") } == true)
            let interruptions = try await client.call(.get, "/v1/interruptions")
            #expect(interruptions["items"]?.array.allSatisfy { $0["state"] == .string("completed") } == true)
            let bestEffort = try await client.call(.get, "/v1/jobs?tier=best_effort&state=running")
            #expect(bestEffort["items"]?.array.count == 40)
            let resumed = bestEffort["items"]!.array.filter { $0["resume_from"] != .null }
            #expect(resumed.allSatisfy { $0["resume_from"]?["step"] == .int(42) })
            #expect(!resumed.isEmpty)
            let premiumAfter = try await client.call(.get, "/v1/jobs?tier=premium")
            for job in premiumAfter["items"]!.array {
                #expect(job["attempt"] == .int(1))
                #expect(job["requeue_count"] == .int(0))
                #expect(job["node_id"]?.string?.hasPrefix("od-") == true)
            }
        }
    }

    @Test func stockoutFallsBackToOnDemandOncePerLostNode() async throws {
        let env = try TestEnv { $0.simBootSeconds = 1 }
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.ok, .patch, "/v1/pools/spot-b", #"{"stockout":true}"#)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            try await client.expect(.accepted, .post, "/v1/interruptions", #"{"node_id":"s1","kind":"termination","notice_seconds":30}"#)
            try await env.step()
            try await env.advance(2)
            try await env.advance(2)
            for _ in 0..<3 { try await env.step() }
            let requests = try await client.call(.get, "/v1/provisioning-requests")
            let items = requests["items"]!.array
            #expect(items.count == 2)
            #expect(items[0]["pool"] == .string("spot-b"))
            #expect(items[0]["state"] == .string("failed"))
            #expect(items[0]["error"]?.string?.contains("stockout") == true)
            #expect(items[1]["pool"] == .string("od"))
            #expect(items[1]["reason"] == .string("fallback"))
            #expect(items[1]["state"] == .string("fulfilled"))
        }
    }

    @Test func minNodesFloorAndScaleDownOfIdleFallback() async throws {
        let env = try TestEnv {
            $0.simBootSeconds = 0
            $0.scaleDownIdleSeconds = 60
        }
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.ok, .patch, "/v1/pools/spot-b", #"{"stockout":true}"#)
            try await client.expect(.ok, .patch, "/v1/pools/spot-a", #"{"min_nodes":2}"#)
            try await env.step()
            try await env.advance(1)
            #expect(try await client.call(.get, "/v1/nodes?pool=spot-a&state=ready")["items"]?.array.count == 2)
            // Lose one spot node: spot-b is out, so the replacement comes from on-demand.
            try await client.expect(
                .accepted, .post, "/v1/interruptions",
                #"{"node_id":"\#(try await firstNode(client, "spot-a"))","kind":"termination","notice_seconds":1}"#)
            for _ in 0..<4 { try await env.advance(1) }
            let fallback = try await client.call(.get, "/v1/nodes?pool=od&state=ready")
            #expect(fallback["items"]?.array.count == 1)
            // spot-a refills to its floor; once the fallback has idled 60 s with spot back, it goes.
            try await env.advance(61)
            try await env.advance(1)
            #expect(try await client.call(.get, "/v1/nodes?pool=od&state=terminated")["items"]?.array.count == 1)
            // Nothing is left running in the simulated cloud: every instance it started is a live node, or was released.
            let live = (try await client.call(.get, "/v1/nodes?limit=100")["items"]?.array ?? []).filter {
                $0["state"] != .string("terminated")
            }
            let provider = try await client.call(.get, "/v1/summary")["provider"]
            #expect(provider?["live_instances"] == .int(Int64(live.count)), "\(live)")
            #expect(provider?["pending_releases"] == .int(0))
            #expect(try env.count("sim_instances") == 4, "2 floor nodes, 1 fallback, 1 refill")
        }
    }

    func firstNode(_ client: some TestClientProtocol, _ pool: String) async throws -> String {
        try await client.call(.get, "/v1/nodes?pool=\(pool)&state=ready")["items"]![0]!["id"]!.string!
    }

    @Test func webhookProviderPostsSignedRequestAndExternalRegistrationFulfills() async throws {
        // A small provisioner on loopback records what it receives.
        let received = Mutex<[(String, String?, String?)]>([])
        let router = Router()
        router.post("/provision") { request, _ -> HTTPResponse.Status in
            let body = try await request.body.collect(upTo: 1 << 16)
            received.withLock {
                $0.append(
                    (
                        String(buffer: body), request.headers[HTTPField.Name("X-Spotd-Signature")!],
                        request.headers[HTTPField.Name("X-Spotd-Timestamp")!]
                    ))
            }
            return .accepted
        }
        try await withLoopbackProvisioner(router) { port in
            let env = try TestEnv {
                $0.provider = .webhook
                $0.provisionWebhookURL = URL(string: "http://127.0.0.1:\(port)/provision")
                $0.webhookSecret = "s3cret"
                $0.provisionBootTimeoutSeconds = 30
            }
            try await env.app().test(.router) { client in
                try await Seed.standardPools(client)
                try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
                let body = #"{"node_id":"s1","kind":"termination","notice_seconds":30}"#
                let timestamp = String(env.clock.now() / 1000)
                let signature = Signature.hex(secret: "s3cret", timestamp: timestamp, body: Data(body.utf8))
                try await client.expect(
                    .accepted, .post, "/v1/interruptions", body,
                    headers: [HTTPField.Name("X-Spotd-Timestamp")!: timestamp, HTTPField.Name("X-Spotd-Signature")!: "sha256=\(signature)"])
                try await env.step()
                try await env.step()
                let calls = received.withLock { $0 }
                #expect(calls.count == 1)
                let (payload, sent, sentTimestamp) = try #require(calls.first)
                #expect(payload.contains("\"pool\":\"spot-b\""))
                #expect(sent == "sha256=" + Signature.hex(secret: "s3cret", timestamp: sentTimestamp ?? "", body: Data(payload.utf8)))
                let request = try await client.call(.get, "/v1/provisioning-requests")["items"]![0]!
                let requestId = request["id"]!.string!
                try await client.expect(
                    .created, .post, "/v1/nodes", #"{"id":"ext-1","pool":"spot-b","provisioning_request_id":"\#(requestId)"}"#)
                let fulfilled = try await client.call(.get, "/v1/provisioning-requests/\(requestId)")
                #expect(fulfilled["state"] == .string("fulfilled"))
                #expect(fulfilled["node_id"] == .string("ext-1"))
                try await client.expectProblem(
                    .conflict, .post, "/v1/nodes", #"{"id":"ext-2","pool":"spot-b","provisioning_request_id":"\#(requestId)"}"#)
            }
        }
    }

    /// A provisioner that takes the request (2xx) but never registers a node: after the timeout the request fails
    /// with "timeout" and the on-demand fallback is asked. Not before the timeout.
    @Test func webhookTimeoutFailsAndFallsBack() async throws {
        let router = Router()
        let calls = Mutex(0)
        router.post("/provision") { _, _ -> HTTPResponse.Status in
            calls.withLock { $0 += 1 }
            return .accepted
        }
        try await withLoopbackProvisioner(router) { port in
            let env = try TestEnv {
                $0.provider = .webhook
                $0.provisionWebhookURL = URL(string: "http://127.0.0.1:\(port)/provision")
                $0.provisionBootTimeoutSeconds = 30
            }
            try await env.app().test(.router) { client in
                try await Seed.standardPools(client)
                try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
                try await client.expect(
                    .accepted, .post, "/v1/interruptions", #"{"node_id":"s1","kind":"termination","notice_seconds":60}"#)
                try await env.step()
                try await env.step()
                #expect(calls.withLock { $0 } == 1)
                let pending = try await client.call(.get, "/v1/provisioning-requests")["items"]!.array
                #expect(pending.count == 1 && pending.first?["state"] == .string("pending"))
                try await env.advance(29)
                #expect(try await client.call(.get, "/v1/provisioning-requests?state=pending")["items"]!.array.count == 1)
                try await env.advance(2)
                let items = try await client.call(.get, "/v1/provisioning-requests")["items"]!.array
                #expect(items.first?["state"] == .string("failed"))
                #expect(items.first?["error"]?.string?.hasPrefix("timeout") == true, "\(items)")
                #expect(items.count == 2)
                #expect(items.last?["pool"] == .string("od"))
                #expect(items.last?["reason"] == .string("fallback"))
            }
        }
    }
}

@Suite("Provisioning never delays a drain")
struct SlowProvisionerTests {
    /// A provisioner that takes seconds to answer must not hold up the checkpoint requests of a reclaim.
    @Test func hungWebhookDoesNotDelayDrain() async throws {
        let router = Router()
        router.post("/provision") { _, _ -> HTTPResponse.Status in
            try await Task.sleep(for: .seconds(4))
            return .accepted
        }
        try await withLoopbackProvisioner(router) { port in
            let env = try TestEnv {
                $0.provider = .webhook
                $0.provisionWebhookURL = URL(string: "http://127.0.0.1:\(port)/provision")
                $0.workerIntervalSeconds = 0.05
            }
            // The real service: worker and provisioning loop run on their own, on the wall clock.
            env.clock.set(SystemClock().now())
            var logger = Logger(label: "spotd-test")
            logger.logLevel = .critical
            try await buildApplication(env.runtime, logger: logger).test(.live) { client in
                try await Seed.standardPools(client)
                try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
                try await client.expect(.created, .post, "/v1/nodes", Seed.node("s2", pool: "spot-a"))
                try await client.expect(.created, .post, "/v1/jobs", Seed.job("a", tier: "best_effort", gpus: 8, checkpointable: true))
                try await client.expect(.created, .post, "/v1/jobs", Seed.job("b", tier: "best_effort", gpus: 8, checkpointable: true))
                try await waitFor { try await client.call(.get, "/v1/jobs?state=running")["items"]?.array.count == 2 }
                // The first reclaim sends the provisioner a request it sits on; the second must drain at once anyway.
                try await client.expect(
                    .accepted, .post, "/v1/interruptions", #"{"node_id":"s1","kind":"termination","notice_seconds":60}"#)
                try await waitFor { try await client.call(.get, "/v1/provisioning-requests")["items"]?.array.count == 1 }
                try await Task.sleep(for: .milliseconds(200))
                try await client.expect(
                    .accepted, .post, "/v1/interruptions", #"{"node_id":"s2","kind":"termination","notice_seconds":60}"#)
                let started = Date()
                try await waitFor(seconds: 3) {
                    try await client.call(.get, "/v1/jobs?state=checkpointing")["items"]?.array.count == 2
                }
                #expect(Date().timeIntervalSince(started) < 2)
            }
        }
    }

    func waitFor(seconds: Double = 10, _ check: () async throws -> Bool) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try await check() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("condition not met within \(seconds) s")
    }
}

/// Runs `body` with a provisioner served by `router` on a loopback port.
func withLoopbackProvisioner(_ router: Router<BasicRequestContext>, _ body: @escaping @Sendable (Int) async throws -> Void) async throws {
    let provisioner = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
    try await provisioner.test(.live) { client in try await body(try #require(client.port)) }
}
