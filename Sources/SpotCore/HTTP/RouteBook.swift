import HTTPTypes
import Hummingbird
import Synchronization

/// Registers routes on the router and remembers which methods each path allows, so that a wrong method
/// gets 405 with an `Allow` header rather than 404.
struct RouteBook {
    let router: Router<AppRequestContext>
    let table = RouteTable()

    func add(
        _ method: HTTPRequest.Method, _ path: String,
        use handler: @escaping @Sendable (Request, AppRequestContext) async throws -> Response
    ) {
        router.on(RouterPath(path), method: method, use: handler)
        table.record(method, path)
    }
}

/// Path templates and their methods.
final class RouteTable: Sendable {
    private let templates = Mutex<[(segments: [Substring], methods: Set<HTTPRequest.Method>)]>([])

    func record(_ method: HTTPRequest.Method, _ path: String) {
        let segments = path.split(separator: "/")
        templates.withLock { templates in
            if let index = templates.firstIndex(where: { $0.segments == segments }) {
                templates[index].methods.insert(method)
            } else {
                templates.append((segments, [method]))
            }
        }
    }

    /// The methods allowed on a concrete path, or nil when no route has that path.
    func allowedMethods(path: String) -> Set<HTTPRequest.Method>? {
        let segments = path.split(separator: "/")
        let literalFirst = templates.withLock { templates in
            templates.filter { template in
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
