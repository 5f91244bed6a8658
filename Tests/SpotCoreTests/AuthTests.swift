import Foundation
import HTTPTypes
import HummingbirdTesting
import Testing

@testable import SpotCore

@Suite("Tokens, roles and signed webhooks")
struct AuthTests {
    static let admin = "admin-token-for-tests-0123456789"

    func bearer(_ token: String) -> HTTPFields { [.authorization: "Bearer \(token)"] }

    static let readers: Set<Role> = [.admin, .operator, .scheduler, .viewer]
    /// Nodes and jobs: the readers, and node agents.
    static let workReaders: Set<Role> = [.admin, .operator, .scheduler, .viewer, .agent]
    /// Reports on running work: schedulers and node agents.
    static let reporters: Set<Role> = [.admin, .operator, .scheduler, .agent]
    static let notifiers: Set<Role> = [.admin, .operator, .notifier, .agent]
    static let schedulers: Set<Role> = [.admin, .operator, .scheduler]
    static let operators: Set<Role> = [.admin, .operator]
    static let admins: Set<Role> = [.admin]

    /// The role matrix of the product contract, written out by hand for every route: "method template" -> the roles
    /// that may call it (nil: no token needed). The test fails when a route is added without a row here.
    static let matrix: [String: Set<Role>?] = [
        "GET /healthz": nil, "GET /readyz": nil, "GET /metrics": readers, "GET /v1/summary": readers, "GET /v1/reports/cost": readers,
        "POST /v1/pools": operators, "GET /v1/pools": readers, "GET /v1/pools/:name": readers,
        "PATCH /v1/pools/:name": operators, "DELETE /v1/pools/:name": operators,
        "POST /v1/nodes": operators, "GET /v1/nodes": workReaders, "GET /v1/nodes/:id": workReaders,
        "POST /v1/nodes/:id/cordon": operators, "POST /v1/nodes/:id/uncordon": operators, "POST /v1/nodes/:id/drain": operators,
        "DELETE /v1/nodes/:id": operators,
        "POST /v1/jobs": schedulers, "GET /v1/jobs": workReaders, "GET /v1/jobs/:id": workReaders,
        "POST /v1/jobs/:id/checkpoints": reporters, "POST /v1/jobs/:id/complete": reporters, "POST /v1/jobs/:id/fail": reporters,
        "POST /v1/jobs/:id/cancel": schedulers, "POST /v1/placements": schedulers,
        "POST /v1/services": schedulers, "GET /v1/services": readers, "GET /v1/services/:id": readers,
        "PATCH /v1/services/:id": schedulers, "DELETE /v1/services/:id": schedulers,
        "POST /v1/services/:id/replicas/:rid/ready": reporters,
        "POST /v1/interruptions": notifiers, "POST /v1/interruptions/aws": notifiers, "POST /v1/interruptions/gcp": notifiers,
        "POST /v1/interruptions/azure": notifiers, "GET /v1/interruptions": readers, "GET /v1/interruptions/:id": readers,
        "GET /v1/provisioning-requests": readers, "GET /v1/provisioning-requests/:id": readers,
        "GET /v1/policies": readers, "PUT /v1/policies/:tier": operators,
        "GET /v1/events": readers, "GET /v1/events/stream": readers,
        "POST /v1/tokens": admins, "GET /v1/tokens": admins, "DELETE /v1/tokens/:id": admins,
        "POST /v1/subscriptions": operators, "GET /v1/subscriptions": readers, "GET /v1/subscriptions/:id": readers,
        "DELETE /v1/subscriptions/:id": operators,
        "POST /v1/drills": operators, "GET /v1/drills": readers, "GET /v1/drills/:id": readers,
        "GET /": readers, "GET /login": nil, "POST /login": nil, "POST /logout": nil,
    ]

    /// Ways of writing one path that a router may resolve to the same route.
    static func spellings(_ path: String) -> [String] {
        let rest = path.dropFirst()
        var forms = [path, "/" + path, "//" + rest, path + "/"]
        if let slash = rest.firstIndex(of: "/") {
            forms.append("/" + rest[..<slash] + "//" + rest[rest.index(after: slash)...])
            forms.append("/" + rest[..<slash] + "/./" + rest[rest.index(after: slash)...])
        }
        return forms
    }

