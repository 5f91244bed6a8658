import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// `/v1/interruptions`: notices from clouds and node agents, and their workflows.
struct InterruptionController {
    let store: AppDatabase
    let signal: WorkerSignal
    let webhookSecret: String?

    func register(on routes: RouteBook) {
        routes.add(.post, "/v1/interruptions", use: generic)
        routes.add(.post, "/v1/interruptions/aws", use: aws)
        routes.add(.post, "/v1/interruptions/gcp", use: gcp)
        routes.add(.post, "/v1/interruptions/azure", use: azure)
        routes.add(.get, "/v1/interruptions", use: list)
        routes.add(.get, "/v1/interruptions/:id", use: get)
    }

    /// Reads the body and checks its signature when a webhook secret is set: nothing is parsed before that.
    private func signedBody(_ request: Request) async throws -> JSONObject {
        _ = try Query(request, allowed: [])
        let data = try await request.collectLimited()
        if let secret = webhookSecret,
            let failure = Signature.verify(
                secret: secret, timestamp: request.headers[HTTPField.Name("X-Spotd-Timestamp")!],
                signature: request.headers[HTTPField.Name("X-Spotd-Signature")!], body: data, now: store.clock.now())
        {
            throw Problem.unauthorized("webhook signature refused: \(failure)")
        }
        return try JSONObject(JSONValue.parse(data))
    }

    private func record(_ notices: [Notice], ignored: [IgnoredNotice] = [], context: AppRequestContext, started: ContinuousClock.Instant)
        async throws -> [(InterruptionDetail, Bool)]
    {
        let results = try await store.recordNotices(notices, ignored: ignored, actor: context.caller.name)
        let elapsed = ContinuousClock.now - started
        for (detail, created) in results where created {
            SpotMetrics.notice(source: detail.interruption.source, kind: detail.interruption.kind.rawValue)
            if detail.interruption.state != .unmatched {
                SpotMetrics.cordonLatency(
                    nanoseconds: elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
            }
        }
        if results.contains(where: { $0.1 }) { signal.poke() }
        return results
    }

    private func single(_ notice: Notice, context: AppRequestContext, started: ContinuousClock.Instant) async throws -> Response {
        let (detail, created) = try await record([notice], context: context, started: started)[0]
        return View.interruption(detail).response(created ? .accepted : .ok)
    }

    @Sendable func generic(_ request: Request, context: AppRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let body = try await signedBody(request)
        return try await single(try NoticeParser.generic(body, now: store.clock.now()), context: context, started: started)
    }

    @Sendable func aws(_ request: Request, context: AppRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let body = try await signedBody(request)
        return try await single(try NoticeParser.aws(body, now: store.clock.now()), context: context, started: started)
    }

    @Sendable func gcp(_ request: Request, context: AppRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let body = try await signedBody(request)
        return try await single(try NoticeParser.gcp(body, now: store.clock.now()), context: context, started: started)
    }

    /// A Scheduled Events document may carry many events and many VMs: one record per VM, all in one transaction.
    @Sendable func azure(_ request: Request, context: AppRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let body = try await signedBody(request)
        let (notices, ignored) = try NoticeParser.azure(body, now: store.clock.now())
        let results = try await record(notices, ignored: ignored, context: context, started: started)
        let anyNew = results.contains { $0.1 } || !ignored.isEmpty
        return JSONValue.object([
            "items": .array(results.map { View.interruption($0.0) }),
            "ignored": .array(
                ignored.map {
                    .object([
                        "event_id": .string($0.eventId), "event_type": .string($0.eventType),
                        "resources": .array($0.resources.map(JSONValue.string)),
                    ])
                }),
        ]).response(anyNew ? .accepted : .ok)
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let query = try Query(request, allowed: ["state", "node", "limit", "cursor"])
        let filter = InterruptionFilter(state: try query.enumeration("state", InterruptionState.self), node: try query.string("node"))
        return await View.page(try store.listInterruptions(filter, try query.page()), View.interruption).response()
    }

    @Sendable func get(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let id = try context.parameters.require("id")
        guard let detail = try await store.interruption(id) else { throw Problem.notFound("interruption", id) }
        return View.interruption(detail).response()
    }
}
