import Foundation
import Logging
import NIOCore
import Synchronization

/// One reader of the event log behind every open event stream.
///
/// The reader keeps the newest events in a ring; a stream that is caught up takes what it has not sent from the ring
/// and costs no store read. A stream that starts further back (or falls behind the ring) reads its own pages from the
/// store, one page per write, so a slow client paces its own reads. Nothing is queued per stream: memory is the ring
/// plus one page per stream being written. The reader runs only while a stream is open.
final class EventFeed: Sendable {
    /// What a stream sends next: events in order, or a keep-alive after a quiet spell.
    enum Item: Sendable {
        case events([Event])
        case keepAlive
    }

    struct Full: Error {}

    private struct Entry {
        var tokenId: String?
        /// The stream's connection: cut when the stream must end while a write waits on its client.
        var channel: (any Channel)?
        let watch: WriteWatch
        var ended = false
        /// The stream waiting for new events.
        var waiter: CheckedContinuation<Void, Never>?
    }

    private struct State {
        /// The newest events read, in id order: complete for every id above `floor` up to `head`.
        var ring: [Event] = []
        var floor: Int64 = 0
        var head: Int64 = 0
        var primed = false
        /// Bumped whenever the ring grows or a stream ends: a waiter that saw an older version wakes at once.
        var version = 0
        var entries: [Int: Entry] = [:]
        var nextId = 0
        var reader: Task<Void, Never>?
        var readerWake: CheckedContinuation<Void, Never>?
        var pending = false

        /// Every stream's change waiter, taken out to be resumed.
        mutating func takeWaiters() -> [CheckedContinuation<Void, Never>] {
            var waiters: [CheckedContinuation<Void, Never>] = []
            for id in entries.keys {
                if let waiter = entries[id]?.waiter { waiters.append(waiter) }
                entries[id]?.waiter = nil
            }
            return waiters
        }
    }

    let store: any EventLog
    let capacity: Int
    let interval: Duration
    let keepAliveEvery: Duration
    /// A stream whose client has not taken a write for this long is closed (it does not read).
    let stallTimeout: Duration
    let ringSize: Int
    /// Most events one write carries; also the page a stream reads from the store when it is behind the ring.
    let page = 200
    let onCountChange: @Sendable (Int) -> Void
    private let state = Mutex(State())
    private let logger: Logger

    init(
        store: any EventLog, capacity: Int, interval: Duration = .milliseconds(250), keepAliveEvery: Duration = .seconds(15),
        stallTimeout: Duration = .seconds(30), ringSize: Int = 4096, logger: Logger,
        onCountChange: @escaping @Sendable (Int) -> Void = { _ in }
    ) {
        self.store = store
        self.capacity = capacity
        self.interval = interval
        self.keepAliveEvery = keepAliveEvery
        self.stallTimeout = stallTimeout
        self.ringSize = ringSize
        self.logger = logger
        self.onCountChange = onCountChange
    }

    /// Open streams now: each holds its slot until its response is over, whatever ended it.
    var count: Int { state.withLock { $0.entries.count } }

    /// One open stream. Its slot is given back when it is released (its response is over, or was never written).
    final class Subscription: Sendable {
        let id: Int
        let type: String?
        /// Marks each write to the client, so that a client that stops reading is found.
        let watch: WriteWatch
        private let feed: EventFeed
        private let last: Mutex<Int64>

        fileprivate init(id: Int, type: String?, from: Int64, watch: WriteWatch, feed: EventFeed) {
            self.id = id
            self.type = type
            self.watch = watch
            self.feed = feed
            self.last = Mutex(from)
        }

        /// The next thing to send; nil once the stream has ended (token revoked, server stopping). Throws when the
        /// task is cancelled (its client hung up).
        func next() async throws -> Item? {
            while true {
                try Task.checkCancellation()
                let after = last.withLock { $0 }
                switch feed.take(id, after: after, type: type) {
                case .ended:
                    return nil
                case .events(let events, let reached, let version, let caughtUp):
                    last.withLock { $0 = reached }
                    if !events.isEmpty { return .events(events) }
                    // A page of other types' events: look at the next page at once.
                    if !caughtUp { continue }
                    if !(await feed.waitForChange(id, seen: version)) {
                        try Task.checkCancellation()
                        return .keepAlive
                    }
                case .behind(let head):
                    // Further back than the ring: this stream reads its own page from the store.
                    let events = try await feed.store.events(since: after, type: type, limit: feed.page)
                    let reached = events.count == feed.page ? events.last!.id : max(head, events.last?.id ?? after)
                    last.withLock { $0 = reached }
                    if !events.isEmpty { return .events(events) }
                }
            }
        }

