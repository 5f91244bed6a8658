import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1

/// An RFC 9457 problem: every refusal spotd gives is one of these, as `application/problem+json`.
public struct Problem: Error, HTTPResponseError, Sendable, Equatable {
    public var status: HTTPResponse.Status
    public var type: String
    public var title: String
    public var detail: String
    /// The request field at fault, when there is one (`gpus`, `detail.instance-id`, `query.limit`).
    public var field: String?
    /// Extra members, e.g. the per-pool reasons of a failed placement.
    public var extra: [String: JSONValue] = [:]
    public var headers: HTTPFields = [:]

    public init(status: HTTPResponse.Status, type: String, title: String, detail: String, field: String? = nil) {
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.field = field
    }

    static func badRequest(_ detail: String) -> Problem {
        Problem(status: .badRequest, type: "urn:spotd:problem:bad-request", title: "Bad request", detail: detail)
    }

    static func invalidField(_ field: String, _ message: String) -> Problem {
        Problem(
            status: .badRequest, type: "urn:spotd:problem:invalid-field", title: "Invalid field",
            detail: "\(field) \(message)", field: field)
    }

    static func invalidQuery(_ name: String, _ message: String) -> Problem {
        Problem(
            status: .badRequest, type: "urn:spotd:problem:invalid-query", title: "Invalid query parameter",
            detail: "query parameter \(name) \(message)", field: "query.\(name)")
    }

    /// Well-formed input that breaks a rule the schema cannot express (cross-field, time window, policy).
    static func unprocessable(_ field: String, _ message: String) -> Problem {
        Problem(
            status: .unprocessableContent, type: "urn:spotd:problem:unprocessable", title: "Unprocessable field",
            detail: "\(field) \(message)", field: field)
    }

    static func notFound(_ what: String, _ id: String) -> Problem {
        Problem(
            status: .notFound, type: "urn:spotd:problem:not-found", title: "Not found",
            detail: "\(what) '\(id)' does not exist")
    }

    /// A reference in the body to something that does not exist.
    static func unknownReference(_ field: String, _ what: String, _ id: String) -> Problem {
        Problem(
            status: .unprocessableContent, type: "urn:spotd:problem:unknown-reference", title: "Unknown reference",
            detail: "\(field): \(what) '\(id)' does not exist", field: field)
    }

    static func conflict(_ detail: String, type: String = "urn:spotd:problem:conflict") -> Problem {
        Problem(status: .conflict, type: type, title: "Conflict", detail: detail)
    }

    static func unauthorized(_ detail: String) -> Problem {
        var problem = Problem(status: .unauthorized, type: "urn:spotd:problem:unauthorized", title: "Unauthorized", detail: detail)
        problem.headers[.wwwAuthenticate] = "Bearer"
        return problem
    }

    static func forbidden(_ detail: String) -> Problem {
        Problem(status: .forbidden, type: "urn:spotd:problem:forbidden", title: "Forbidden", detail: detail)
    }

    static let tooLarge = Problem(
        status: .contentTooLarge, type: "urn:spotd:problem:too-large", title: "Request body too large",
        detail: "request bodies are limited to 1 MiB (1048576 bytes)")

    /// The body did not arrive whole in time; the connection is closed after the answer.
    static func bodyTimeout(_ deadline: Duration) -> Problem {
        var problem = Problem(
            status: .requestTimeout, type: "urn:spotd:problem:body-timeout", title: "Request body too slow",
            detail: "the request body must arrive whole within \(deadline.components.seconds) s")
        problem.headers[.connection] = "close"
        return problem
    }

    /// The server is at a limit that protects the other clients; try again shortly.
    static func busy(_ detail: String) -> Problem {
        var problem = Problem(status: .serviceUnavailable, type: "urn:spotd:problem:busy", title: "Busy", detail: detail)
        problem.headers[.retryAfter] = "1"
        return problem
    }

