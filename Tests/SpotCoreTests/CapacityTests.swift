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
