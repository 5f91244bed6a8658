import Foundation
import Hummingbird

/// `/v1/subscriptions`: events delivered to a URL (operator to create and delete; any reader to look).
struct SubscriptionController {
    let store: any SubscriptionStore

    func register(on routes: RouteBook) {
        routes.add(.post, "/v1/subscriptions", .operate, use: create)
        routes.add(.get, "/v1/subscriptions", .read, use: list)
        routes.add(.get, "/v1/subscriptions/:id", .read, use: get)
        routes.add(.delete, "/v1/subscriptions/:id", .operate, use: delete)
    }

    @Sendable func create(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let body = try await request.jsonObject(context)
        try body.rejectUnknown(["url", "events", "format"])
        let url = try Self.deliveryURL(try body.string("url", required: true, maxLength: 2048)!)
        let items = try body.array("events", required: true, maxCount: 32)!
        guard !items.isEmpty else { throw Problem.invalidField("events", "must name at least one event type or pattern") }
        var patterns: [EventPattern] = []
        for (index, item) in items.enumerated() {
            guard case .string(let text) = item, let pattern = EventPattern(text) else {
                throw Problem.invalidField(
                    "events[\(index)]", "must be an event type (node.cordoned), a family (interruption.*) or * (every event)")
            }
            if !patterns.contains(pattern) { patterns.append(pattern) }
        }
        let format = try body.enumeration("format", Subscription.Format.self) ?? .json
        let subscription = try await store.createSubscription(url: url, events: patterns, format: format, actor: context.caller.name)
        return View.subscription(subscription, lastEventId: subscription.cursor, secret: subscription.secret)
            .response(.created)
    }

    /// An absolute `http` or `https` URL with a host, and no fragment: where deliveries go. The shape the schema
    /// states (`http://` or `https://`, then printable ASCII) is 400; what it cannot state (a host, a port in range,
    /// no fragment) is 422.
    static func deliveryURL(_ text: String) throws -> String {
        let lowered = text.lowercased()
        guard lowered.hasPrefix("http://") || lowered.hasPrefix("https://"),
            text.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F })
        else {
            throw Problem.invalidField(
                "url", "must start with http:// or https:// and be printable ASCII without spaces (percent-encode the rest)")
        }
        guard let components = URLComponents(string: text), let host = components.host, !host.isEmpty else {
            throw Problem.unprocessable("url", "must be an absolute URL with a host")
        }
        guard components.fragment == nil else { throw Problem.unprocessable("url", "must not have a fragment (#…)") }
        // A port too large for an integer parses as no port at all: the range of its text says it was there.
        if components.rangeOfPort != nil, !(1...65535).contains(components.port ?? 0) {
            throw Problem.unprocessable("url", "has a port out of range (1-65535)")
        }
        guard components.user == nil, components.password == nil else {
            throw Problem.unprocessable("url", "must not carry credentials (user:password@): they would not be sent; use a secret path")
        }
        return text
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let page = try Query(request, allowed: ["limit", "cursor"]).page()
        let last = try await store.lastEventId()
        return View.page(try await store.listSubscriptions(page)) { View.subscription($0, lastEventId: last) }.response()
    }

    @Sendable func get(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        let id = try context.pathParameter("id")
        guard let subscription = try await store.subscription(id) else { throw Problem.notFound("subscription", id) }
        return View.subscription(subscription, lastEventId: try await store.lastEventId()).response()
    }

    @Sendable func delete(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        try await store.deleteSubscription(try context.pathParameter("id"), actor: context.caller.name)
        return Response(status: .noContent)
    }
}

extension View {
    /// A subscription and its delivery state. `delivery.state`: `ok` (caught up, or delivering), `retrying` (the
    /// last try failed; the next is at `next_attempt_at`). `events_behind` counts events after the cursor, of any
    /// type (those that do not match are passed over without a call).
    static func subscription(_ subscription: Subscription, lastEventId: Int64, secret: String? = nil) -> JSONValue {
        var delivery: [String: JSONValue] = [
            "state": .string(subscription.attempts > 0 ? "retrying" : "ok"),
            "cursor": .int(subscription.cursor),
            "events_behind": .int(max(0, lastEventId - subscription.cursor)),
            "delivered": .int(subscription.delivered),
            "failed_attempts": .int(subscription.attempts),
            "last_attempt_at": time(subscription.lastAttemptAt),
            "last_status": subscription.lastStatus.map { .int(Int64($0)) } ?? .null,
            "last_error": string(subscription.lastError),
            "last_delivered_at": time(subscription.lastDeliveredAt),
        ]
        delivery["next_attempt_at"] = subscription.attempts > 0 ? time(subscription.nextAttemptAt) : .null
        var fields: [String: JSONValue] = [
            "id": .string(subscription.id), "url": .string(subscription.redactedURL),
            "events": .array(subscription.events.map { .string($0.text) }), "format": .string(subscription.format.rawValue),
            "created_at": time(subscription.createdAt), "created_by": .string(subscription.createdBy), "delivery": .object(delivery),
        ]
        if let secret { fields["secret"] = .string(secret) }
        return .object(fields)
    }
}
