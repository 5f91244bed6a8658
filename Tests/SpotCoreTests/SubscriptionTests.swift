import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Synchronization
import Testing

@testable import SpotCore

/// A receiver of deliveries on a loopback port: records what arrives, and answers 503 while told to fail.
final class Receiver: Sendable {
    struct Delivery: Sendable {
        var eventId: Int64
        var type: String
        var timestamp: String
        var signature: String
        var body: Data
    }

    private let state = Mutex<(failing: Bool, received: [Delivery], refused: Int)>((false, [], 0))

    var failing: Bool {
        get { state.withLock { $0.failing } }
        set { state.withLock { $0.failing = newValue } }
    }
    var received: [Delivery] { state.withLock { $0.received } }
    var refused: Int { state.withLock { $0.refused } }

    var router: Router<BasicRequestContext> {
        let router = Router()
        router.post("/hook") { [self] request, _ -> Response in
            let body = try await request.body.collect(upTo: 1 << 20)
            let delivery = Delivery(
                eventId: Int64(request.headers[HTTPField.Name("X-Spotd-Event-Id")!] ?? "") ?? -1,
                type: request.headers[HTTPField.Name("X-Spotd-Event-Type")!] ?? "",
                timestamp: request.headers[HTTPField.Name("X-Spotd-Timestamp")!] ?? "",
                signature: request.headers[HTTPField.Name("X-Spotd-Signature")!] ?? "", body: Data(buffer: body))
            return state.withLock { state in
                if state.failing {
                    state.refused += 1
                    return Response(status: .serviceUnavailable)
                }
                state.received.append(delivery)
                return Response(status: .noContent)
            }
        }
        // A receiver that moved: following it would turn the POST into a GET without the event.
        router.post("/moved") { _, _ in Response(status: .movedPermanently, headers: [.location: "/hook"]) }
        router.get("/hook") { _, _ in Response(status: .ok) }
        return router
    }

    /// Whether the delivery is signed with `secret` over its timestamp and body.
    static func signed(_ delivery: Delivery, secret: String) -> Bool {
        var message = Data(delivery.timestamp.utf8)
        message.append(0x2E)
        message.append(delivery.body)
        let mac = HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: Data(secret.utf8)))
        return delivery.signature == "sha256=" + Hex.encode(Array(mac))
    }
}

