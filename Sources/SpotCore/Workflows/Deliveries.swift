import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import Synchronization

/// Delivers events to subscriptions, from the event log (the outbox), in event order and at least once: the cursor
/// moves past an event only once the receiver answered 2xx, and a failure stops that subscription until its backoff
/// ends, so nothing behind the failed event overtakes it. Subscriptions are independent: one receiver that is down
/// delays no other. Runs on the worker under its lease; a replica that lost the lease records nothing.
///
/// Order rests on one property of the store: event ids are committed in id order, so no event can appear later
/// below a cursor. SQLite has one writer (and the write batcher commits in order); PostgreSQL's store takes one
/// advisory lock per write transaction (`PostgresPool.writeLockKey`), held until it commits, which serializes the
/// writers of every replica the same way.
struct Deliveries: Sendable {
    let store: any SubscriptionStore
    let clock: any SpotClock
    let metrics: SpotMetrics
    let logger: Logger
    var client: HTTPClient = Deliveries.client
    /// A receiver has this long to answer a delivery.
    var timeoutSeconds: Double = 10
    /// Deliveries per subscription per run, so that one busy subscription cannot hold the loop.
    var batch = 200

    /// 1 s, 2 s, 4 s, … after each failed try of the same event, at most 60 s.
    static func retryDelay(afterAttempt attempts: Int64) -> Millis {
        let exponent = min(max(attempts - 1, 0), 6)
        return min(1000 << exponent, 60_000)
    }

    /// The HTTP client of every delivery: no redirects (a 3xx is a failure: following one turns the POST into a GET
    /// with no body, which a 2xx would have passed off as delivered), no retried connection attempts (a receiver
    /// that refuses connections fails at once, not at the timeout), a 3 s connect timeout. One per process, never
    /// shut down, as `HTTPClient.shared`.
    static let client = HTTPClient(
        eventLoopGroupProvider: .singleton,
        configuration: {
            var configuration = HTTPClient.Configuration(redirectConfiguration: .disallow, timeout: .init(connect: .seconds(3)))
            configuration.connectionPool.retryConnectionEstablishment = false
            return configuration
        }())

    /// Subscriptions being delivered now, so that a run does not start a second delivery of one (order), with their
    /// tasks, so that the worker can end them when it stops.
    let inFlight = InFlight()

    /// One run: starts delivering to every due subscription that is behind the event log and not already being
    /// delivered to, each in its own task, and returns without waiting for them: a receiver that takes its full
    /// timeout holds up no other subscription.
    @discardableResult
    func start(lease: Lease) async throws -> [Task<Void, Never>] {
        let last = try await store.lastEventId()
        let due = try await store.dueSubscriptions(now: clock.now()).filter { $0.cursor < last }
        return due.compactMap { listed in
            inFlight.start(listed.id) { [self] in
                do {
                    // Read again now that this task holds the subscription: the list may predate a delivery that
                    // ended since (its cursor and backoff are newer than the listed ones).
                    guard let subscription = try await store.subscription(listed.id), subscription.nextAttemptAt <= clock.now(),
                        subscription.cursor < last
                    else { return }
                    try await deliver(subscription, lease: lease)
                } catch {
                    // A lost lease (fenced) or a store error: the next run, on whichever process leads, tries again.
                    logger.debug("subscription delivery stopped", metadata: ["subscription": "\(listed.id)", "error": "\(error)"])
                }
            }
        }
    }

    /// Ends the deliveries under way (the worker is stopping): each is cancelled, and waited for at most `seconds`.
    func stop(waitingAtMost seconds: Double = 5) async {
        let tasks = inFlight.cancelAll()
        _ = await boundedCall(seconds: seconds, fallback: ()) {
            for task in tasks { await task.value }
        }
    }

    /// One run, waiting for its deliveries to end (tests step it).
    func run(lease: Lease) async throws {
        for task in try await start(lease: lease) { await task.value }
    }

