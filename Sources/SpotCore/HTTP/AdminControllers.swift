import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import ServiceLifecycle
import Synchronization

/// `/v1/provisioning-requests`: replacement capacity asked of the provider.
struct ProvisioningController {
    let store: any ResourceStore

    func register(on routes: RouteBook) {
        routes.add(.get, "/v1/provisioning-requests", .read, use: list)
        routes.add(.get, "/v1/provisioning-requests/:id", .read, use: get)
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let query = try Query(request, allowed: ["state", "limit", "cursor"])
        return await View.page(
            try store.listProvisioningRequests(state: try query.enumeration("state", ProvisioningState.self), try query.page()),
            View.provisioning
        ).response()
    }

    @Sendable func get(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let id = try context.pathParameter("id")
        guard let value = try await store.provisioningRequest(id) else { throw Problem.notFound("provisioning request", id) }
        return View.provisioning(value).response()
    }
}

/// `/v1/policies`: per-tier capacity preferences and admission.
struct PolicyController {
    let store: any ResourceStore
    let clock: any SpotClock
    let signal: WorkerSignal

    func register(on routes: RouteBook) {
        routes.add(.get, "/v1/policies", .read, use: list)
        routes.add(.put, "/v1/policies/:tier", .operate, use: put)
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        return await JSONValue.object(["items": .array(try store.policies().map(View.policy)), "next_cursor": .null]).response()
    }

    @Sendable func put(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let tierName = try context.pathParameter("tier")
        guard let tier = Tier(rawValue: tierName) else {
            throw Problem.notFound("tier", tierName)
        }
        let body = try await request.jsonObject(context)
        try body.rejectUnknown(["capacity_types", "max_uncheckpointable_spot_seconds", "spot_requires_checkpointable"])
        let items = try body.array("capacity_types", required: true, maxCount: 3)!
        var types: [CapacityType] = []
        for (index, item) in items.enumerated() {
            guard case .string(let text) = item, let type = CapacityType(rawValue: text) else {
                throw Problem.invalidField("capacity_types[\(index)]", "must be one of: spot, on_demand, reserved")
            }
            guard !types.contains(type) else { throw Problem.invalidField("capacity_types[\(index)]", "repeats \(text)") }
            types.append(type)
        }
        guard !types.isEmpty else { throw Problem.invalidField("capacity_types", "must list at least one capacity type") }
        if tier == .premium && types.contains(.spot) {
            throw Problem.unprocessable("capacity_types", "may not list spot for premium: premium never runs on spot")
        }
        let current = try await store.policies().first { $0.tier == tier }!
        let policy = Policy(
            tier: tier, capacityTypes: types,
            maxUncheckpointableSpotSeconds: try body.int("max_uncheckpointable_spot_seconds", range: 0...31_536_000)
                ?? current.maxUncheckpointableSpotSeconds,
            spotRequiresCheckpointable: try body.bool("spot_requires_checkpointable") ?? current.spotRequiresCheckpointable,
            updatedAt: clock.now())
        let saved = try await store.putPolicy(policy, actor: context.caller.name)
        signal.poke()
        return View.policy(saved).response()
    }
}

/// `/v1/events`: the audit log, as pages and as a live stream.
struct EventController {
    let store: any EventLog
    let feed: EventFeed

    func register(on routes: RouteBook) {
        routes.add(.get, "/v1/events", .read, use: list)
        routes.add(.get, "/v1/events/stream", .read, use: stream)
    }

