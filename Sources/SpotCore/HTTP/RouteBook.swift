import HTTPTypes
import Hummingbird
import Synchronization

/// Registers routes on the router, each with the access it needs, and remembers which methods each path allows,
/// so that a wrong method gets 405 with an `Allow` header rather than 404.
struct RouteBook {
    let router: Router<AppRequestContext>
    let authorizer: Authorizer
    let table = RouteTable()

    /// Adds a route whose handler runs only for a caller that `access` admits. The check wraps the handler itself,
    /// so whichever spelling of a path the router resolves to this route (`//v1/tokens`, `/v1//tokens`, an
    /// absolute-form target), the same check runs.
    /// With `signIn`, a caller without credentials is sent to `/login` (303) rather than answered 401: a page
    /// for browsers.
    func add(
        _ method: HTTPRequest.Method, _ path: String, _ access: Access, signIn: Bool = false,
        use handler: @escaping @Sendable (Request, AppRequestContext) async throws -> Response
    ) {
        let authorizer = self.authorizer
        router.on(RouterPath(path), method: method) { request, context in
            var context = context
            do {
                context.caller = try await authorizer.caller(for: request, access: access)
            } catch let problem as Problem where signIn && problem.status == .unauthorized && request.headers[.authorization] == nil {
                // A browser with no (or a stale) session goes to sign in; a script's bad token gets its 401.
                return Response(status: .seeOther, headers: [.location: "/login", .cacheControl: "no-store"])
            }
            context.takesNotices = access == .notify
            return try await handler(request, context)
        }
        table.record(method, path, access)
    }
}

/// Path templates, their methods and the access each needs.
final class RouteTable: Sendable {
    struct Route: Sendable, Equatable {
        var method: HTTPRequest.Method
        var path: String
        var access: Access
    }

    private let state = Mutex<(routes: [Route], templates: [(segments: [Substring], methods: Set<HTTPRequest.Method>)])>(([], []))

    func record(_ method: HTTPRequest.Method, _ path: String, _ access: Access) {
        let segments = path.split(separator: "/")
        state.withLock { state in
            state.routes.append(Route(method: method, path: path, access: access))
            if let index = state.templates.firstIndex(where: { $0.segments == segments }) {
                state.templates[index].methods.insert(method)
            } else {
                state.templates.append((segments, [method]))
            }
        }
    }

    /// Every registered route, in registration order.
    var routes: [Route] { state.withLock { $0.routes } }

    /// The methods allowed on a concrete path, or nil when no route has that path.
    func allowedMethods(path: String) -> Set<HTTPRequest.Method>? {
        let segments = path.split(separator: "/")
        let literalFirst = state.withLock { state in
            state.templates.filter { template in
                template.segments.count == segments.count
                    && zip(template.segments, segments).allSatisfy { $0.hasPrefix(":") || $0 == $1 }
            }
        }
        // As the router does, literal segments win over parameters: only the most specific templates count.
        let parameters = { (segments: [Substring]) in segments.filter { $0.hasPrefix(":") }.count }
        guard let fewest = literalFirst.map({ parameters($0.segments) }).min() else { return nil }
        return literalFirst.filter { parameters($0.segments) == fewest }.reduce(into: Set()) { $0.formUnion($1.methods) }
    }
}
