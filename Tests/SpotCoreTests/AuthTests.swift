import Foundation
import HTTPTypes
import HummingbirdTesting
import Testing

@testable import SpotCore

@Suite("Tokens, roles and signed webhooks")
struct AuthTests {
    static let admin = "admin-token-for-tests-0123456789"

    func bearer(_ token: String) -> HTTPFields { [.authorization: "Bearer \(token)"] }

    @Test func roleMatrix() async throws {
        let env = try TestEnv { $0.adminToken = Self.admin }
        try await env.app().test(.router) { client in
            let adminHeaders = bearer(Self.admin)
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od", "on_demand"), headers: adminHeaders)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("o1", pool: "od"), headers: adminHeaders)
            var tokens: [Role: String] = [.admin: Self.admin]
            for role in [Role.operator, .scheduler, .notifier, .viewer] {
                let created = try await client.expect(
                    .created, .post, "/v1/tokens", #"{"name":"\#(role.rawValue)-bot","role":"\#(role.rawValue)"}"#, headers: adminHeaders)
                tokens[role] = try #require(created["token"]?.string)
            }
            // (method, path, body, roles allowed)
            let matrix: [(HTTPRequest.Method, String, String?, Set<Role>)] = [
                (.get, "/v1/pools", nil, [.admin, .operator, .scheduler, .viewer]),
                (.get, "/v1/nodes", nil, [.admin, .operator, .scheduler, .viewer]),
                (.get, "/v1/jobs", nil, [.admin, .operator, .scheduler, .viewer]),
                (.get, "/v1/interruptions", nil, [.admin, .operator, .scheduler, .viewer]),
                (.get, "/v1/events", nil, [.admin, .operator, .scheduler, .viewer]),
                (.get, "/v1/summary", nil, [.admin, .operator, .scheduler, .viewer]),
                (.get, "/v1/policies", nil, [.admin, .operator, .scheduler, .viewer]),
                (.get, "/v1/provisioning-requests", nil, [.admin, .operator, .scheduler, .viewer]),
                (.get, "/metrics", nil, [.admin, .operator, .scheduler, .viewer]),
                (.get, "/v1/tokens", nil, [.admin]),
                (.post, "/v1/jobs", #"{"tier":"standard","gpus":1}"#, [.admin, .operator, .scheduler]),
                (.post, "/v1/placements", #"{"job_id":"none"}"#, [.admin, .operator, .scheduler]),
                (.post, "/v1/interruptions", #"{"node_id":"ghost","kind":"rebalance"}"#, [.admin, .operator, .notifier]),
                (.post, "/v1/nodes/o1/cordon", nil, [.admin, .operator]),
                (.post, "/v1/pools", Seed.pool("x", "spot"), [.admin, .operator]),
                (.put, "/v1/policies/standard", #"{"capacity_types":["on_demand","spot"]}"#, [.admin, .operator]),
                (.post, "/v1/tokens", #"{"name":"n","role":"viewer"}"#, [.admin]),
            ]
            for (method, path, body, allowed) in matrix {
                for (role, token) in tokens {
                    let reply = try await client.call(method, path, body, headers: bearer(token))
                    if allowed.contains(role) {
                        #expect(reply.status != .forbidden && reply.status != .unauthorized, "\(role) \(method) \(path): \(reply.text)")
                    } else {
                        #expect(reply.status == .forbidden, "\(role) \(method) \(path) should be 403, got \(reply.status.code)")
                    }
                }
                #expect(try await client.call(method, path, body).status == .unauthorized, "anonymous \(method) \(path)")
            }
            #expect(try await client.call(.get, "/healthz").status == .ok)
            // The scheme name is case-insensitive (RFC 9110).
            #expect(try await client.call(.get, "/v1/pools", headers: [.authorization: "bearer \(Self.admin)"]).status == .ok)
            #expect(try await client.call(.get, "/readyz").status == .ok)
            let wrong = try await client.expectProblem(.unauthorized, .get, "/v1/pools", headers: bearer("nope"))
            #expect(wrong.headers[.wwwAuthenticate] == "Bearer")
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
    }
}