    private static let typePattern = NamePattern.identifier

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let query = try Query(request, allowed: ["since", "type", "limit", "cursor"])
        let page = try query.page()
        let since = max(try query.int("since", range: 0...Int64.max) ?? 0, page.after)
        let events = try await store.events(since: since, type: try query.string("type", pattern: Self.typePattern), limit: page.limit)
        let next = events.count == page.limit ? events.last.map { PageRequest.cursor(after: $0.id) } : nil
        return View.page(Page(items: events, nextCursor: next), View.event).response()
    }

    /// Server-Sent Events: each event as `id`, `event` (its type) and `data` (its JSON), live until the client leaves,
    /// its token is revoked, or the server stops. Fed by the shared `EventFeed`; at most `capacity` at once (503 past it).
    @Sendable func stream(_ request: Request, context: AppRequestContext) async throws -> Response {
        let query = try Query(request, allowed: ["since", "type"])
        let type = try query.string("type", pattern: Self.typePattern)
        var start = try query.int("since", range: 0...Int64.max)
        // A reconnecting EventSource sends the last id it saw; `since` wins when both are given.
        if let header = request.headers[HTTPField.Name("Last-Event-ID")!] {
            guard let lastEventId = StrictInteger.parse(header) else {
                throw Problem.invalidField("header.Last-Event-ID", "must be an event id (a non-negative decimal integer)")
            }
            if start == nil { start = lastEventId }
        }
        let from: Int64
        if let start { from = start } else { from = try await store.lastEventId() }
        guard let subscription = try? feed.subscribe(from: from, type: type, tokenId: context.caller.tokenId, channel: context.channel)
        else {
            throw Problem.busy("at most \(feed.capacity) event streams may be open at once")
        }
        let body = ResponseBody { writer in
            // Ends the stream as soon as the client goes away, not at the next write.
            try await request.body.consumeWithCancellationOnInboundClose { _ in
                func send(_ text: String) async throws {
                    subscription.watch.started()
                    defer { subscription.watch.finished() }
                    try await writer.write(ByteBuffer(string: text))
                }
                try await send(": spotd event stream\n\n")
                // A server shutting down ends its streams, so that it need not wait for their clients.
                try await withGracefulShutdownHandler {
                    while let item = try await subscription.next() {
                        switch item {
                        case .keepAlive:
                            try await send(": keep-alive\n\n")
                        case .events(let events):
                            var chunk = ""
                            for event in events {
                                chunk += "id: \(event.id)\nevent: \(event.type)\ndata: \(View.event(event).jsonText)\n\n"
                            }
                            try await send(chunk)
                        }
                    }
                } onGracefulShutdown: {
                    subscription.end()
                }
            }
            try await writer.finish(nil)
        }
        return Response(
            status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }
}

/// `/v1/tokens`: API tokens with roles (admin only).
struct TokenController {
    let store: any AccessStore
    let feed: EventFeed

    func register(on routes: RouteBook) {
        routes.add(.post, "/v1/tokens", .admin, use: create)
        routes.add(.get, "/v1/tokens", .admin, use: list)
        routes.add(.delete, "/v1/tokens/:id", .admin, use: delete)
    }

    @Sendable func create(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let body = try await request.jsonObject(context)
        try body.rejectUnknown(["name", "role"])
        let name = try body.string("name", required: true, maxLength: 64, pattern: .identifier)!
        if let reason = TokenName.refusal(name) { throw Problem.unprocessable("name", reason) }
        let (token, secret) = try await store.createToken(
            name: name, role: try body.enumeration("role", Role.self, required: true)!, actor: context.caller.name)
        return View.token(token, secret: secret).response(.created)
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let page = try Query(request, allowed: ["limit", "cursor"]).page()
        return await View.page(try store.listTokens(page)) { View.token($0) }.response()
    }

    @Sendable func delete(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let id = try context.pathParameter("id")
        try await store.revokeToken(id, actor: context.caller.name)
        // Its open event streams end now, not at their next event.
        feed.revoke(tokenId: id)
        return Response(status: .noContent)
    }
}

/// Health, readiness, metrics and the summary.
struct OpsController {
    let store: any ResourceStore
    let metrics: SpotMetrics
    /// The provider's kind, and (for the simulated one) how many instances its cloud runs.
    var providerKind = "simulated"
    var cloud: (any SimulatedCloud)?

    func register(on routes: RouteBook) {
        routes.add(.get, "/healthz", .open, use: health)
        routes.add(.get, "/readyz", .open, use: ready)
        routes.add(.get, "/metrics", .read, use: metrics)
        routes.add(.get, "/v1/summary", .read, use: summary)
    }

    @Sendable func health(_ request: Request, context: AppRequestContext) async throws -> Response {
        JSONValue.object(["status": .string("ok")]).response()
    }

