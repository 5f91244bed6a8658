import Hummingbird

/// `/v1/nodes`: machines, keyed by the cloud's instance id.
struct NodeController {
    let store: any ResourceStore
    let clock: any SpotClock
    let signal: WorkerSignal

    func register(on routes: RouteBook) {
        routes.add(.post, "/v1/nodes", .operate, use: create)
        routes.add(.get, "/v1/nodes", .readWork, use: list)
        routes.add(.get, "/v1/nodes/:id", .readWork, use: get)
        routes.add(.post, "/v1/nodes/:id/cordon", .operate, use: cordon)
        routes.add(.post, "/v1/nodes/:id/uncordon", .operate, use: uncordon)
        routes.add(.post, "/v1/nodes/:id/drain", .operate, use: drain)
        routes.add(.delete, "/v1/nodes/:id", .operate, use: delete)
    }

    @Sendable func create(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let body = try await request.jsonObject(context)
        try body.rejectUnknown(["id", "pool", "gpus", "provisioning_request_id"])
        let detail = try await store.registerNode(
            id: try body.string("id", required: true, maxLength: 128, pattern: .identifier)!,
            pool: try body.string("pool", required: true, maxLength: 63, pattern: .dnsLabel)!,
            gpus: try body.int("gpus", range: 1...64).map(Int.init),
            provisioningRequestId: try body.string("provisioning_request_id", maxLength: 128, pattern: .identifier),
            actor: context.caller.name)
        signal.poke()
        var response = View.node(detail).response(.created)
        response.headers[.location] = "/v1/nodes/\(detail.node.id)"
        return response
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let query = try Query(request, allowed: ["pool", "state", "capacity_type", "limit", "cursor"])
        let filter = NodeFilter(
            pool: try query.string("pool", pattern: .dnsLabel), state: try query.enumeration("state", NodeState.self),
            capacityType: try query.enumeration("capacity_type", CapacityType.self))
        return await View.page(try store.listNodes(filter, try query.page()), View.node).response()
    }

    @Sendable func get(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let id = try context.pathParameter("id")
        guard let detail = try await store.node(id) else { throw Problem.notFound("node", id) }
        return View.node(detail).response()
    }

    @Sendable func cordon(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        try (try await request.optionalJSONObject(context)).rejectUnknown([])
        return await View.node(try store.cordon(try context.pathParameter("id"), actor: context.caller.name)).response()
    }

    @Sendable func uncordon(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        try (try await request.optionalJSONObject(context)).rejectUnknown([])
        let detail = try await store.uncordon(try context.pathParameter("id"), actor: context.caller.name)
        signal.poke()
        return View.node(detail).response()
    }

    /// Starts the interruption workflow by hand, with an operator-given deadline (default: 120 s from now).
    @Sendable func drain(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let body = try await request.optionalJSONObject(context)
        try body.rejectUnknown(["deadline", "notice_seconds"])
        let now = clock.now()
        var deadline = now + 120_000
        let text = try body.string("deadline", maxLength: 64)
        let seconds = try body.int("notice_seconds", range: 0...86_400)
        if text != nil && seconds != nil { throw Problem.invalidField("deadline", "and notice_seconds are exclusive; give one") }
        if let text {
            guard let parsed = TimeFormat.parseRFC3339(text) else {
                throw Problem.invalidField("deadline", "must be an RFC 3339 time such as 2026-11-29T10:50:00Z")
            }
            guard abs(parsed - now) <= NoticeParser.maxDeadlineSkew else {
                throw Problem.unprocessable("deadline", "is more than 7 days away from now")
            }
            deadline = parsed
        } else if let seconds {
            deadline = now + seconds * 1000
        }
        let (detail, created) = try await store.drain(
            nodeId: try context.pathParameter("id"), deadline: deadline, actor: context.caller.name)
        signal.poke()
        return View.interruption(detail).response(created ? .accepted : .ok)
    }

    @Sendable func delete(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let detail = try await store.deleteNode(try context.pathParameter("id"), actor: context.caller.name)
        signal.poke()
        return View.node(detail).response()
    }
}
