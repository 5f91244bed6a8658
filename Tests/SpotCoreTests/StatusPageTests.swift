import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@testable import SpotCore

@Suite("Status page")
struct StatusPageTests {
    static let admin = "admin-token-for-status-page-tests"

    /// Sign-in: no credentials → /login; a wrong or notifier token is refused there; a viewer token gets an HttpOnly,
    /// SameSite=Strict cookie that reads the page, but writes nothing; revoking the token ends the session.
    @Test func signInWithACookieThatOnlyReads() async throws {
        let env = try TestEnv { $0.adminToken = Self.admin }
        try await env.app().test(.router) { client in
            let admin: HTTPFields = [.authorization: "Bearer \(Self.admin)"]
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-a", "spot"), headers: admin)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"), headers: admin)
            let viewer = try #require(
                try await client.expect(.created, .post, "/v1/tokens", #"{"name":"wall","role":"viewer"}"#, headers: admin)["token"]?.string
            )
            let notifier = try #require(
                try await client.expect(.created, .post, "/v1/tokens", #"{"name":"hook","role":"notifier"}"#, headers: admin)["token"]?
                    .string)

            let anonymous = try await client.call(.get, "/")
            #expect(anonymous.status == .seeOther && anonymous.headers[.location] == "/login")
            #expect(try await client.call(.get, "/login").text.contains(#"name="token""#))
            let form: HTTPFields = [.contentType: "application/x-www-form-urlencoded"]
            let wrong = try await client.call(.post, "/login", "token=nope", headers: form)
            #expect(wrong.status == .unauthorized && wrong.text.contains("unknown or revoked") && wrong.headers[.setCookie] == nil)
            #expect(try await client.call(.post, "/login", "token=\(notifier)", headers: form).status == .forbidden)

