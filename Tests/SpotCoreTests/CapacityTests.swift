import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Synchronization
import Testing

@testable import SpotCore

/// What a loopback provisioner received: each call's action, Idempotency-Key and body.
final class ProvisionerLog: Sendable {
    struct Call: Sendable {
        var action: String
        var key: String
        var body: JSONValue
        var signature: String?
        var timestamp: String?
    }

    private let calls = Mutex<[Call]>([])

    func record(_ request: Request) async throws {
        let buffer = try await request.body.collect(upTo: 1 << 16)
        let body = (try? JSONDecoder().decode(JSONValue.self, from: Data(buffer: buffer))) ?? .null
        let call = Call(
            action: body["action"]?.string ?? "", key: request.headers[HTTPField.Name("Idempotency-Key")!] ?? "", body: body,
            signature: request.headers[HTTPField.Name("X-Spotd-Signature")!],
            timestamp: request.headers[HTTPField.Name("X-Spotd-Timestamp")!])
        calls.withLock { $0.append(call) }
    }

    var all: [Call] { calls.withLock { $0 } }
    func count(_ action: String) -> Int { all.filter { $0.action == action }.count }
}

@Suite("The provider contract: retries, releases, nothing left running")
struct ProviderContractTests {
    /// A webhook provider at `port`, with short call timeouts.
    func webhookEnv(_ port: Int, retries: Int = 3, timeout: Double = 2) throws -> TestEnv {
        try TestEnv {
            $0.provider = .webhook
            $0.provisionWebhookURL = URL(string: "http://127.0.0.1:\(port)/provision")
            $0.provisionRetries = retries
            $0.provisionTimeoutSeconds = timeout
            $0.webhookSecret = "s3cret"
        }
    }

    /// A reclaimed spot node whose replacement goes to spot-b through the webhook.
    func reclaim(_ client: some TestClientProtocol, _ env: TestEnv, notice: Int = 60) async throws {
        try await Seed.standardPools(client)
        try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
        let body = #"{"node_id":"s1","kind":"termination","notice_seconds":\#(notice)}"#
        let timestamp = String(env.clock.now() / 1000)
        let signature = Signature.hex(secret: "s3cret", timestamp: timestamp, body: Data(body.utf8))
        try await client.expect(
            .accepted, .post, "/v1/interruptions", body,
            headers: [HTTPField.Name("X-Spotd-Timestamp")!: timestamp, HTTPField.Name("X-Spotd-Signature")!: "sha256=\(signature)"])
    }

