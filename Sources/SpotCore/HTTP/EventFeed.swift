import Foundation
import Logging
import Synchronization

/// One reader of the event log feeding every open event stream. Each stream costs a queue, not a poller: the
/// feed reads new events once (when a commit says there are some, else every `interval`) and hands each stream
/// what it has not seen yet. A stream that starts in the past catches up from the store in pages, read by the
/// feed for it. The feed runs only while a stream is open.
final class EventFeed: Sendable {
    /// What a stream receives: events in order, or a keep-alive tick.
    enum Item: Sendable {
        case events([Event])
        case keepAlive
    }

    enum SubscribeError: Error { case full }

    private struct Subscriber {
        var type: String?
        var tokenId: String?
        var last: Int64
        var continuation: AsyncStream<Item>.Continuation
    }

    private struct State {
        var subscribers: [Int: Subscriber] = [:]
        var nextId = 0
        var reader: Task<Void, Never>?
        var wake: CheckedContinuation<Void, Never>?
        var pending = false
    }

    let store: AppDatabase
    let capacity: Int
    let interval: Duration
    let keepAliveEvery: Duration
    /// How many undelivered items a stream may have before it is ended (its client reconnects with `Last-Event-ID`).
    let backlog: Int
    let onCountChange: @Sendable (Int) -> Void
    private let state = Mutex(State())
    private let logger: Logger

    init(
        store: AppDatabase, capacity: Int, interval: Duration = .milliseconds(250), keepAliveEvery: Duration = .seconds(15),
        backlog: Int = 256, logger: Logger, onCountChange: @escaping @Sendable (Int) -> Void = { _ in }
    ) {
        self.store = store
        self.capacity = capacity
        self.interval = interval
        self.keepAliveEvery = keepAliveEvery
        self.backlog = backlog
        self.logger = logger
        self.onCountChange = onCountChange
    }

    /// Open streams now.
    var count: Int { state.withLock { $0.subscribers.count } }

    /// An open stream. It closes when it is released, whether or not its response was ever written (a client that
    /// hangs up before the answer must not keep a slot).
    final class Subscription: Sendable {
        let items: AsyncStream<Item>
        private let close: @Sendable () -> Void

        fileprivate init(items: AsyncStream<Item>, close: @escaping @Sendable () -> Void) {
            self.items = items
            self.close = close
        }

        /// Ends the stream (its response finishes).
        func end() { close() }

        deinit { close() }
    }

    /// Opens a stream of events after `from`, optionally of one type; `tokenId` ends it when that token is revoked.
    func subscribe(from: Int64, type: String?, tokenId: String?) throws(SubscribeError) -> Subscription {
        let (stream, continuation) = AsyncStream<Item>.makeStream(bufferingPolicy: .bufferingOldest(backlog))
        let result: (id: Int, count: Int, start: Bool)? = state.withLock { state in
            guard state.subscribers.count < capacity else { return nil }
            let id = state.nextId
            state.nextId += 1
            state.subscribers[id] = Subscriber(type: type, tokenId: tokenId, last: from, continuation: continuation)
            state.pending = true
            let start = state.reader == nil
            if start { state.reader = Task { await self.run() } }
            return (id, state.subscribers.count, start)
        }
        guard let result else { throw .full }
        continuation.onTermination = { [weak self] _ in self?.remove(result.id) }
        onCountChange(result.count)
        poke()
        return Subscription(items: stream) { continuation.finish() }
    }

    /// Something was committed: read it now rather than at the next interval.
    func poke() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.pending = true
            defer { state.wake = nil }
            return state.wake
        }
        waiter?.resume()
    }

    /// Ends every stream opened with this token, at once.
    func revoke(tokenId: String) {
        let ended = state.withLock { state in state.subscribers.values.filter { $0.tokenId == tokenId }.map(\.continuation) }
        for continuation in ended { continuation.finish() }
    }

    private func remove(_ id: Int) {
        let count = state.withLock { state -> Int? in
            guard state.subscribers.removeValue(forKey: id) != nil else { return nil }
            return state.subscribers.count
        }
        if let count { onCountChange(count) }
    }

    /// The reader: runs until the last stream closes.
    private func run() async {
        var lastKeepAlive = ContinuousClock.now
        while true {
            let subscribers = state.withLock { state -> [Int: Subscriber]? in
                if state.subscribers.isEmpty {
                    state.reader = nil
                    return nil
                }
                state.pending = false
                return state.subscribers
            }
            guard let subscribers else { return }
            var behind = false
            do {
                behind = try await deliver(to: subscribers)
            } catch {
                logger.warning("event feed read failed", metadata: ["error": "\(error)"])
            }
            if ContinuousClock.now - lastKeepAlive >= keepAliveEvery {
                lastKeepAlive = ContinuousClock.now
                for subscriber in subscribers.values { subscriber.continuation.yield(.keepAlive) }
            }
            if !behind { await sleep() }
        }
    }

    /// Reads what each stream has not seen and hands it over; true when some stream is still behind.
    private func deliver(to subscribers: [Int: Subscriber]) async throws -> Bool {
        let page = 500
        // One read of everything new serves every stream that is caught up.
        let oldest = subscribers.values.map(\.last).min() ?? 0
        let head = try await store.lastEventId()
        var shared: [Event] = []
        var sharedFrom = head
        if head > oldest {
            sharedFrom = max(oldest, head - Int64(page) * 2)
            shared = try await store.events(since: sharedFrom, type: nil, limit: page * 2)
        }
        var behind = false
        var advanced: [Int: Int64] = [:]
        var tokensRevoked: [String] = []
        for event in shared where event.type == "token.revoked" {
            tokensRevoked.append(String(event.subject.dropFirst("tokens/".count)))
        }
        for (id, subscriber) in subscribers where subscriber.last < head {
            var events: [Event]
            var reached: Int64
            if subscriber.last >= sharedFrom {
                events = shared.filter { $0.id > subscriber.last && (subscriber.type == nil || $0.type == subscriber.type) }
                reached = max(head, shared.last?.id ?? head)
            } else {
                // Far behind (a stream started in the past): catch up from the store, a page at a time.
                events = try await store.events(since: subscriber.last, type: subscriber.type, limit: page)
                reached = events.count == page ? events.last!.id : max(head, events.last?.id ?? head)
                behind = behind || events.count == page
            }
            if reached < head { behind = true }
            advanced[id] = reached
            guard !events.isEmpty else { continue }
            if case .dropped = subscriber.continuation.yield(.events(events)) {
                // Its client reads too slowly: end the stream rather than hold its backlog.
                subscriber.continuation.finish()
            }
        }
        state.withLock { state in
            for (id, last) in advanced where state.subscribers[id] != nil { state.subscribers[id]!.last = last }
        }
        for tokenId in tokensRevoked { revoke(tokenId: tokenId) }
        return behind
    }

    private func sleep() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [interval] in try? await Task.sleep(for: interval) }
            group.addTask {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = self.state.withLock { state -> Bool in
                        if state.pending { return true }
                        state.wake = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            }
            await group.next()
            group.cancelAll()
            // The other child may be parked on `wake`: release it.
            poke()
            await group.next()
        }
    }
}
