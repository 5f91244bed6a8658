import Crypto
import Foundation
import Hummingbird

/// What a request needs, by method and path: the whole role matrix lives here.
enum Access: Equatable {
    case open
    case read
    case notify
    case schedule
    case operate
    case admin

    static func required(method: HTTPRequest.Method, path: String) -> Access {
        if path == "/healthz" || path == "/readyz" { return .open }
        if path.hasPrefix("/v1/tokens") { return .admin }
        if method == .get || method == .head { return .read }
        if path.hasPrefix("/v1/interruptions") { return .notify }
        if path.hasPrefix("/v1/jobs") || path == "/v1/placements" { return .schedule }
        return .operate
    }

    func allows(_ role: Role) -> Bool {
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

/// Bearer-token auth, on when an admin token is configured: 401 without a valid token, 403 for a role that may not.
struct AuthMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext
    let store: AppDatabase
    /// SHA-256 of the configured admin token; nil means auth is off.
    let adminTokenHash: [UInt8]?

    init(store: AppDatabase, adminToken: String?) {
        self.store = store
        self.adminTokenHash = adminToken.map { Array(SHA256.hash(data: Data($0.utf8))) }
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let access = Access.required(method: request.method, path: request.uri.path)
        guard let adminTokenHash, access != .open else { return try await next(request, context) }
        guard let header = request.headers[.authorization], header.prefix(7).lowercased() == "bearer ", header.utf8.count <= 512 else {
            throw Problem.unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        }
        let secret = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        var context = context
        if Self.constantTimeEqual(Array(SHA256.hash(data: Data(secret.utf8))), adminTokenHash) {
            context.caller = Caller(name: "admin", role: .admin)
        } else if let token = try await store.token(secret: secret) {
            context.caller = Caller(name: token.name, role: token.role)
        } else {
            throw Problem.unauthorized("the bearer token is unknown or revoked")
        }
        guard access.allows(context.caller.role) else {
            throw Problem.forbidden("role \(context.caller.role.rawValue) may not \(request.method) \(request.uri.path)")
        }
        return try await next(request, context)
    }

    static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
        return difference == 0
    }
}