    /// 503, 503, then 201: three calls with one Idempotency-Key, the request is taken, and no fallback is asked.
    @Test func aProvisionerThatRecoversGetsThreeCallsAndNoFallback() async throws {
        let log = ProvisionerLog()
        let answers = Mutex([HTTPResponse.Status.serviceUnavailable, .serviceUnavailable, .created])
        let router = Router()
        router.post("/provision") { request, _ -> HTTPResponse.Status in
            try await log.record(request)
            return answers.withLock { $0.isEmpty ? .created : $0.removeFirst() }
        }
        try await withLoopbackProvisioner(router) { port in
            let env = try webhookEnv(port)
            try await env.app().test(.router) { client in
                try await reclaim(client, env)
                try await env.step()
                #expect(log.count("create") == 1)
                // The backoff: 1 s after the first failure, 2 s after the second; nothing is called before.
                try await env.step()
                #expect(log.count("create") == 1)
                try await env.advance(1)
                #expect(log.count("create") == 2)
                try await env.advance(1)
                #expect(log.count("create") == 2)
                try await env.advance(1)
                #expect(log.count("create") == 3)
                for _ in 0..<3 { try await env.advance(5) }
                let calls = log.all.filter { $0.action == "create" }
                #expect(calls.count == 3)
                #expect(Set(calls.map(\.key)).count == 1)
                #expect(calls.map { $0.body["attempt"] } == [.int(1), .int(2), .int(3)])
                // Signed like inbound notices.
                #expect(
                    calls.allSatisfy {
                        $0.signature == "sha256="
                            + Signature.hex(secret: "s3cret", timestamp: $0.timestamp ?? "", body: Data($0.body.jsonText.utf8))
                    })
                let requests = try await client.expect(.ok, .get, "/v1/provisioning-requests")["items"]?.array ?? []
                #expect(requests.count == 1, "no fallback: \(requests)")
                #expect(requests.first?["state"] == .string("pending"))
                #expect(requests.first?["attempts"] == .int(3))
                #expect(requests.first?["id"]?.string == calls.first?.key)
            }
        }
    }

    /// A provisioner that never answers in time: exactly `--provision-retries` calls, then the request fails and the
    /// on-demand fallback is asked for.
    @Test func aProvisionerThatTimesOutGetsExactlyTheRetriesThenTheFallback() async throws {
        let log = ProvisionerLog()
        let router = Router()
        router.post("/provision") { request, _ -> HTTPResponse.Status in
            try await log.record(request)
            if log.all.last?.body["pool"]?.string == "spot-b" { try await Task.sleep(for: .seconds(5)) }
            return .created
        }
        try await withLoopbackProvisioner(router) { port in
            let env = try webhookEnv(port, retries: 4, timeout: 0.3)
            try await env.app().test(.router) { client in
                try await reclaim(client, env)
                try await env.step()
                for _ in 0..<8 { try await env.advance(10) }
                let spot = log.all.filter { $0.action == "create" && $0.body["pool"]?.string == "spot-b" }
                #expect(spot.count == 4)
                #expect(Set(spot.map(\.key)).count == 1)
                let requests = try await client.expect(.ok, .get, "/v1/provisioning-requests")["items"]?.array ?? []
                #expect(requests.count == 2, "\(requests)")
                #expect(requests.first?["state"] == .string("failed"))
                #expect(
                    requests.first?["error"]?.string?.hasPrefix("gave up after 4 attempt(s): provisioner timed out") == true, "\(requests)")
                #expect(requests.last?["reason"] == .string("fallback") && requests.last?["pool"] == .string("od"))
                #expect(log.all.filter { $0.action == "create" && $0.body["pool"]?.string == "od" }.count == 1)
            }
        }
    }

    /// A reclaimed node's release is sent at its deadline, and asked again (same Idempotency-Key) until the
    /// provisioner acknowledges it; the node is terminated once.
    @Test func aReleaseIsAskedUntilAcknowledged() async throws {
        let log = ProvisionerLog()
        let releaseAnswers = Mutex([HTTPResponse.Status.badGateway, .internalServerError, .ok])
        let router = Router()
        router.post("/provision") { request, _ -> HTTPResponse.Status in
            try await log.record(request)
            if log.all.last?.action == "release" { return releaseAnswers.withLock { $0.isEmpty ? .ok : $0.removeFirst() } }
            return .accepted
        }
        try await withLoopbackProvisioner(router) { port in
            let env = try webhookEnv(port)
            try await env.app().test(.router) { client in
                try await reclaim(client, env, notice: 20)
                try await env.step()
                try await env.advance(21)
                #expect(try await client.expect(.ok, .get, "/v1/nodes/s1")["state"] == .string("terminated"))
                for _ in 0..<6 { try await env.advance(5) }
                let releases = log.all.filter { $0.action == "release" }
                #expect(releases.count == 3)
                #expect(Set(releases.map(\.key)).count == 1 && releases.first?.key.hasPrefix("rel-") == true, "\(releases.map(\.key))")
                #expect(releases.first?.body["node_id"] == .string("s1"))
                let events = try await client.expect(.ok, .get, "/v1/events?limit=1000")["items"]?.array ?? []
                #expect(events.filter { $0["type"] == .string("node.terminated") && $0["subject"] == .string("nodes/s1") }.count == 1)
                #expect(events.filter { $0["type"] == .string("node.released") }.count == 1)
                #expect(try await client.expect(.ok, .get, "/v1/summary")["provider"]?["pending_releases"] == .int(0))
            }
        }
    }
}

@Suite("Capacity that follows demand")
struct DemandTests {
    func demandRequests(_ client: some TestClientProtocol, state: String? = nil) async throws -> [JSONValue] {
        let items =
            try await client.expect(.ok, .get, "/v1/provisioning-requests?limit=500" + (state.map { "&state=\($0)" } ?? ""))["items"]?
            .array ?? []
        return items.filter { $0["reason"] == .string("demand") }
    }

    /// Nothing left running: the simulated cloud's instances are the live nodes.
    func expectNoLeak(_ client: some TestClientProtocol, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let nodes = try await client.expect(.ok, .get, "/v1/nodes?limit=500")["items"]?.array ?? []
        let live = nodes.filter { $0["state"] != .string("terminated") }.count
        let provider = try await client.expect(.ok, .get, "/v1/summary")["provider"]
        #expect(provider?["live_instances"] == .int(Int64(live)), sourceLocation: sourceLocation)
    }