@Suite("Subscriptions")
struct SubscriptionTests {
    /// The receiver is down for a minute while notices arrive: tries back off (1 s, 2 s, … at most 60 s), nothing
    /// behind the failed event overtakes it, and once the receiver is back every matching event arrives, once, in
    /// event order, signed; other events are not sent. A Slack subscription gets one readable line per event.
    @Test func aReceiverDownForAMinuteLosesNothing() async throws {
        let env = try TestEnv()
        let receiver = Receiver()
        receiver.failing = true
        try await withLoopbackProvisioner(receiver.router) { port in
            try await env.app().test(.router) { client in
                try await Seed.standardPools(client)
                for id in ["s1", "s2", "s3"] { try await client.expect(.created, .post, "/v1/nodes", Seed.node(id, pool: "spot-a")) }
                let created = try await client.expect(
                    .created, .post, "/v1/subscriptions",
                    #"{"url":"http://127.0.0.1:\#(port)/hook?key=secret-path","events":["interruption.*","node.cordoned"]}"#)
                let secret = try #require(created["secret"]?.string)
                let id = try #require(created["id"]?.string)
                #expect(created["url"]?.string == "http://127.0.0.1:\(port)/…", "the URL's path and query are not shown")
                let slack = try await client.expect(
                    .created, .post, "/v1/subscriptions",
                    #"{"url":"http://127.0.0.1:\#(port)/hook","events":["node.cordoned"],"format":"slack"}"#)
                let slackSecret = try #require(slack["secret"]?.string)
                #expect(try await client.call(.get, "/v1/subscriptions/\(id)")["secret"] == nil, "the secret is shown once")

                func deliver() async throws { try await env.worker.deliveries.run(lease: try await env.lease()) }
                try await client.expect(
                    .accepted, .post, "/v1/interruptions", #"{"node_id":"s1","kind":"termination","notice_seconds":120}"#)
                try await deliver()
                let failing = try await client.call(.get, "/v1/subscriptions/\(id)")
                #expect(failing["delivery"]?["state"]?.string == "retrying")
                #expect(failing["delivery"]?["last_status"]?.int == 503)
                #expect(failing["delivery"]?["delivered"]?.int == 0)
                #expect(receiver.refused == 2, "one try per subscription")
                // Not due yet: no call.
                try await deliver()
                #expect(receiver.refused == 2)
                // A minute of failures, with more notices meanwhile: the backoff grows and stops at 60 s.
                var tries = 2
                for second in 1...70 {
                    env.clock.advance(seconds: 1)
                    if second == 10 {
                        try await client.expect(
                            .accepted, .post, "/v1/interruptions", #"{"node_id":"s2","kind":"termination","notice_seconds":120}"#)
                    }
                    try await deliver()
                    tries = receiver.refused
                }
                // Tries at 0, 1, 3, 7, 15, 31 and 63 s (backoff 1, 2, 4, ... s), for each of the 2 subscriptions.
                #expect(tries == 14, "\(tries) tries")
                #expect(receiver.received.isEmpty)
                let capped = try await client.call(.get, "/v1/subscriptions/\(id)")["delivery"]
                let last = try #require(capped?["last_attempt_at"]?.string.flatMap(TimeFormat.parseRFC3339))
                let next = try #require(capped?["next_attempt_at"]?.string.flatMap(TimeFormat.parseRFC3339))
                #expect(next - last == 60_000, "the backoff stops at 60 s")
                #expect(capped?["failed_attempts"]?.int == 7)
                try await client.expect(
                    .accepted, .post, "/v1/interruptions", #"{"node_id":"s3","kind":"termination","notice_seconds":120}"#)
                receiver.failing = false
                env.clock.advance(seconds: 61)
                try await deliver()

                let events = try await client.call(.get, "/v1/events?limit=1000")["items"]?.array ?? []
                let matching = events.filter {
                    let type = $0["type"]?.string ?? ""
                    return type.hasPrefix("interruption.") || type == "node.cordoned"
                }.compactMap { $0["id"]?.int }
                let received = receiver.received
                let json = received.filter { Receiver.signed($0, secret: secret) }
                #expect(json.map(\.eventId) == matching, "every matching event, once, in order")
                #expect(matching.count == 6, "three notices and three cordons")
                for delivery in json {
                    let body = try JSONValue.parse(delivery.body)
                    #expect(body["id"]?.int == delivery.eventId && body["type"]?.string == delivery.type)
                }
                let lines = received.filter { Receiver.signed($0, secret: slackSecret) }
                #expect(lines.count == 3)
                #expect(json.count + lines.count == received.count, "every delivery is signed with its subscription's secret")
                let text = try JSONValue.parse(try #require(lines.first).body)["text"]?.string ?? ""
                #expect(text.hasPrefix("[spotd] Node s1 cordoned") && !text.contains("\n"), "\(text)")
                let caughtUp = try await client.call(.get, "/v1/subscriptions/\(id)")
                #expect(caughtUp["delivery"]?["state"]?.string == "ok")
                #expect(caughtUp["delivery"]?["delivered"]?.int == 6)
                // Deleted: nothing more goes out.
                try await client.expect(.noContent, .delete, "/v1/subscriptions/\(id)")
                try await client.expect(.notFound, .delete, "/v1/subscriptions/\(id)")
                try await client.expect(.created, .post, "/v1/nodes", Seed.node("s4", pool: "spot-a"))
                try await client.expect(
                    .accepted, .post, "/v1/interruptions", #"{"node_id":"s4","kind":"termination","notice_seconds":120}"#)
                try await deliver()
                #expect(receiver.received.filter { Receiver.signed($0, secret: secret) }.count == 6)
            }
        }
    }

    /// A redirect is a failed delivery (never followed), and a receiver that refuses connections fails at once.
    @Test func redirectsAndRefusedConnectionsAreFailures() async throws {
        let env = try TestEnv()
        let receiver = Receiver()
        try await withLoopbackProvisioner(receiver.router) { port in
            try await env.app().test(.router) { client in
                let moved = try #require(
                    try await client.expect(
                        .created, .post, "/v1/subscriptions", #"{"url":"http://127.0.0.1:\#(port)/moved","events":["pool.*"]}"#)["id"]?
                        .string)
                let closed = try #require(
                    try await client.expect(
                        .created, .post, "/v1/subscriptions", #"{"url":"http://127.0.0.1:\#(freePort())/hook","events":["pool.*"]}"#)["id"]?
                        .string)
                // A subscription to every event does not get its own creation.
                let everything = try await client.expect(
                    .created, .post, "/v1/subscriptions", #"{"url":"http://127.0.0.1:\#(port)/hook","events":["*"]}"#)
                #expect(everything["delivery"]?["events_behind"]?.int == 0)
                try await client.expect(.noContent, .delete, "/v1/subscriptions/\(try #require(everything["id"]?.string))")
                try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-a", "spot"))
                let started = ContinuousClock.now
                try await env.worker.deliveries.run(lease: try await env.lease())
                #expect(ContinuousClock.now - started < .seconds(5), "a refused connection fails at once, not at the 10 s timeout")
                let redirected = try await client.call(.get, "/v1/subscriptions/\(moved)")["delivery"]
                #expect(
                    redirected?["state"]?.string == "retrying" && redirected?["last_status"]?.int == 301,
                    "\(String(describing: redirected))")
                #expect(receiver.received.isEmpty)
                let refused = try await client.call(.get, "/v1/subscriptions/\(closed)")["delivery"]
                #expect(refused?["state"]?.string == "retrying" && refused?["last_status"] == .null)
                #expect(refused?["last_error"]?.string?.contains("unreachable") == true, "\(String(describing: refused))")
            }
        }
    }

    /// Slack lines escape what Slack reads as markup: a job's reason cannot ping the channel or hide a link.
    @Test func slackLinesAreEscaped() {
        let event = Event(
            id: 9, at: 0, type: "job.requeued", subject: "jobs/j1", actor: "a<b>",
            data: .object(["reason": .string("<!channel> <https://evil.example|click> &amp;")]))
        let line = DeliveryFormat.slackLine(event)
        #expect(line.hasPrefix("[spotd] Job j1 requeued: &lt;!channel&gt; &lt;https://evil.example|click&gt; &amp;amp;"), "\(line)")
        #expect(!line.contains("<") && !line.contains(">"))
    }

    /// Bad subscriptions are refused with a problem naming the field, and change nothing.
    @Test func badSubscriptionsAreRefused() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            let before = try env.digest()
            for (status, body, field) in [
                (HTTPResponse.Status.badRequest, #"{"url":"ftp://x/hook","events":["*"]}"#, "url"),
                (.unprocessableContent, #"{"url":"http:///hook","events":["*"]}"#, "url"),
                (.unprocessableContent, #"{"url":"http://x/hook#frag","events":["*"]}"#, "url"),
                (.unprocessableContent, #"{"url":"http://x:99999/hook","events":["*"]}"#, "url"),
                (.unprocessableContent, #"{"url":"http://x:18610000000000000000000/hook","events":["*"]}"#, "url"),
                (.unprocessableContent, #"{"url":"http://user:pw@x/hook","events":["*"]}"#, "url"),
                (.badRequest, #"{"url":"http://x/h ok","events":["*"]}"#, "url"), (.badRequest, #"{"url":"","events":["*"]}"#, "url"),
                (.badRequest, #"{"url":"http://x/hook","events":[]}"#, "events"),
                (.badRequest, #"{"url":"http://x/hook","events":["Node.*"]}"#, "events[0]"),
                (.badRequest, #"{"url":"http://x/hook","events":["node."]}"#, "events[0]"),
                (.badRequest, #"{"url":"http://x/hook","events":[7]}"#, "events[0]"),
                (.badRequest, #"{"url":"http://x/hook","events":["*"],"format":"xml"}"#, "format"),
                (.badRequest, #"{"url":"http://x/hook","events":["*"],"extra":1}"#, "extra"), (.badRequest, #"{"events":["*"]}"#, "url"),
            ] {
                let problem = try await client.expectProblem(status, .post, "/v1/subscriptions", body)
                #expect(problem["field"]?.string == field, "\(body): \(problem.text)")
            }
            #expect(try env.digest() == before)
            try await client.expect(.notFound, .get, "/v1/subscriptions/sub-nope")
        }
    }

    /// Delivery is at least once across a crash: spotd is SIGKILLed with events undelivered (the receiver was
    /// refusing them); after a restart they all arrive, in order.
    @Test func undeliveredEventsSurviveSigkill() async throws {
        let receiver = Receiver()
        receiver.failing = true
        try await withLoopbackProvisioner(receiver.router) { port in
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-sub-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let serverPort = freePort()
            let first = SpotdProcess(directory: directory, port: serverPort)
            try await first.start()
            #expect(try await first.request("POST", "/v1/pools", Seed.pool("spot-a", "spot")).0 == 201)
            let (status, created) = try await first.request(
                "POST", "/v1/subscriptions", #"{"url":"http://127.0.0.1:\#(port)/hook","events":["node.*"]}"#)
            #expect(status == 201)
            let secret = try #require(created["secret"]?.string)
            for index in 0..<5 {
                #expect(try await first.request("POST", "/v1/nodes", Seed.node("n\(index)", pool: "spot-a")).0 == 201)
            }
            #expect(try await first.eventually { receiver.refused > 0 }, "a delivery was tried and refused")
            first.kill(SIGKILL)
            receiver.failing = false
            let second = SpotdProcess(directory: directory, port: serverPort)
            try await second.start()
            defer { second.kill(SIGTERM) }
            #expect(try await second.eventually { Set(receiver.received.map(\.eventId)).count >= 5 })
            let registered = try await second.request("GET", "/v1/events?type=node.registered").1["items"]?.array.compactMap {
                $0["id"]?.int
            }
            // At least once: an event whose 2xx came back just as the lease moved on (a renewal late under load) is sent
            // again, right after itself; nothing else may repeat, and nothing is lost or out of order.
            let delivered = receiver.received.map(\.eventId)
            let once = delivered.enumerated().filter { $0.offset == 0 || delivered[$0.offset - 1] != $0.element }.map(\.element)
            #expect(once == registered, "in order, none lost: \(delivered)")
            #expect(delivered.count <= (registered?.count ?? 0) + 1, "at most one event again: \(delivered)")
            #expect(receiver.received.allSatisfy { Receiver.signed($0, secret: secret) })
        }
    }
}
