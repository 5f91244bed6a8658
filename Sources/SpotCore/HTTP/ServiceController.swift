import Hummingbird

/// `/v1/services`: inference services and their replicas.
struct ServiceController {
    let store: any ResourceStore
    let signal: WorkerSignal

    func register(on routes: RouteBook) {
        routes.add(.post, "/v1/services", .schedule, use: create)
        routes.add(.get, "/v1/services", .read, use: list)
        routes.add(.get, "/v1/services/:id", .read, use: get)
        routes.add(.patch, "/v1/services/:id", .schedule, use: patch)
        routes.add(.delete, "/v1/services/:id", .schedule, use: delete)
        routes.add(.post, "/v1/services/:id/replicas/:rid/ready", .report, use: ready)
    }

    @Sendable func create(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let body = try await request.jsonObject(context)
        try body.rejectUnknown(["id", "tier", "replicas", "gpus_per_replica", "gpu_type", "min_available", "base_on_demand"])
        let replicas = Int(try body.int("replicas", required: true, range: 1...1000)!)
        let submission = ServiceSubmission(
            id: try body.string("id", maxLength: 128, pattern: .identifier) ?? Ids.new("svc"),
            tier: try body.enumeration("tier", Tier.self, required: true)!, replicas: replicas,
            gpusPerReplica: Int(try body.int("gpus_per_replica", required: true, range: 1...64)!),
            gpuType: try body.string("gpu_type", maxLength: 64, pattern: .identifier),
            minAvailable: try body.int("min_available", range: 0...1000).map(Int.init),
            baseOnDemand: Int(try body.int("base_on_demand", range: 0...1000) ?? 0))
        let minAvailable = submission.minAvailable ?? InferenceService.defaultMinAvailable(replicas: replicas)
        if let refusal = SpotStore.serviceRefusal(replicas: replicas, minAvailable: minAvailable, base: submission.baseOnDemand) {
            throw Problem.unprocessable(refusal.field, refusal.detail)
        }
        let created = try await store.createService(submission, actor: context.caller.name)
        signal.poke()
        var response = View.service(created).response(.created)
        response.headers[.location] = "/v1/services/\(created.service.id)"
        return response
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let page = try Query(request, allowed: ["limit", "cursor"]).page()
        return await View.page(try store.listServices(page), View.service).response()
    }

    @Sendable func get(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let id = try context.pathParameter("id")
        guard let detail = try await store.service(id) else { throw Problem.notFound("service", id) }
        return View.service(detail).response()
    }

    @Sendable func patch(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let id = try context.pathParameter("id")
        let body = try await request.jsonObject(context)
        for immutable in ["id", "tier", "gpus_per_replica", "gpu_type"] where body.fields[immutable] != nil {
            throw Problem.invalidField(immutable, "cannot be changed; create a new service instead")
        }
        try body.rejectUnknown(["replicas", "min_available", "base_on_demand"])
        let patch = ServicePatch(
            replicas: try body.int("replicas", range: 1...1000).map(Int.init),
            minAvailable: try body.int("min_available", range: 0...1000).map(Int.init),
            baseOnDemand: try body.int("base_on_demand", range: 0...1000).map(Int.init))
        let detail = try await store.updateService(id, patch, actor: context.caller.name)
        signal.poke()
        return View.service(detail).response()
    }

    @Sendable func delete(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        try await store.deleteService(try context.pathParameter("id"), actor: context.caller.name)
        signal.poke()
        return Response(status: .noContent)
    }

    @Sendable func ready(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let body = try await request.optionalJSONObject(context)
        try body.rejectUnknown([])
        let detail = try await store.replicaReady(
            service: try context.pathParameter("id"), replica: try context.pathParameter("rid"), actor: context.caller.name)
        signal.poke()
        return View.service(detail).response()
    }
}