    /// A premium job and no on-demand node: it gets an on-demand node, asked for it, and runs there. While it waits,
    /// `pending_reason` says what for.
    @Test func aPremiumJobWithNoOnDemandNodeGetsOneAndRuns() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("p", tier: "premium", gpus: 8))
            try await env.step()
            let requests = try await demandRequests(client)
            #expect(requests.count == 1)
            #expect(requests.first?["pool"] == .string("od"))
            let waiting = try await client.expect(.ok, .get, "/v1/jobs/p")
            #expect(waiting["state"] == .string("queued"))
            let reason = waiting["pending_reason"]?.string ?? ""
            #expect(reason.contains(requests.first?["id"]?.string ?? "?") && reason.contains("od"), "\(reason)")
            try await env.advance(6)
            try await env.step()
            let job = try await client.expect(.ok, .get, "/v1/jobs/p")
            #expect(job["state"] == .string("running"))
            #expect(job["pending_reason"] == .null)
            let node = try await client.expect(.ok, .get, "/v1/nodes/\(job["node_id"]?.string ?? "")")
            #expect(node["pool"] == .string("od"))
            #expect(try await demandRequests(client).count == 1, "asked once")
            try await expectNoLeak(client)
        }
    }

    /// 100 queued 2-GPU jobs on 8-GPU pools: exactly 25 nodes are asked for, once, however many passes run while
    /// they boot; then all 100 run.
    @Test func aHundredSmallJobsAskForExactlyTwentyFiveNodes() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            for index in 0..<100 {
                try await client.expect(
                    .created, .post, "/v1/jobs", Seed.job("j\(index)", tier: "best_effort", gpus: 2, checkpointable: true))
            }
            try await env.step()
            let asked = try await demandRequests(client)
            #expect(asked.count == 25)
            // Best-effort prefers spot, then the lower interruption rate, then the price: spot-a (30) before spot-b (32).
            #expect(asked.allSatisfy { $0["pool"] == .string("spot-a") })
            for _ in 0..<3 {
                try await env.advance(1)
                #expect(try await demandRequests(client).count == 25)
            }
            try await env.advance(2)
            try await env.step()
            #expect(try await client.expect(.ok, .get, "/v1/summary")["jobs"]?["best_effort"]?["running"] == .int(100))
            let nodes = try await client.expect(.ok, .get, "/v1/nodes?limit=500")["items"]?.array ?? []
            #expect(nodes.count == 25)
            #expect(nodes.allSatisfy { $0["gpus_allocated"] == .int(8) })
            #expect(try await demandRequests(client, state: "fulfilled").count == 25)
            try await expectNoLeak(client)
        }
    }

    /// Demand that goes away before its node boots: the request is cancelled and no node is left behind. Demand
    /// that goes away after: the idle node is released once idle long enough.
    @Test func demandThatGoesAwayLeavesNoNodeBehind() async throws {
        let env = try TestEnv { $0.scaleDownIdleSeconds = 30 }
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("early", tier: "premium", gpus: 8))
            try await env.step()
            #expect(try await demandRequests(client, state: "pending").count == 1)
            try await client.expect(.ok, .post, "/v1/jobs/early/cancel")
            try await env.step()
            #expect(try await demandRequests(client, state: "cancelled").count == 1)
            try await env.advance(10)
            #expect(try await client.expect(.ok, .get, "/v1/nodes")["items"]?.array.isEmpty == true)
            try await expectNoLeak(client)

            // Late: the node boots, the job runs and ends; 30 s idle later the node is given back.
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("late", tier: "premium", gpus: 8))
            try await env.step()
            try await env.advance(6)
            try await env.step()
            #expect(try await client.expect(.ok, .get, "/v1/jobs/late")["state"] == .string("running"))
            try await client.expect(.ok, .post, "/v1/jobs/late/complete")
            try await env.advance(20)
            #expect(try await client.expect(.ok, .get, "/v1/summary")["provider"]?["live_instances"] == .int(1))
            try await env.advance(11)
            try await env.advance(1)
            let nodes = try await client.expect(.ok, .get, "/v1/nodes")["items"]?.array ?? []
            #expect(nodes.count == 1 && nodes.first?["state"] == .string("terminated"), "\(nodes)")
            try await expectNoLeak(client)
            #expect(try await client.expect(.ok, .get, "/v1/summary")["provider"]?["live_instances"] == .int(0))
        }
    }

    /// A gang's demand lands in one zone, and the gang runs there once its nodes are up.
    @Test func aGangsDemandLandsInOneZone() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("b1", pool: "spot-b"))
            try await client.expect(
                .created, .post, "/v1/jobs", Seed.job("g", tier: "best_effort", gpus: 8, checkpointable: true, extra: #","nodes":3"#))
            try await env.step()
            let requests = try await demandRequests(client)
            // spot-b already has one free node: two more there make the gang, fewer than three in spot-a.
            #expect(requests.count == 2)
            #expect(requests.allSatisfy { $0["pool"] == .string("spot-b") }, "\(requests)")
            try await env.advance(6)
            try await env.step()
            let gang = try await client.expect(.ok, .get, "/v1/jobs/g")
            #expect(gang["state"] == .string("running"))
            #expect(gang["node_ids"]?.array.count == 3)
        }
    }
}
