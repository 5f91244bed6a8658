import Crypto
import Foundation

extension SpotStore {
    /// Events after `since` (an event id), optionally of one type, oldest first.
    func events(since: Int64, type: String?, limit: Int) async throws -> [Event] {
        try await read { db in
            if let type {
                return try Row.fetchAll(
                    db.cachedStatement(sql: "SELECT * FROM events WHERE id > ? AND type = ? ORDER BY id LIMIT ?"),
                    arguments: [since, type, limit]
                ).map(Event.init(row:))
            }
            return try Row.fetchAll(
                db.cachedStatement(sql: "SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?"), arguments: [since, limit]
            )
            .map(Event.init(row:))
        }
    }

    func lastEventId() async throws -> Int64 {
        try await read { db in try Int64.fetchOne(db.cachedStatement(sql: "SELECT COALESCE(MAX(id), 0) FROM events")) ?? 0 }
    }

    // MARK: - Tokens

    static func hashSecret(_ secret: String) -> String {
        Hex.encode(SHA256.hash(data: Data(secret.utf8)))
    }

    /// Creates a token; the secret is returned once and only its hash is stored.
    func createToken(name: String, role: Role, actor: String) async throws -> (Token, String) {
        var bytes = [UInt8](repeating: 0, count: 32)
        var generator = SystemRandomNumberGenerator()
        for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255, using: &generator) }
        let secret = "spotd_" + Hex.encode(bytes)
        let token = Token(id: Ids.new("tok"), name: name, role: role, createdAt: clock.now())
        try await write { db in
            // Names are unique among all tokens, revoked ones too: the event log names actors by token name.
            if try String.fetchOne(db.cachedStatement(sql: "SELECT id FROM tokens WHERE lower(name) = lower(?)"), arguments: [name]) != nil
            {
                throw StoreError.conflict("a token named '\(name)' (in some case) exists or existed; token names are never reused")
            }
            try db.cachedStatement(sql: "INSERT INTO tokens (id, name, role, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)").execute(
                arguments: [token.id, name, role.rawValue, Self.hashSecret(secret), token.createdAt])
            try db.appendEvent(
                "token.created", subject: "tokens/\(token.id)", actor: actor, at: token.createdAt,
                data: ["name": .string(name), "role": .string(role.rawValue)])
        }
        return (token, secret)
    }

    func listTokens(_ page: PageRequest) async throws -> Page<Token> {
        try await read { db in
            Self.page(
                try Row.fetchAll(
                    db.cachedStatement(
                        sql: "SELECT seq, id, name, role, created_at FROM tokens WHERE revoked_at IS NULL AND seq > ? ORDER BY seq LIMIT ?"),
                    arguments: [page.after, page.limit + 1]), limit: page.limit
            ) { Token(id: $0["id"], name: $0["name"], role: Role(rawValue: $0["role"]) ?? .viewer, createdAt: $0["created_at"]) }
        }
    }

    func revokeToken(_ id: String, actor: String) async throws {
        try await write { [self] db in
            let now = clock.now()
            try db.cachedStatement(sql: "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL").execute(arguments: [
                now, id,
            ])
            guard db.changesCount == 1 else { throw StoreError.notFound(what: "token", id: id) }
            try db.appendEvent("token.revoked", subject: "tokens/\(id)", actor: actor, at: now)
        }
    }

    /// The live token whose secret this is.
    func token(secret: String) async throws -> Token? {
        try await read { db in
            try Row.fetchOne(
                db.cachedStatement(sql: "SELECT id, name, role, created_at FROM tokens WHERE secret_hash = ? AND revoked_at IS NULL"),
                arguments: [Self.hashSecret(secret)]
            ).map { Token(id: $0["id"], name: $0["name"], role: Role(rawValue: $0["role"]) ?? .viewer, createdAt: $0["created_at"]) }
        }
    }

}

/// Counts for `/v1/summary` and the metrics.
struct StoreSummary: Sendable {
    var pools: [(Pool, PoolStats)]
    var jobs: [Tier: [JobState: Int]]
    /// Multi-node jobs by state (counted in `jobs` too).
    var gangs: [JobState: Int] = [:]
    /// Inference services: how many, replicas wanted, replicas ready.
    var services = (count: 0, replicas: 0, ready: 0)
    var activeInterruptions: Int
    var pendingProvisioning: Int
    /// Releases asked of the provider and not yet acknowledged.
    var pendingReleases = 0
    /// Subscriptions whose last delivery attempt failed.
    var failingSubscriptions = 0
}

extension SpotStore {
    // MARK: - Summary

    func summary() async throws -> StoreSummary {
        try await read { [self] db in
            let now = clock.now()
            let stats = try Self.poolStats(db, now: now)
            let pools = try Pool.fetchAll(db.cachedStatement(sql: "SELECT \(Pool.columns) FROM pools ORDER BY seq"))
            var jobs: [Tier: [JobState: Int]] = [:]
            for row in try Row.fetchAll(db.cachedStatement(sql: "SELECT tier, state, COUNT(*) AS n FROM jobs GROUP BY tier, state")) {
                guard let tier = Tier(rawValue: row["tier"]), let state = JobState(rawValue: row["state"]) else { continue }
                jobs[tier, default: [:]][state] = row["n"]
            }
            var gangs: [JobState: Int] = [:]
            for row in try Row.fetchAll(db.cachedStatement(sql: "SELECT state, COUNT(*) AS n FROM jobs WHERE nodes > 1 GROUP BY state")) {
                guard let state = JobState(rawValue: row["state"]) else { continue }
                gangs[state] = row["n"]
            }
            let services = try Row.fetchOne(
                db.cachedStatement(
                    sql: """
                        SELECT COUNT(*), COALESCE(SUM(replicas), 0),
                            (SELECT COUNT(*) FROM service_replicas WHERE state = 'ready') FROM services
                        """))
            let active =
                try Int.fetchOne(
                    db.cachedStatement(sql: "SELECT COUNT(*) FROM interruptions WHERE state IN ('received', 'draining', 'drained')")) ?? 0
            let pending =
                try Int.fetchOne(db.cachedStatement(sql: "SELECT COUNT(*) FROM provisioning_requests WHERE state = 'pending'")) ?? 0
            let releases = try Int.fetchOne(db.cachedStatement(sql: "SELECT COUNT(*) FROM node_releases WHERE state = 'pending'")) ?? 0
            return StoreSummary(
                pools: pools.map { ($0, stats[$0.name] ?? PoolStats()) }, jobs: jobs, gangs: gangs,
                services: (services?[0] ?? 0, services?[1] ?? 0, services?[2] ?? 0), activeInterruptions: active,
                pendingProvisioning: pending, pendingReleases: releases, failingSubscriptions: try Self.failingSubscriptions(db))
        }
    }

}