    @Sendable func ready(_ request: Request, context: AppRequestContext) async throws -> Response {
        guard await store.isReady() else {
            throw Problem(
                status: .serviceUnavailable, type: "urn:spotd:problem:not-ready", title: "Not ready",
                detail: "the store is unreachable or its migrations are not all applied")
        }
        // Which store, and whether this process runs the workflows (holds the worker lease).
        return JSONValue.object([
            "status": .string("ready"), "store": .string(store.kind), "leader": .bool(metrics.leader.load(ordering: .relaxed)),
        ]).response()
    }

    @Sendable func metrics(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        var snapshot = SpotMetrics.Snapshot()
        let summary: StoreSummary
        do {
            summary = try await store.summary()
        } catch let error as StoreError {
            // The database is away: the process's own counters are still served, without the store's gauges.
            guard case .unavailable = error else { throw error }
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: metrics.render(snapshot))))
        }
        for (pool, stats) in summary.pools {
            for state in NodeState.allCases {
                snapshot.nodes.append((pool.name, state.rawValue, stats.nodesByState[state] ?? 0))
            }
            snapshot.gpus.append((pool.name, stats.gpusTotal, stats.gpusFree))
        }
        snapshot.queueDepth = Tier.allCases.map { ($0.rawValue, summary.jobs[$0]?[.queued] ?? 0) }
        snapshot.activeInterruptions = summary.activeInterruptions
        snapshot.pendingProvisioning = summary.pendingProvisioning
        snapshot.failingSubscriptions = summary.failingSubscriptions
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(string: metrics.render(snapshot))))
    }

    @Sendable func summary(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let summary = try await store.summary()
        var capacity: [String: [String: Int]] = [:]
        for (pool, stats) in summary.pools {
            var entry = capacity[pool.capacityType.rawValue, default: [:]]
            entry["gpus_total", default: 0] += stats.gpusTotal
            entry["gpus_free", default: 0] += stats.gpusFree
            for state in NodeState.allCases { entry["nodes_\(state.rawValue)", default: 0] += stats.nodesByState[state] ?? 0 }
            capacity[pool.capacityType.rawValue] = entry
        }
        var jobs: [String: JSONValue] = [:]
        for tier in Tier.allCases {
            var states: [String: JSONValue] = [:]
            for state in JobState.allCases { states[state.rawValue] = .int(Int64(summary.jobs[tier]?[state] ?? 0)) }
            jobs[tier.rawValue] = .object(states)
        }
        var live = JSONValue.null
        if let cloud { live = .int(Int64(try await cloud.liveInstances())) }
        return JSONValue.object([
            "pools": .array(
                summary.pools.map { pool, stats in
                    var nodes: [String: JSONValue] = [:]
                    for state in NodeState.allCases { nodes[state.rawValue] = .int(Int64(stats.nodesByState[state] ?? 0)) }
                    return .object([
                        "name": .string(pool.name), "capacity_type": .string(pool.capacityType.rawValue), "gpu_type": .string(pool.gpuType),
                        "nodes": .object(nodes), "gpus_total": .int(Int64(stats.gpusTotal)),
                        "gpus_free": .int(Int64(stats.gpusFree)),
                    ])
                }),
            "capacity_types": .object(capacity.mapValues { .object($0.mapValues { .int(Int64($0)) }) }),
            "jobs": .object(jobs),
            "gangs": .object(
                Dictionary(uniqueKeysWithValues: JobState.allCases.map { ($0.rawValue, .int(Int64(summary.gangs[$0] ?? 0))) })),
            "services": .object([
                "count": .int(Int64(summary.services.count)), "replicas": .int(Int64(summary.services.replicas)),
                "ready_replicas": .int(Int64(summary.services.ready)),
            ]),
            "active_interruptions": .int(Int64(summary.activeInterruptions)),
            "pending_provisioning_requests": .int(Int64(summary.pendingProvisioning)),
            "provider": .object([
                "kind": .string(providerKind), "live_instances": live,
                "pending_releases": .int(Int64(summary.pendingReleases)),
            ]),
        ]).response()
    }
}