    /// Delivers what `subscription` has not had yet, in order, up to `batch` events; stops at the first failure.
    func deliver(_ subscription: Subscription, lease: Lease) async throws {
        var cursor = subscription.cursor
        var passed = false
        var sent = 0
        reading: while sent < batch {
            let events = try await store.events(since: cursor, type: nil, limit: 500)
            guard let first = events.first else { break }
            if first.id > cursor + 1, cursor > 0 {
                // Ids are contiguous but for retention: these events were removed before this subscription had them.
                logger.warning(
                    "subscription skipped events removed by retention",
                    metadata: ["subscription": "\(subscription.id)", "from": "\(cursor + 1)", "to": "\(first.id - 1)"])
            }
            for event in events {
                guard subscription.matches(event.type) else {
                    cursor = event.id
                    passed = true
                    continue
                }
                let outcome = await send(event, to: subscription)
                switch outcome {
                case .delivered:
                    metrics.delivery("delivered")
                    // Deleted meanwhile: stop.
                    guard try await store.recordDelivery(subscription.id, outcome, lease: lease) else { return }
                    cursor = event.id
                    passed = false
                    sent += 1
                    if sent >= batch { break reading }
                case .failed(let status, let error):
                    // Cut off by the worker stopping: not the receiver's failure (the event goes again after restart).
                    guard !Task.isCancelled else { return }
                    metrics.delivery("failed")
                    if passed { try await store.recordDelivery(subscription.id, .passed(cursor: cursor), lease: lease) }
                    try await store.recordDelivery(subscription.id, outcome, lease: lease)
                    logger.warning(
                        "subscription delivery failed",
                        metadata: [
                            "subscription": "\(subscription.id)", "event": "\(event.id)", "status": "\(status.map(String.init) ?? "none")",
                            "error": "\(error)", "attempt": "\(subscription.attempts + 1)",
                        ])
                    return
                case .passed:
                    break
                }
            }
        }
        if passed { try await store.recordDelivery(subscription.id, .passed(cursor: cursor), lease: lease) }
    }

    /// One signed POST of one event. Headers: `X-Spotd-Event-Id` (the receiver's key for duplicates: delivery is
    /// at least once), `X-Spotd-Event-Type`, `X-Spotd-Subscription`, and the signature of the body as for
    /// provider calls: `X-Spotd-Timestamp` and `X-Spotd-Signature: sha256=HMAC(secret, "<timestamp>.<body>")`.
    func send(_ event: Event, to subscription: Subscription) async -> DeliveryOutcome {
        let body = DeliveryFormat.body(event, format: subscription.format)
        let timestamp = String(clock.now() / 1000)
        var request = HTTPClientRequest(url: subscription.url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "spotd/\(SpotVersion.current)")
        request.headers.add(name: "X-Spotd-Event-Id", value: String(event.id))
        request.headers.add(name: "X-Spotd-Event-Type", value: event.type)
        request.headers.add(name: "X-Spotd-Subscription", value: subscription.id)
        request.headers.add(name: "X-Spotd-Timestamp", value: timestamp)
        request.headers.add(
            name: "X-Spotd-Signature", value: "sha256=" + Signature.hex(secret: subscription.secret, timestamp: timestamp, body: body))
        request.body = .bytes(ByteBuffer(data: body))
        let client = self.client
        let signed = request
        let timeout = timeoutSeconds
        return await boundedCall(seconds: timeout + 5, fallback: .failed(status: nil, error: "no answer within \(Int(timeout)) s")) {
            do {
                let response = try await client.execute(signed, timeout: .milliseconds(Int64(timeout * 1000)))
                _ = try? await response.body.collect(upTo: 1 << 16)
                let status = Int(response.status.code)
                guard (200..<300).contains(status) else { return .failed(status: status, error: "the receiver answered \(status)") }
                return .delivered(cursor: event.id, status: status)
            } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout {
                return .failed(status: nil, error: "no answer within \(Int(timeout)) s")
            } catch {
                return .failed(status: nil, error: "unreachable: \(Self.describe(error))")
            }
        }
    }
}

extension Deliveries {
    /// A transport error in words a reader of the subscription may see: the HTTP client's and the system's own
    /// descriptions, else the error's type and case (a TLS library's description carries source paths).
    static func describe(_ error: any Error) -> String {
        switch error {
        case let error as HTTPClientError: return String(describing: error)
        case let error as IOError: return error.description
        default:
            let name = String(describing: type(of: error))
            let mirror = Mirror(reflecting: error)
            guard mirror.displayStyle == .enum, let label = mirror.children.first?.label else { return name }
            return "\(name).\(label)"
        }
    }
}

/// Work under way, one task per id.
final class InFlight: Sendable {
    private let tasks = Mutex<[String: Task<Void, Never>]>([:])

    /// Starts `work` for `id` unless a task for `id` is under way; the task is forgotten when it ends.
    func start(_ id: String, _ work: @escaping @Sendable () async -> Void) -> Task<Void, Never>? {
        tasks.withLock { tasks in
            guard tasks[id] == nil else { return nil }
            let task = Task {
                await work()
                self.finished(id)
            }
            tasks[id] = task
            return task
        }
    }

    private func finished(_ id: String) { _ = tasks.withLock { $0.removeValue(forKey: id) } }

    /// Cancels every task under way and returns them.
    func cancelAll() -> [Task<Void, Never>] {
        tasks.withLock { tasks in
            let all = Array(tasks.values)
            for task in all { task.cancel() }
            return all
        }
    }
}
