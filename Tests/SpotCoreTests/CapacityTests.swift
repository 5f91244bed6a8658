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

    /// A provider call that never returns (and ignores cancellation) counts as failed after the deadline: the loop
    /// goes on.
    @Test func aCallThatNeverReturnsDoesNotStopTheLoop() async throws {
        let env = try TestEnv()
        var reconciler = env.worker.replacement
        reconciler.callDeadline = 0.2
        let started = Date()
        let value = await reconciler.bounded(fallback: ProviderStep.retry("late")) {
            await Task.detached { () -> ProviderStep in
                try? await Task.sleep(for: .seconds(60))
                return .submitted
            }.value
        }
        #expect(value == .retry("late"))
        // Back long before the stuck call would have returned (60 s), however loaded the machine.
        #expect(Date().timeIntervalSince(started) < 30)
        #expect(await reconciler.bounded(fallback: ProviderStep.retry("late")) { .submitted } == .submitted)
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

    /// Lowering a pool's max_nodes empties it down to the new size: idle nodes above it are released (oldest first),
    /// busy ones stay.
    @Test func idleNodesAboveMaxNodesAreReleased() async throws {
        let env = try TestEnv { $0.scaleDownIdleSeconds = 10 }
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            for index in 0..<4 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("a\(index)", pool: "spot-a")) }
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("busy", tier: "best_effort", gpus: 8, checkpointable: true))
            try await env.step()
            let busy = try #require(try await client.expect(.ok, .get, "/v1/jobs/busy")["node_id"]?.string)
            try await client.expect(.ok, .patch, "/v1/pools/spot-a", #"{"max_nodes":2}"#)
            try await env.advance(11)
            try await env.advance(1)
            let nodes = try await client.expect(.ok, .get, "/v1/nodes?pool=spot-a")["items"]?.array ?? []
            let live = nodes.filter { $0["state"] != .string("terminated") }.compactMap { $0["id"]?.string }
            #expect(live.count == 2 && live.contains(busy), "\(nodes)")
            try await expectNoLeak(client)
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

@Suite("The cost report")
struct CostReportTests {
    /// A scenario on a fixed clock, and the report's numbers computed by hand.
    ///
    /// From T0 (a whole hour): spot-a (8 × H100, $30/h) runs node s1, on-demand (8 × H100, $98/h, so $12.25 per
    /// GPU-hour) runs o1. A best-effort 4-GPU job (never checkpointed) runs on s1 from T0; a premium 8-GPU job on o1
    /// from T0. At T0+1.5h s1 is reclaimed (notice 120 s): the best-effort job is requeued at once (6 GPU-hours lost)
    /// and s1 ends at its deadline, T0+1.5h+120s. The premium job completes at T0+2h. The report runs at T0+3h.
    @Test func theNumbersMatchAHandComputedScenario() async throws {
        let env = try TestEnv()
        let t0 = try #require(TimeFormat.parseRFC3339("2026-11-30T00:00:00Z"))
        env.clock.set(t0)
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-a", "spot", zone: "us-east-1a", price: 30, max: 1))
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od", "on_demand", zone: "us-east-1a", price: 98, max: 1))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("o1", pool: "od"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("a", tier: "best_effort", gpus: 4))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("p", tier: "premium", gpus: 8))
            try await env.step()
            #expect(try await client.expect(.ok, .get, "/v1/jobs/a")["node_id"] == .string("s1"))
            #expect(try await client.expect(.ok, .get, "/v1/jobs/p")["node_id"] == .string("o1"))
            env.clock.set(t0 + 5_400_000)
            try await client.expect(
                .accepted, .post, "/v1/interruptions", #"{"node_id":"s1","kind":"termination","notice_seconds":120}"#)
            // No more spot for the requeued job (and on-demand is at its max_nodes): the numbers stay as computed.
            try await client.expect(.ok, .patch, "/v1/pools/spot-a", #"{"stockout":true}"#)
            try await env.step()
            #expect(try await client.expect(.ok, .get, "/v1/jobs/a")["state"] == .string("queued"))
            env.clock.set(t0 + 5_400_000 + 120_000)
            try await env.step()
            #expect(try await client.expect(.ok, .get, "/v1/nodes/s1")["state"] == .string("terminated"))
            env.clock.set(t0 + 7_200_000)
            try await client.expect(.ok, .post, "/v1/jobs/p/complete")
            env.clock.set(t0 + 10_800_000)

            let report = try await client.expect(.ok, .get, "/v1/reports/cost?since=2026-11-30T00:00:00Z&until=2026-11-30T03:00:00Z")
            func close(_ value: JSONValue?, _ expected: Double, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
                var got = Double.nan
                if case .double(let number)? = value { got = number }
                if case .int(let number)? = value { got = Double(number) }
                #expect(abs(got - expected) < 1e-5, "\(what): \(got) != \(expected)", sourceLocation: sourceLocation)
            }
            let pools = report["pools"]?.array ?? []
            let spot = try #require(pools.first { $0["pool"] == .string("spot-a") })
            let od = try #require(pools.first { $0["pool"] == .string("od") })
            let spotNodeHours = 1.5 + 120.0 / 3600
            close(spot["node_hours"], spotNodeHours, "spot node-hours")
            close(spot["gpu_hours"], spotNodeHours * 8, "spot GPU-hours")
            close(spot["gpu_hours_used"], 6, "spot GPU-hours used")
            close(spot["cost"], 30 * spotNodeHours, "spot cost")
            close(spot["interruptions"], 1, "spot interruptions")
            close(spot["gpu_hours_lost"], 6, "spot GPU-hours lost")
            close(spot["saving"], spotNodeHours * 8 * 12.25 - 30 * spotNodeHours, "spot saving")
            close(od["node_hours"], 3, "od node-hours")
            close(od["gpu_hours_used"], 16, "od GPU-hours used")
            close(od["cost"], 294, "od cost")
            close(od["saving"], 0, "od saving")
            let tiers = report["tiers"]?.array ?? []
            let premium = try #require(tiers.first { $0["tier"] == .string("premium") })
            let bestEffort = try #require(tiers.first { $0["tier"] == .string("best_effort") })
            close(premium["gpu_hours"], 16, "premium GPU-hours")
            close(premium["cost"], 16 * 12.25, "premium cost")
            close(bestEffort["gpu_hours"], 6, "best-effort GPU-hours")
            close(bestEffort["cost"], 6 * 30.0 / 8, "best-effort cost")
            close(bestEffort["interruptions"], 1, "best-effort interruptions")
            close(bestEffort["gpu_hours_lost"], 6, "best-effort GPU-hours lost")
            close(bestEffort["saving"], 6 * 12.25 - 6 * 30.0 / 8, "best-effort saving")
            close(report["total"]?["cost"], 30 * spotNodeHours + 294, "total cost")
            close(report["total"]?["gpu_hours_lost"], 6, "total lost")

            // One hour in the middle: the rolled-up pieces of that hour only.
            let middle = try await client.expect(.ok, .get, "/v1/reports/cost?since=2026-11-30T01:00:00Z&until=2026-11-30T02:00:00Z")
            let spotMiddle = try #require(middle["pools"]?.array.first { $0["pool"] == .string("spot-a") })
            close(spotMiddle["node_hours"], 0.5 + 120.0 / 3600, "spot node-hours, second hour")
            close(spotMiddle["gpu_hours_used"], 2, "spot GPU-hours used, second hour")
            close(middle["pools"]?.array.first { $0["pool"] == .string("od") }?["node_hours"], 1, "od node-hours, second hour")
            // The default period is the last 24 hours; a period must go forward; times are RFC 3339.
            #expect(try await client.expect(.ok, .get, "/v1/reports/cost")["until"] == .string("2026-11-30T03:00:00.000Z"))
            try await client.expectProblem(
                .unprocessableContent, .get, "/v1/reports/cost?since=2026-11-30T02:00:00Z&until=2026-11-30T01:00:00Z")
            try await client.expectProblem(.badRequest, .get, "/v1/reports/cost?since=yesterday")
            try await client.expectProblem(.badRequest, .get, "/v1/reports/cost?from=2026-11-30T01:00:00Z")
        }
    }
}
