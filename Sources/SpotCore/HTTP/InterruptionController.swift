import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// `/v1/interruptions`: notices from clouds and node agents, and their workflows.
struct InterruptionController {
    let store: any ResourceStore
    let clock: any SpotClock
    let signal: WorkerSignal
    let metrics: SpotMetrics
    let webhookSecret: String?

    func register(on routes: RouteBook) {
        routes.add(.post, "/v1/interruptions", .notify, use: generic)
        routes.add(.post, "/v1/interruptions/aws", .notify, use: aws)
        routes.add(.post, "/v1/interruptions/gcp", .notify, use: gcp)
        routes.add(.post, "/v1/interruptions/azure", .notify, use: azure)
        routes.add(.get, "/v1/interruptions", .read, use: list)
        routes.add(.get, "/v1/interruptions/:id", .read, use: get)
    }

    /// A notice body that passed the signature check (when a webhook secret is set).
    struct SignedBody {
        var object: JSONObject
        /// The verified signature: a replay of this exact request records nothing new.
        var replayKey: String?
    }

    /// Reads the body and checks its signature when a webhook secret is set: nothing is parsed before that. The
    /// replay key names the endpoint too: the same signed body sent to another endpoint is not a replay of it.
    private func signedBody(_ request: Request, _ context: AppRequestContext, endpoint: String) async throws -> SignedBody {
        _ = try Query(request, allowed: [])
        let data = try await request.collectLimited(context)
        var replayKey: String?
        let timestamp = request.headers[HTTPField.Name("X-Spotd-Timestamp")!]
        let signature = request.headers[HTTPField.Name("X-Spotd-Signature")!]
        if let secret = webhookSecret {
            switch Signature.verify(secret: secret, timestamp: timestamp, signature: signature, body: data, now: clock.now()) {
            case .refused(let failure): throw Problem.unauthorized("webhook signature refused: \(failure)")
            case .valid(let digest): replayKey = "\(endpoint):\(digest)"
            }
        }
        return SignedBody(object: try JSONObject(JSONValue.parse(data)), replayKey: replayKey)
    }

    private func record(
        _ notices: [Notice], ignored: [IgnoredNotice] = [], replayKey: String?, context: AppRequestContext,
        started: ContinuousClock.Instant
    ) async throws -> NoticeOutcome {
        let outcome = try await store.recordNotices(notices, ignored: ignored, replayKey: replayKey, actor: context.caller.name)
        let elapsed = ContinuousClock.now - started
        for (detail, created) in outcome.results where created {
            metrics.notice(source: detail.interruption.source, kind: detail.interruption.kind.rawValue)
            if detail.interruption.state != .unmatched {
                metrics.cordonLatency(elapsed)
            } else {
                metrics.unknownNodeNotice(source: detail.interruption.source)
            }
        }
        if outcome.results.contains(where: { $0.1 }) { signal.poke() }
        return outcome
    }

    private func single(_ notice: Notice, replayKey: String?, context: AppRequestContext, started: ContinuousClock.Instant)
        async throws -> Response
    {
        guard let (detail, created) = try await record([notice], replayKey: replayKey, context: context, started: started).results.first
        else {
            throw Problem.conflict("this signed request was answered before, and its record is gone")
        }
        return View.interruption(detail).response(created ? .accepted : .ok)
    }

    @Sendable func generic(_ request: Request, context: AppRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let body = try await signedBody(request, context, endpoint: "generic")
        let notice = try NoticeParser.generic(body.object, now: clock.now())
        return try await single(notice, replayKey: body.replayKey, context: context, started: started)
    }

    @Sendable func aws(_ request: Request, context: AppRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let body = try await signedBody(request, context, endpoint: "aws")
        let notice = try NoticeParser.aws(body.object, now: clock.now())
        return try await single(notice, replayKey: body.replayKey, context: context, started: started)
    }

    @Sendable func gcp(_ request: Request, context: AppRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let body = try await signedBody(request, context, endpoint: "gcp")
        let notice = try NoticeParser.gcp(body.object, now: clock.now())
        return try await single(notice, replayKey: body.replayKey, context: context, started: started)
    }

    /// A Scheduled Events document may carry many events and many VMs: one record per VM, all in one transaction
    /// (at most `NoticeParser.maxRecordsPerRequest`).
    @Sendable func azure(_ request: Request, context: AppRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let body = try await signedBody(request, context, endpoint: "azure")
        let (notices, ignored) = try NoticeParser.azure(body.object, now: clock.now())
        let outcome = try await record(notices, ignored: ignored, replayKey: body.replayKey, context: context, started: started)
        let anyNew = !outcome.replayed && (outcome.results.contains { $0.1 } || !ignored.isEmpty)
        return JSONValue.object([
            "items": .array(outcome.results.map { View.interruption($0.0) }),
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
        let id = try context.pathParameter("id")
        guard let detail = try await store.interruption(id) else { throw Problem.notFound("interruption", id) }
        return View.interruption(detail).response()
    }
}