        /// Ends the stream.
        func end() { feed.end(id) }

        deinit { feed.remove(id) }
    }

    /// Opens a stream of events after `from`, optionally of one type; `tokenId` ends it when that token is revoked.
    /// `channel` is cut when the stream must end while a write waits on its client (or has waited `stallTimeout`).
    func subscribe(from: Int64, type: String?, tokenId: String?, channel: (any Channel)?) throws(Full) -> Subscription {
        let watch = WriteWatch()
        let opened: Int? = state.withLock { state in
            guard state.entries.count < capacity else { return nil }
            let id = state.nextId
            state.nextId += 1
            state.entries[id] = Entry(tokenId: tokenId, channel: channel, watch: watch)
            if state.reader == nil { state.reader = Task { await self.run() } }
            // Under the lock, so that concurrent changes are reported in order.
            onCountChange(state.entries.count)
            return id
        }
        guard let opened else { throw Full() }
        return Subscription(id: opened, type: type, from: from, watch: watch, feed: self)
    }

    /// Something was committed: read it now rather than at the next interval.
    func poke() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.pending = true
            defer { state.readerWake = nil }
            return state.readerWake
        }
        waiter?.resume()
    }

    /// Ends every stream opened with this token, at once.
    func revoke(tokenId: String) {
        let ids = state.withLock { state in state.entries.filter { $0.value.tokenId == tokenId }.map(\.key) }
        for id in ids { end(id) }
    }

    // MARK: - Streams' side

    private enum Take {
        case ended
        /// Events after the stream's position (of its type, if it has one), how far they reach, and whether that is
        /// the head of the ring.
        case events([Event], reached: Int64, version: Int, caughtUp: Bool)
        case behind(head: Int64)
    }

    private func take(_ id: Int, after: Int64, type: String?) -> Take {
        state.withLock { state in
            guard let entry = state.entries[id], !entry.ended else { return .ended }
            // Until the reader has read the head once, wait for it (it bumps the version).
            guard state.primed else { return .events([], reached: after, version: state.version, caughtUp: true) }
            guard after >= state.floor else { return .behind(head: state.head) }
            guard after < state.head else { return .events([], reached: after, version: state.version, caughtUp: true) }
            // The ring is in id order: find the first event past `after` by bisection.
            var low = 0
            var high = state.ring.count
            while low < high {
                let middle = (low + high) / 2
                if state.ring[middle].id <= after { low = middle + 1 } else { high = middle }
            }
            let events = state.ring[low...].prefix(page).filter { type == nil || $0.type == type }
            let more = low + page < state.ring.count
            let reached = more ? state.ring[low + page - 1].id : state.head
            return .events(Array(events), reached: reached, version: state.version, caughtUp: !more)
        }
    }

    /// Which continuation a parked task sits in.
    private enum Slot {
        case change(Int, seen: Int)
        case reader
    }

    /// Parks the task until someone resumes its slot, or the task is cancelled; resumes at once when what it would
    /// wait for has already happened.
    private func park(_ slot: Slot) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if Task.isCancelled { return true }
                    switch slot {
                    case .change(let id, let seen):
                        guard state.version == seen, state.entries[id]?.ended == false else { return true }
                        state.entries[id]?.waiter = continuation
                    case .reader:
                        if state.pending { return true }
                        state.readerWake = continuation
                    }
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                switch slot {
                case .change(let id, _):
                    defer { state.entries[id]?.waiter = nil }
                    return state.entries[id]?.waiter
                case .reader:
                    defer { state.readerWake = nil }
                    return state.readerWake
                }
            }
            waiter?.resume()
        }
    }

    /// Parks in `slot` for at most `timeout`; true when woken, false when the time ran out or the task was cancelled.
    private func park(_ slot: Slot, timeout: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await self.park(slot)
                return true
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let woken = await group.next() ?? false
            group.cancelAll()
            return woken && !Task.isCancelled
        }
    }

    /// Waits for the ring to change (or the stream to end) after `seen`; false after `keepAliveEvery` of quiet.
    private func waitForChange(_ id: Int, seen: Int) async -> Bool {
        await park(.change(id, seen: seen), timeout: keepAliveEvery)
    }

    /// Ends a stream: its next `next()` is nil, and a write that waits on its client is cut at the connection.
    private func end(_ id: Int) {
        let (waiter, cut) = state.withLock { state -> (CheckedContinuation<Void, Never>?, (any Channel)?) in
            guard var entry = state.entries[id], !entry.ended else { return (nil, nil) }
            entry.ended = true
            let waiter = entry.waiter
            entry.waiter = nil
            state.entries[id] = entry
            return (waiter, entry.watch.writing ? entry.channel : nil)
        }
        waiter?.resume()
        cut?.close(promise: nil)
    }

    private func remove(_ id: Int) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let entry = state.entries.removeValue(forKey: id) else { return nil }
            onCountChange(state.entries.count)
            return entry.waiter
        }
        waiter?.resume()
    }

    // MARK: - The reader

    private func run() async {
        while true {
            let keepGoing = state.withLock { state -> Bool in
                if state.entries.isEmpty {
                    // Stop, and forget the ring: the next reader starts from the head of the log, not from here.
                    state.reader = nil
                    state.primed = false
                    state.ring = []
                    return false
                }
                state.pending = false
                return true
            }
            guard keepGoing else { return }
            var more = false
            do {
                more = try await readNew()
            } catch {
                logger.warning("event feed read failed", metadata: ["error": "\(error)"])
            }
            cutStalled()
            if !more { await sleep() }
        }
    }

    /// Reads the events after the head into the ring and wakes the streams; true when a full page came back.
    private func readNew() async throws -> Bool {
        let (primed, head) = state.withLock { ($0.primed, $0.head) }
        guard primed else {
            let last = try await store.lastEventId()
            let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.head = last
                state.floor = last
                state.primed = true
                state.version += 1
                return state.takeWaiters()
            }
            for waiter in waiters { waiter.resume() }
            return true
        }
        let events = try await store.events(since: head, type: nil, limit: 1000)
        guard !events.isEmpty else { return false }
        let revoked = events.filter { $0.type == "token.revoked" }.map { String($0.subject.dropFirst("tokens/".count)) }
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.ring.append(contentsOf: events)
            state.head = events.last!.id
            if state.ring.count > ringSize {
                let drop = state.ring.count - ringSize
                state.floor = state.ring[drop - 1].id
                state.ring.removeFirst(drop)
            }
            state.version += 1
            return state.takeWaiters()
        }
        for waiter in waiters { waiter.resume() }
        // Another replica (or `spotd token`) may have revoked a token: its streams end here too.
        for tokenId in revoked { revoke(tokenId: tokenId) }
        return events.count == 1000
    }

    /// Cuts the connection of every stream whose client has not taken a write for `stallTimeout` (it does not read):
    /// its slot comes back once its response unwinds.
    private func cutStalled() {
        let stalled = state.withLock { state in
            state.entries.values.filter { $0.watch.stalled(longerThan: stallTimeout) }.compactMap(\.channel)
        }
        for channel in stalled { channel.close(promise: nil) }
    }

    private func sleep() async {
        _ = await park(.reader, timeout: interval)
    }
}

/// When the write in progress began, if one is: a stream whose client stops reading is found by it.
final class WriteWatch: Sendable {
    private let since = Atomic<UInt64>(0)

    func started() { since.store(DispatchTime.now().uptimeNanoseconds, ordering: .relaxed) }
    func finished() { since.store(0, ordering: .relaxed) }
    var writing: Bool { since.load(ordering: .relaxed) != 0 }

    /// Whether a write has been waiting on the client for longer than `limit`.
    func stalled(longerThan limit: Duration) -> Bool {
        let started = since.load(ordering: .relaxed)
        guard started != 0 else { return false }
        let nanoseconds = limit.components.seconds * 1_000_000_000 + limit.components.attoseconds / 1_000_000_000
        return DispatchTime.now().uptimeNanoseconds &- started > UInt64(max(nanoseconds, 0))
    }
}
