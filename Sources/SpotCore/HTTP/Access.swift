import Crypto
import Foundation
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
        case .notify: role == .admin || role == .operator || role == .notifier
        case .read: role != .notifier
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
        guard let adminTokenHash else { return .anonymous }
        guard access != .open else { return .unauthenticated }
        guard let header = request.headers[.authorization], header.utf8.count <= 512, header.prefix(7).lowercased() == "bearer "
        else {
            throw Problem.unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        }
        let secret = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        let caller: Caller
        if Self.constantTimeEqual(Array(SHA256.hash(data: Data(secret.utf8))), adminTokenHash) {
            caller = Caller(name: "admin", role: .admin)
        } else if let token = try await store.token(secret: secret) {
            caller = Caller(name: token.name, role: token.role, tokenId: token.id)
        } else {
            throw Problem.unauthorized("the bearer token is unknown or revoked")
        }
        guard access.allows(caller.role) else {
            throw Problem.forbidden("role \(caller.role.rawValue) may not \(request.method) \(request.uri.path)")
        }
        return caller
    }

    static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
        return difference == 0
    }
}