    /// Every route x every role x several spellings of its path: a role the contract does not allow gets 403 (or, for a
    /// spelling no route has, 404) and changes nothing; an allowed role is never refused, and never gets a 5xx.
    @Test func everyRouteEveryRoleEverySpelling() async throws {
        let env = try TestEnv { $0.adminToken = Self.admin }
        let routes = registeredRoutes(env.runtime)
        #expect(Set(routes.map { "\($0.method) \($0.path)" }) == Set(Self.matrix.keys), "the hand-written matrix and the router differ")
        try await env.app().test(.router) { client in
            let adminHeaders = bearer(Self.admin)
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od", "on_demand"), headers: adminHeaders)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("o1", pool: "od"), headers: adminHeaders)
            var tokens: [Role: String] = [.admin: Self.admin]
            for role in [Role.operator, .scheduler, .notifier, .viewer, .agent] {
                let created = try await client.expect(
                    .created, .post, "/v1/tokens", #"{"name":"\#(role.rawValue)-bot","role":"\#(role.rawValue)"}"#, headers: adminHeaders)
                tokens[role] = try #require(created["token"]?.string)
            }
            let tokenId = try #require(
                try await client.call(.get, "/v1/tokens", headers: adminHeaders)["items"]?.array.first?["id"]?.string)
            for route in routes {
                let allowed = Self.matrix["\(route.method) \(route.path)"] ?? nil
                let path = route.path.replacingOccurrences(of: ":tier", with: "standard").replacingOccurrences(of: ":name", with: "od")
                    .replacingOccurrences(of: ":rid", with: "r1")
                    .replacingOccurrences(of: ":id", with: route.path.hasPrefix("/v1/tokens") ? tokenId : "o1")
                let body: String? = [.post, .put, .patch].contains(route.method) ? "{}" : nil
                for role in Role.allCases {
                    let token = tokens[role]!
                    if let allowed, !allowed.contains(role) {
                        let before = try env.snapshot()
                        for spelling in Self.spellings(path) {
                            let reply = try await client.call(route.method, spelling, body, headers: bearer(token))
                            #expect(
                                reply.status == .forbidden || reply.status == .notFound || reply.status == .methodNotAllowed,
                                "\(role) \(route.method) \(spelling) answered \(reply.status.code): \(reply.text)")
                        }
                        #expect(try env.snapshot() == before, "\(role) \(route.method) \(path) changed the store")
                        let canonical = try await client.call(route.method, path, body, headers: bearer(token))
                        #expect(canonical.status == .forbidden, "\(role) \(route.method) \(path): \(canonical.status.code)")
                    } else if route.path != "/v1/events/stream" {
                        // (The stream never ends in this mode: it is tested live. Deletes go to an id that does not
                        // exist, so that the fixture stays.)
                        let target =
                            route.method == .delete
                            ? path.replacingOccurrences(of: "o1", with: "nope")
                                .replacingOccurrences(of: tokenId, with: "tok-nope").replacingOccurrences(of: "/od", with: "/nope") : path
                        let reply = try await client.call(route.method, target, body, headers: bearer(token))
                        #expect(
                            reply.status != .unauthorized && reply.status != .forbidden && reply.status.code < 500,
                            "\(role) \(route.method) \(target) answered \(reply.status.code): \(reply.text)")
                        if route.method == .delete { #expect(reply.status == .notFound, "\(role) \(route.method) \(target)") }
                    }
                }
                let anonymous = try await client.call(route.method, path, body)
                if route.path == "/" {
                    // The status page sends a browser without credentials to sign in.
                    #expect(anonymous.status == .seeOther, "anonymous \(route.method) \(path): \(anonymous.status.code)")
                } else if route.path == "/login" || route.path == "/logout" {
                    // Open, and answered in HTML: the form, a refusal of the empty form, or a redirect.
                    #expect(anonymous.status.code < 500 && anonymous.status != .forbidden, "anonymous \(route.method) \(path)")
                } else if allowed == nil {
                    #expect(anonymous.status == .ok, "anonymous \(route.method) \(path): \(anonymous.status.code)")
                } else {
                    #expect(anonymous.status == .unauthorized, "anonymous \(route.method) \(path): \(anonymous.status.code)")
                }
            }
            // Every token is still there: no role below admin reached DELETE /v1/tokens/{id} by any spelling.
            #expect(try await client.call(.get, "/v1/tokens", headers: adminHeaders)["items"]?.array.count == 5)
            // The scheme name is case-insensitive (RFC 9110).
            #expect(try await client.call(.get, "/v1/pools", headers: [.authorization: "bearer \(Self.admin)"]).status == .ok)
            let wrong = try await client.expectProblem(.unauthorized, .get, "/v1/pools", headers: bearer("nope"))
            #expect(wrong.headers[.wwwAuthenticate] == "Bearer")
        }
    }

    /// The absolute form of a request target (`POST http://host/v1/tokens`) is checked like any other spelling.
    @Test func absoluteFormTargetsAreCheckedToo() async throws {
        let env = try TestEnv { $0.adminToken = Self.admin }
        try await env.app().test(.live) { client in
            let created = try await client.expect(
                .created, .post, "/v1/tokens", #"{"name":"ops","role":"operator"}"#, headers: bearer(Self.admin))
            let operatorToken = try #require(created["token"]?.string)
            let port = try #require(client.port)
            let before = try env.snapshot()
            for target in ["http://127.0.0.1:\(port)/v1/tokens", "http://127.0.0.1:\(port)//v1/tokens", "//v1/tokens", "/v1//tokens"] {
                let socket = try RawSocket(port: port)
                let body = #"{"name":"escalated","role":"admin"}"#
                socket.send(
                    "POST \(target) HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \(operatorToken)\r\n"
                        + "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
                let answer = await socket.read(until: "}", timeoutSeconds: 5)
                #expect(answer.hasPrefix("HTTP/1.1 403") || answer.hasPrefix("HTTP/1.1 404"), "\(target): \(answer)")
            }
            #expect(try env.snapshot() == before)
        }
    }

    @Test func tokensAreHashedListedAndRevokedAtOnce() async throws {
        let env = try TestEnv { $0.adminToken = Self.admin }
        try await env.app().test(.router) { client in
            let created = try await client.expect(
                .created, .post, "/v1/tokens", #"{"name":"ci","role":"viewer"}"#, headers: bearer(Self.admin))
            let secret = try #require(created["token"]?.string)
            let id = try #require(created["id"]?.string)
            let listed = try await client.expect(.ok, .get, "/v1/tokens", headers: bearer(Self.admin))
            #expect(listed["items"]?[0]?["token"] == nil)
            #expect(!listed.text.contains(secret))
            try await client.expect(.ok, .get, "/v1/pools", headers: bearer(secret))
            try await client.expect(.noContent, .delete, "/v1/tokens/\(id)", headers: bearer(Self.admin))
            try await client.expectProblem(.unauthorized, .get, "/v1/pools", headers: bearer(secret))
            try await client.expectProblem(.notFound, .delete, "/v1/tokens/\(id)", headers: bearer(Self.admin))
            try await client.expectProblem(
                .badRequest, .post, "/v1/tokens", #"{"name":"x","role":"root"}"#, headers: bearer(Self.admin), field: "role")
            // The event log names who did it.
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("p", "spot"), headers: bearer(Self.admin))
            let events = try await client.call(.get, "/v1/events?type=pool.created", headers: bearer(Self.admin))
            #expect(events["items"]?[0]?["actor"] == .string("admin"))
        }
        // The secret never reaches the database file, only its hash.
        let files = try FileManager.default.contentsOfDirectory(atPath: env.directory.path)
        try await env.store.close()
        var bytes = Data()
        for file in files { bytes.append((try? Data(contentsOf: env.directory.appendingPathComponent(file))) ?? Data()) }
        #expect(bytes.range(of: Data("spotd_".utf8)) == nil)
    }

    @Test func signedWebhooks() async throws {
        let env = try TestEnv { $0.webhookSecret = "whsec-test" }
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-a", "spot"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            let body = #"{"node_id":"s1","kind":"termination","event_id":"sig-1"}"#
            let now = env.clock.now() / 1000
            func headers(_ timestamp: Int64, _ signature: String?) -> HTTPFields {
                var fields: HTTPFields = [HTTPField.Name("X-Spotd-Timestamp")!: String(timestamp)]
                if let signature { fields[HTTPField.Name("X-Spotd-Signature")!] = signature }
                return fields
            }
            let good = "sha256=" + Signature.hex(secret: "whsec-test", timestamp: String(now), body: Data(body.utf8))
            let before = try env.snapshot()
            try await client.expectProblem(.unauthorized, .post, "/v1/interruptions", body)
            try await client.expectProblem(.unauthorized, .post, "/v1/interruptions", body, headers: headers(now, nil))
            try await client.expectProblem(
                .unauthorized, .post, "/v1/interruptions", body, headers: headers(now, "sha256=" + String(repeating: "0", count: 64)))
            try await client.expectProblem(.unauthorized, .post, "/v1/interruptions", body + " ", headers: headers(now, good))
            let stale = "sha256=" + Signature.hex(secret: "whsec-test", timestamp: String(now - 301), body: Data(body.utf8))
            try await client.expectProblem(.unauthorized, .post, "/v1/interruptions", body, headers: headers(now - 301, stale))
            #expect(try env.snapshot() == before)
            try await client.expect(.accepted, .post, "/v1/interruptions", body, headers: headers(now, good))
        }
    }

    @Test func loopbackRefusalWithoutAuth() {
        var config = SpotConfig()
        config.host = "0.0.0.0"
        #expect(config.validate()?.description.contains("SPOTD_ADMIN_TOKEN") == true)
        config.adminToken = "long-enough-admin-token"
        #expect(config.validate() == nil)
        config.host = "127.0.0.1"
        config.adminToken = nil
        #expect(config.validate() == nil)
        // Loopback means a loopback address, not a name that starts like one.
        for host in ["127.example.com", "127.0.0.1.nip.io", "0.0.0.0", "10.0.0.1"] {
            config.host = host
            #expect(config.validate() != nil, "\(host)")
        }
        for host in ["127.0.0.1", "127.1.2.3", "localhost", "::1"] {
            config.host = host
            #expect(config.validate() == nil, "\(host)")
        }
    }
}
