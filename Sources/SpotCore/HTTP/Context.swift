import Foundation
import Hummingbird
import NIOCore
import Synchronization

/// Who is calling: set by the route's access check, read by handlers and written into events.
public struct Caller: Sendable, Equatable {
    public var name: String
    public var role: Role
    /// The API token's id; nil for the admin token and with auth off.
    public var tokenId: String?

    public init(name: String, role: Role, tokenId: String? = nil) {
        self.name = name
        self.role = role
        self.tokenId = tokenId
    }

    /// Auth is off: every caller may do everything.
    public static let anonymous = Caller(name: "anonymous", role: .admin)
    /// Auth is on and the route is open: nobody in particular.
    public static let unauthenticated = Caller(name: "anonymous", role: .viewer)
}

/// The request context of every spotd route.
public struct AppRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var caller: Caller = .anonymous
    /// Body bytes this request holds against the server-wide budget; set by `BodyBudgetMiddleware`.
    var bodyAccount: BodyAccount?
    /// Whether the route takes interruption notices: their bodies may use the budget's reserve.
    var takesNotices = false
    /// The connection, so that a long response (an event stream) can be cut off.
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
    }

    public var maxUploadSize: Int { RequestLimits.maxBody }

    /// A path parameter, percent-decoded (`a%3Ab` is `a:b`, as `encodeURIComponent` writes it). One that holds a
    /// control character names nothing that can exist (no stored name may hold one): 404, before any store sees it
    /// (PostgreSQL refuses a NUL in any text it is given).
    func pathParameter(_ name: String) throws -> String {
        let raw = try parameters.require(name)
        let value = raw.removingPercentEncoding ?? raw
        if value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            throw Problem(
                status: .notFound, type: "urn:spotd:problem:not-found", title: "Not found",
                detail: "nothing is named with a control character (path parameter \(name))")
        }
        return value
    }
}

enum RequestLimits {
    /// 1 MiB.
    static let maxBody = 1 << 20
}

/// The bytes of request bodies held in memory at once, across every request: a thousand slow senders must not
/// be able to make the server hold a thousand bodies.
final class BodyBudget: Sendable {
    let capacity: Int
    /// A body must arrive whole within this time of the handler starting to read it.
    let deadline: Duration
    private let used = Atomic<Int>(0)

    init(capacity: Int, deadline: Duration) {
        self.capacity = capacity
        self.deadline = deadline
    }

    /// Takes `bytes` from the budget; false (and nothing taken) when they do not fit. The last quarter of the budget
    /// is kept for interruption notices: clients of other routes holding bodies cannot keep a notice out.
    func reserve(_ bytes: Int, notice: Bool = false) -> Bool {
        let limit = notice ? capacity : capacity - capacity / 4
        var current = used.load(ordering: .relaxed)
        while true {
            guard bytes <= limit - current else { return false }
            let (exchanged, original) = used.compareExchange(
                expected: current, desired: current + bytes, successOrdering: .acquiring, failureOrdering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    func release(_ bytes: Int) {
        used.subtract(bytes, ordering: .releasing)
    }

    /// Bytes held now (for tests and metrics).
    var inUse: Int { used.load(ordering: .relaxed) }
}

/// What one request holds against the budget; given back when the request is answered.
final class BodyAccount: Sendable {
    let budget: BodyBudget
    private let held = Mutex(0)

    init(budget: BodyBudget) { self.budget = budget }

    func reserve(_ bytes: Int, notice: Bool) -> Bool {
        guard budget.reserve(bytes, notice: notice) else { return false }
        held.withLock { $0 += bytes }
        return true
    }

    func releaseAll() {
        let bytes = held.withLock { held in
            defer { held = 0 }
            return held
        }
        if bytes > 0 { budget.release(bytes) }
    }
}

/// Opens a body account for each request and closes it once the request is answered.
struct BodyBudgetMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext
    let budget: BodyBudget

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let account = BodyAccount(budget: budget)
        context.bodyAccount = account
        defer { account.releaseAll() }
        return try await next(request, context)
    }
}

extension Request {
    /// Reads the body: at most 1 MiB (413 before reading when `Content-Length` says more), taken from the server's
    /// body budget chunk by chunk (503 when the server holds too many bodies already), and whole within the
    /// budget's deadline (408).
    func collectLimited(_ context: AppRequestContext) async throws -> Data {
        if let text = headers[.contentLength] {
            guard let length = StrictInteger.parse(text) else { throw Problem.badRequest("Content-Length must be a decimal byte count") }
            if length > RequestLimits.maxBody { throw Problem.tooLarge }
        }
        var buffer = ByteBuffer()
        let started = ContinuousClock.now
        for try await chunk in body {
            guard chunk.readableBytes <= RequestLimits.maxBody - buffer.readableBytes else { throw Problem.tooLarge }
            if let account = context.bodyAccount {
                guard ContinuousClock.now - started <= account.budget.deadline else { throw Problem.bodyTimeout(account.budget.deadline) }
                guard account.reserve(chunk.readableBytes, notice: context.takesNotices) else {
                    throw Problem.busy("too many request bodies are in flight")
                }
            }
            buffer.writeImmutableBuffer(chunk)
        }
        return Data(buffer.readableBytesView)
    }

