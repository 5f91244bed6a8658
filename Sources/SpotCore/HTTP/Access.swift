import Crypto
import Foundation
import HTTPTypes
import Hummingbird

/// What a route needs. Each route declares its own when it is registered (`RouteBook.add`), and the wrapper that
/// serves it checks it: the check cannot be reached by one spelling of a path and missed by another.
public enum Access: String, Sendable, CaseIterable {
    /// No token needed: `/healthz`, `/readyz`.
    case open
    /// Any role but `notifier`.
    case read
    /// Post interruption notices.
    case notify
    /// Nodes and jobs, read: every reader, and node agents.
    case readWork
    /// Reports on work that runs: checkpoints, complete, fail, a replica ready (schedulers and node agents).
    case report
    /// Jobs and placements.
    case schedule
    /// Everything but tokens.
    case operate
    /// Tokens.
    case admin

    public func allows(_ role: Role) -> Bool {
        switch self {
        case .open: true
        case .admin: role == .admin
        case .operate: role == .admin || role == .operator
        case .schedule: role == .admin || role == .operator || role == .scheduler
        case .notify: role == .admin || role == .operator || role == .notifier || role == .agent
        case .read: role != .notifier && role != .agent
        case .readWork: role != .notifier
        case .report: role == .admin || role == .operator || role == .scheduler || role == .agent
        }
    }
}

/// Bearer-token authentication and the per-route role check; on when an admin token is configured.
struct Authorizer: Sendable {
    let store: any AccessStore
    /// SHA-256 of the configured admin token; nil means auth is off.
    let adminTokenHash: [UInt8]?

    init(store: any AccessStore, adminToken: String?) {
        self.store = store
        self.adminTokenHash = adminToken.map { Array(SHA256.hash(data: Data($0.utf8))) }
    }

    /// Who is calling, once they may call a route that needs `access`: 401 without a valid token, 403 for a role
    /// that may not.
    func caller(for request: Request, access: Access) async throws -> Caller {
        guard adminTokenHash != nil else { return .anonymous }
        guard access != .open else { return .unauthenticated }
        let secret: String
        if let header = request.headers[.authorization] {
            guard header.utf8.count <= 512, header.prefix(7).lowercased() == "bearer " else {
                throw Problem.unauthorized("a bearer token is required (Authorization: Bearer <token>)")
            }
            secret = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        } else if request.method == .get || request.method == .head, let session = Session.token(in: request.headers) {
            // The status page's sign-in: a cookie stands for the token on reads only, so a page another site makes
            // a browser submit (SameSite=Strict stops that anyway) could change nothing.
            secret = session
        } else {
            throw Problem.unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        }
        guard let caller = try await identify(secret: secret) else {
            throw Problem.unauthorized("the bearer token is unknown or revoked")
        }
        guard access.allows(caller.role) else {
            throw Problem.forbidden("role \(caller.role.rawValue) may not \(request.method) \(request.uri.path)")
        }
        return caller
    }

    /// Whose token `secret` is: the admin token, or a live API token; nil for neither (or with auth off).
    func identify(secret: String) async throws -> Caller? {
        guard let adminTokenHash, secret.utf8.count <= 512 else { return nil }
        if Self.constantTimeEqual(Array(SHA256.hash(data: Data(secret.utf8))), adminTokenHash) {
            return Caller(name: "admin", role: .admin)
        }
        return try await store.token(secret: secret).map { Caller(name: $0.name, role: $0.role, tokenId: $0.id) }
    }

    static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
        return difference == 0
    }
}

/// The status page's session cookie, `spotd_session`: the token itself, percent-encoded, HttpOnly and
/// SameSite=Strict. Checked like a bearer token on every request, so revoking the token ends the session.
enum Session {
    static let cookie = "spotd_session"
    /// Twelve hours.
    static let maxAgeSeconds = 43_200

    /// The token a request's `Cookie` header carries, if any.
    static func token(in headers: HTTPFields) -> String? {
        for field in headers[values: .cookie] where field.utf8.count <= 4096 {
            for pair in field.split(separator: ";") {
                let trimmed = pair.trimmingCharacters(in: .whitespaces)
                guard trimmed.hasPrefix(cookie + "=") else { continue }
                let value = String(trimmed.dropFirst(cookie.count + 1))
                guard let token = value.removingPercentEncoding, !token.isEmpty else { return nil }
                return token
            }
        }
        return nil
    }

    /// The `Set-Cookie` value that signs a browser in with `token`; `Secure` when the browser came over https
    /// (a TLS-terminating proxy says so in `X-Forwarded-Proto`).
    static func setCookie(_ token: String, secure: Bool) -> String {
        let encoded = token.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
        return "\(cookie)=\(encoded); Path=/; Max-Age=\(maxAgeSeconds); HttpOnly; SameSite=Strict" + (secure ? "; Secure" : "")
    }

    /// Whether the browser reached spotd over https.
    static func overHTTPS(_ request: Request) -> Bool {
        request.uri.scheme == .https
            || request.headers[HTTPField.Name("X-Forwarded-Proto")!]?.lowercased().hasPrefix("https") == true
    }

    /// The `Set-Cookie` value that signs a browser out.
    static let clearCookie = "\(cookie)=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
}