    /// The problem for a store's refusal.
    init(_ error: StoreError) {
        switch error {
        case .notFound(let what, let id): self = .notFound(what, id)
        case .conflict(let detail): self = .conflict(detail)
        case .staleAttempt(let detail): self = .conflict(detail, type: "urn:spotd:problem:stale-attempt")
        case .unknownReference(let field, let what, let id): self = .unknownReference(field, what, id)
        case .unprocessable(let field, let detail): self = .unprocessable(field, detail)
        case .noCapacity(let detail, let reasons):
            self = .conflict(detail, type: "urn:spotd:problem:no-capacity")
            extra["pools"] = .object(reasons.mapValues(JSONValue.string))
        case .fenced:
            self = Problem(
                status: .serviceUnavailable, type: "urn:spotd:problem:not-leader", title: "Not the leader",
                detail: "this replica no longer holds the worker lease")
        case .unavailable:
            // What went wrong (the database's host, its message) is logged, not told to callers.
            self = Problem(
                status: .serviceUnavailable, type: "urn:spotd:problem:store-unavailable", title: "Store unavailable",
                detail: "the database is unavailable or busy; try again shortly")
            headers[.retryAfter] = "1"
        }
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var body: [String: JSONValue] = extra
        body["type"] = .string(type)
        body["title"] = .string(title)
        body["status"] = .int(Int64(status.code))
        body["detail"] = .string(detail)
        if let field { body["field"] = .string(field) }
        var fields = headers
        fields[.contentType] = "application/problem+json"
        return Response(status: status, headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: JSONValue.object(body).jsonBytes)))
    }
}

/// Turns every error a handler throws into a problem answer, so that no refusal is ever plain text.
struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    let routes: RouteTable

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let problem as Problem {
            return try problem.response(from: request, context: context)
        } catch {
            return try problem(for: error, request: request, context: context).response(from: request, context: context)
        }
    }

    func problem(for error: any Error, request: Request, context: Context) -> Problem {
        switch error {
        case let error as HTTPError:
            switch error.status {
            case .notFound:
                if let allowed = routes.allowedMethods(path: request.uri.path), !allowed.contains(request.method) {
                    var problem = Problem(
                        status: .methodNotAllowed, type: "urn:spotd:problem:method-not-allowed", title: "Method not allowed",
                        detail: "\(request.method) is not allowed on \(request.uri.path)")
                    problem.headers[.allow] = allowed.map(\.rawValue).sorted().joined(separator: ", ")
                    return problem
                }
                return Problem(
                    status: .notFound, type: "urn:spotd:problem:no-route", title: "Not found",
                    detail: "no route for \(request.method) \(request.uri.path)")
            case .methodNotAllowed:
                return Problem(
                    status: .methodNotAllowed, type: "urn:spotd:problem:method-not-allowed", title: "Method not allowed",
                    detail: "\(request.method) is not allowed on \(request.uri.path)")
            case .contentTooLarge:
                return .tooLarge
            default:
                return Problem(
                    status: error.status, type: "urn:spotd:problem:http", title: error.status.reasonPhrase,
                    detail: error.body ?? error.status.reasonPhrase)
            }
        case is NIOTooManyBytesError:
            return .tooLarge
        case let error as StoreError:
            if case .unavailable(let detail) = error {
                context.logger.warning("store unavailable", metadata: ["error": "\(detail)", "path": "\(request.uri.path)"])
            }
            return Problem(error)
        case let error as HTTPParserError:
            // A malformed request body (a bad chunk size, say) is the client's fault, and the connection cannot be reused.
            var problem = Problem.badRequest("the request is not valid HTTP/1.1: \(error)")
            problem.headers[.connection] = "close"
            return problem
        default:
            context.logger.error("request failed", metadata: ["error": "\(String(reflecting: error))"])
            return Problem(
                status: .internalServerError, type: "urn:spotd:problem:internal", title: "Internal error",
                detail: "the request could not be completed; nothing was changed")
        }
    }
}