    /// Reads and parses a JSON object body.
    func jsonObject(_ context: AppRequestContext) async throws -> JSONObject {
        try JSONObject(JSONValue.parse(try await collectLimited(context)))
    }

    /// Reads an optional JSON object body: an empty body is an empty object.
    func optionalJSONObject(_ context: AppRequestContext) async throws -> JSONObject {
        let data = try await collectLimited(context)
        if data.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) {
            return try JSONObject(.object([:]))
        }
        return try JSONObject(JSONValue.parse(data))
    }
}

/// Query parameters, validated: unknown names are refused.
struct Query {
    let items: [String: String]

    init(_ request: Request, allowed: Set<String>) throws {
        var items: [String: String] = [:]
        for (key, value) in request.uri.queryParameters {
            let name = String(key)
            guard allowed.contains(name) else {
                let known = allowed.isEmpty ? "none" : allowed.sorted().joined(separator: ", ")
                throw Problem.invalidQuery(String(name.prefix(64)), "is not known here (allowed: \(known))")
            }
            guard items[name] == nil else { throw Problem.invalidQuery(name, "is given more than once") }
            items[name] = String(value)
        }
        self.items = items
    }

    func string(_ name: String, pattern: NamePattern = .identifier) throws -> String? {
        guard let value = items[name] else { return nil }
        guard pattern.matches(value) else { throw Problem.invalidQuery(name, "must match \(pattern.description)") }
        return value
    }

    func enumeration<E: RawRepresentable & CaseIterable>(_ name: String, _ type: E.Type) throws -> E? where E.RawValue == String {
        guard let value = items[name] else { return nil }
        guard let parsed = E(rawValue: value) else {
            throw Problem.invalidQuery(name, "must be one of: \(E.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return parsed
    }

    func int(_ name: String, range: ClosedRange<Int64>) throws -> Int64? {
        guard let value = items[name] else { return nil }
        guard let number = StrictInteger.parse(value, signed: range.lowerBound < 0), range.contains(number) else {
            throw Problem.invalidQuery(name, "must be a decimal integer between \(range.lowerBound) and \(range.upperBound)")
        }
        return number
    }

    func bool(_ name: String) throws -> Bool? {
        guard let value = items[name] else { return nil }
        switch value {
        case "true": return true
        case "false": return false
        default: throw Problem.invalidQuery(name, "must be true or false")
        }
    }

    /// `limit` (default 100, 1–1000) and the opaque `cursor`.
    func page() throws -> PageRequest {
        let limit = try int("limit", range: 1...1000) ?? 100
        var after: Int64 = 0
        if let cursor = items["cursor"] {
            guard let decoded = PageRequest.decodeCursor(cursor) else {
                throw Problem.invalidQuery("cursor", "is not a cursor this server issued (c followed by 1 to 15 hex digits)")
            }
            after = decoded
        }
        return PageRequest(limit: Int(limit), after: after)
    }
}