            // A form posted from another site (login CSRF) is refused; the server's own origin is taken.
            var foreign = form
            foreign[HTTPField.Name("Origin")!] = "https://evil.example"
            #expect(try await client.call(.post, "/login", "token=\(viewer)", headers: foreign).status == .forbidden)
            let signedIn = try await client.call(.post, "/login", "token=\(viewer)", headers: form)
            #expect(signedIn.status == .seeOther && signedIn.headers[.location] == "/")
            let setCookie = try #require(signedIn.headers[.setCookie])
            #expect(setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Strict"))
            let cookie = String(setCookie.prefix { $0 != ";" })
            let page = try await client.call(.get, "/", headers: [.cookie: cookie])
            #expect(page.status == .ok && page.headers[.contentType]?.hasPrefix("text/html") == true)
            #expect(page.text.contains(#"<tr data-pool="spot-a">"#) && page.text.contains("signed in as wall (viewer)"))
            // The session reads, and only reads: a write with the cookie is not authenticated.
            #expect(try await client.call(.get, "/v1/summary", headers: [.cookie: cookie]).status == .ok)
            let write = try await client.call(.post, "/v1/nodes/s1/cordon", "{}", headers: [.cookie: cookie])
            #expect(write.status == .unauthorized)
            #expect(try await client.call(.get, "/v1/nodes/s1", headers: admin)["state"]?.string == "ready")
            // A bearer token gets the page too, and the live part alone.
            let part = try await client.call(.get, "/?part=live", headers: admin)
            #expect(part.status == .ok && part.text.hasPrefix(#"<section id="pools">"#))
            try await client.expectProblem(.badRequest, .get, "/?part=all", headers: admin)
            // Revoked: the cookie no longer signs in.
            let tokenId = try #require(
                try await client.call(.get, "/v1/tokens", headers: admin)["items"]?.array.first { $0["name"]?.string == "wall" }?["id"]?
                    .string)
            try await client.expect(.noContent, .delete, "/v1/tokens/\(tokenId)", headers: admin)
            #expect(try await client.call(.get, "/", headers: [.cookie: cookie]).status == .seeOther)
        }
    }

    /// Every value from the store is escaped: a timeline detail holding markup shows as text.
    @Test func valuesAreEscaped() {
        // A quote or a bracket followed by a combining mark is one Character, and still escaped.
        #expect(StatusHTML.escape("\"\u{338} <\u{301}") == "&quot;\u{338} &lt;\u{301}")
        #expect(
            StatusHTML.escape(#"<script>alert("x")</script> & 'y'"#)
                == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;")
        let event = Event(id: 7, at: 0, type: "node.cordoned", subject: "nodes/<b>", actor: "a&b", data: .object([:]))
        #expect(StatusHTML.eventItem(event).contains("nodes/&lt;b&gt;") && StatusHTML.eventItem(event).contains("by a&amp;b"))
    }

    /// With auth off there is no sign-in: /login goes to the page.
    @Test func noSignInWithAuthOff() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            #expect(try await client.call(.get, "/login").headers[.location] == "/")
            let page = try await client.call(.get, "/")
            #expect(page.status == .ok && page.text.contains("No pools yet") && page.text.contains("No active interruptions"))
            #expect(page.text.contains("auth off"))
        }
    }

    static var chromium: String? {
        if let configured = ProcessInfo.processInfo.environment["SPOTD_CHROMIUM"] { return configured }
        return ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
    }

    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The page in a real browser: headless Chromium signs in with a viewer token through the form, sees the pool
    /// rows, and, without reloading, the timeline of a node's interruption once its notice is posted. Screenshots
    /// (desktop and phone width) are left under `.build/` for a person to look at.
    @Test func inARealBrowserTheTimelineAppearsLive() async throws {
        guard let chromium = Self.chromium else {
            #expect(
                ProcessInfo.processInfo.environment["SPOTD_REQUIRE_CHROMIUM"] != "1",
                "SPOTD_REQUIRE_CHROMIUM=1 but no chromium was found (install Debian's chromium, or set SPOTD_CHROMIUM)")
            return
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-browser-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = SpotdProcess(directory: directory, port: freePort(), extra: ["--admin-token", Self.admin])
        server.token = Self.admin
        try await server.start()
        defer { server.kill(SIGTERM) }
        #expect(try await server.request("POST", "/v1/pools", Seed.pool("aws-h100-spot-use1a", "spot")).0 == 201)
        #expect(try await server.request("POST", "/v1/pools", Seed.pool("aws-h100-od-use1a", "on_demand", price: 98)).0 == 201)
        for id in ["i-0a1", "i-0a2", "i-0a3"] {
            #expect(try await server.request("POST", "/v1/nodes", Seed.node(id, pool: "aws-h100-spot-use1a")).0 == 201)
        }
        #expect(try await server.request("POST", "/v1/nodes", Seed.node("i-0d1", pool: "aws-h100-od-use1a")).0 == 201)
        #expect(
            try await server.request("POST", "/v1/jobs", Seed.job("train-1", tier: "best_effort", gpus: 8, checkpointable: true)).0 == 201)
        #expect(try await server.request("POST", "/v1/jobs", Seed.job("serve-1", tier: "premium", gpus: 4)).0 == 201)
        let (_, created) = try await server.request("POST", "/v1/tokens", #"{"name":"wall-screen","role":"viewer"}"#)
        let viewer = try #require(created["token"]?.string)
        // The node that holds the best-effort job gets the notice.
        #expect(try await server.eventually { try await server.request("GET", "/v1/jobs/train-1").1["state"]?.string == "running" })
        let node = try #require(try await server.request("GET", "/v1/jobs/train-1").1["node_id"]?.string)

        let build = Self.root.appendingPathComponent(".build")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "python3", Self.root.appendingPathComponent("scripts/status_page_check.py").path, "--chromium", chromium, "--base-url",
            "http://127.0.0.1:\(server.port)", "--token", viewer, "--notice-token", Self.admin, "--node", node, "--notice-body",
            #"{"node_id":"\#(node)","kind":"termination","notice_seconds":120}"#, "--screenshot",
            build.appendingPathComponent("status-page.png").path, "--phone-screenshot",
            build.appendingPathComponent("status-page-phone.png").path,
        ]
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let stdout = output.fileHandleForReading.readDataToEndOfFile()
        let stderr = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let report = (try? JSONValue.parse(stdout)) ?? .null
        #expect(
            process.terminationStatus == 0,
            "the browser check failed: \(String(decoding: stdout, as: UTF8.self)) \(String(decoding: stderr.suffix(2000), as: UTF8.self))")
        #expect(report["pools"]?.array.compactMap(\.string) == ["aws-h100-spot-use1a", "aws-h100-od-use1a"])
        let rows = report["pool_rows"]?.array.compactMap(\.string) ?? []
        #expect(rows.first?.contains("3 ready") == true, "\(rows)")
        let steps = report["timeline"]?.array.compactMap { $0["step"]?.string } ?? []
        #expect(steps.starts(with: ["received", "cordoned"]), "\(steps)")
        #expect(report["phone"]?["scroll_width"]?.int.map { $0 <= 391 } == true)
    }
}
