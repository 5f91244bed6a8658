import Foundation
import Hummingbird
import NIOCore

/// Who is calling: set by the auth middleware, read by handlers and written into events.
public struct Caller: Sendable, Equatable {
    public var name: String
    public var role: Role

    public static let anonymous = Caller(name: "anonymous", role: .admin)
}

/// The request context of every spotd route.
public struct AppRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var caller: Caller = .anonymous

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
    }

    public var maxUploadSize: Int { RequestLimits.maxBody }
}

enum RequestLimits {
    /// 1 MiB.
    static let maxBody = 1 << 20
}

extension Request {
    /// Reads the body, refusing more than 1 MiB before reading it all.
    func collectLimited() async throws -> Data {
        if let length = headers[.contentLength].flatMap({ Int($0) }), length > RequestLimits.maxBody {
            throw Problem.tooLarge
        }
        do {
            let buffer = try await body.collect(upTo: RequestLimits.maxBody)
            return Data(buffer.readableBytesView)
        } catch is NIOTooManyBytesError {
            throw Problem.tooLarge
        }
    }

    /// Reads and parses a JSON object body.
    func jsonObject() async throws -> JSONObject {
        try JSONObject(JSONValue.parse(try await collectLimited()))
    }

    /// Reads an optional JSON object body: an empty body is an empty object.
    func optionalJSONObject() async throws -> JSONObject {
        let data = try await collectLimited()
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
                throw Problem.invalidQuery(name, "is not known here (allowed: \(known))")
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
        guard let number = Int64(value), range.contains(number) else {
            throw Problem.invalidQuery(name, "must be an integer between \(range.lowerBound) and \(range.upperBound)")
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
                throw Problem.invalidQuery("cursor", "is not a cursor this server issued")
            }
            after = decoded
        }
        return PageRequest(limit: Int(limit), after: after)
    }
}
