import Hummingbird

/// `/v1/pools`: classes of identical capacity.
struct PoolController {
    let store: any ResourceStore
    let clock: any SpotClock
    let signal: WorkerSignal

    func register(on routes: RouteBook) {
        routes.add(.post, "/v1/pools", .operate, use: create)
        routes.add(.get, "/v1/pools", .read, use: list)
        routes.add(.get, "/v1/pools/:name", .read, use: get)
        routes.add(.patch, "/v1/pools/:name", .operate, use: patch)
        routes.add(.delete, "/v1/pools/:name", .operate, use: delete)
    }

    @Sendable func create(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let body = try await request.jsonObject(context)
        try body.rejectUnknown([
            "name", "capacity_type", "gpu_type", "gpus_per_node", "zone", "instance_type", "hourly_price", "min_nodes", "max_nodes",
            "stockout",
        ])
        let now = clock.now()
        let minNodes = Int(try body.int("min_nodes", range: 0...10_000) ?? 0)
        let maxNodes = Int(try body.int("max_nodes", range: 0...10_000) ?? Int64(max(1000, minNodes)))
        guard minNodes <= maxNodes else { throw Problem.unprocessable("min_nodes", "must not exceed max_nodes (\(maxNodes))") }
        let pool = Pool(
            name: try body.string("name", required: true, maxLength: 63, pattern: .dnsLabel)!,
            capacityType: try body.enumeration("capacity_type", CapacityType.self, required: true)!,
            gpuType: try body.string("gpu_type", required: true, maxLength: 64, pattern: .identifier)!,
            gpusPerNode: Int(try body.int("gpus_per_node", required: true, range: 1...64)!),
            zone: try body.string("zone", required: true, maxLength: 64, pattern: .identifier)!,
            instanceType: try body.string("instance_type", required: true, maxLength: 64, pattern: .identifier)!,
            hourlyPrice: try body.double("hourly_price", required: true, range: 0...1_000_000)!,
            minNodes: minNodes, maxNodes: maxNodes, stockout: try body.bool("stockout") ?? false, createdAt: now, updatedAt: now)
        let created = try await store.createPool(pool, actor: context.caller.name)
        signal.poke()
        var response = View.pool(created, PoolStats()).response(.created)
        response.headers[.location] = "/v1/pools/\(created.name)"
        return response
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let page = try Query(request, allowed: ["limit", "cursor"]).page()
        let pools = try await store.listPools(page)
        let stats = try await store.poolStats()
        return View.page(pools) { View.pool($0, stats[$0.name] ?? PoolStats()) }.response()
    }

    @Sendable func get(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let name = try context.pathParameter("name")
        guard let pool = try await store.pool(name) else { throw Problem.notFound("pool", name) }
        return await View.pool(pool, try store.poolStats()[name] ?? PoolStats()).response()
    }

    @Sendable func patch(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let name = try context.pathParameter("name")
        let body = try await request.jsonObject(context)
        for immutable in ["name", "capacity_type", "gpu_type", "gpus_per_node"] where body.fields[immutable] != nil {
            throw Problem.invalidField(immutable, "cannot be changed; create a new pool instead")
        }
        try body.rejectUnknown(["hourly_price", "min_nodes", "max_nodes", "stockout", "zone", "instance_type"])
        let patch = PoolPatch(
            hourlyPrice: try body.double("hourly_price", range: 0...1_000_000),
            minNodes: try body.int("min_nodes", range: 0...10_000).map(Int.init),
            maxNodes: try body.int("max_nodes", range: 0...10_000).map(Int.init),
            stockout: try body.bool("stockout"),
            zone: try body.string("zone", maxLength: 64, pattern: .identifier),
            instanceType: try body.string("instance_type", maxLength: 64, pattern: .identifier))
        let pool = try await store.updatePool(name, patch, actor: context.caller.name)
        signal.poke()
        return await View.pool(pool, try store.poolStats()[name] ?? PoolStats()).response()
    }

    @Sendable func delete(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        try await store.deletePool(try context.pathParameter("name"), actor: context.caller.name)
        return Response(status: .noContent)
    }
}
