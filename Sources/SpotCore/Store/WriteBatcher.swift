import GRDB
import Synchronization

/// Group commit: concurrent writes share one transaction, and so one fsync, each inside its own savepoint.
/// A write that throws rolls back only its savepoint and gets its own error; the others commit together.
/// Every caller is answered only after the shared commit is on disk.
final class WriteBatcher: Sendable {
    private struct Pending: Sendable {
        /// Runs the write inside the shared transaction, remembering its outcome.
        let run: @Sendable (Database) -> Void
        /// Delivers the outcome once the transaction is committed (nil) or failed (the commit error).
        let finish: @Sendable ((any Error)?) -> Void
    }

    private struct State {
        var queue: [Pending] = []
        var draining = false
    }

    private let writer: DatabasePool
    private let state = Mutex(State())
    /// Told, after each commit, how many events of each type it wrote.
    private let observers = Mutex<[@Sendable ([String: Int]) -> Void]>([])
    /// Most writes one transaction takes; keeps a commit's latency bounded under a flood.
    let maxBatch: Int

    init(writer: DatabasePool, maxBatch: Int = 64) {
        self.writer = writer
        self.maxBatch = maxBatch
    }

    /// Calls `observer` after every commit with the events it wrote, by type (nothing for a write that rolled back).
    func observeCommits(_ observer: @escaping @Sendable ([String: Int]) -> Void) {
        observers.withLock { $0.append(observer) }
    }

    func write<T: Sendable>(_ updates: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let outcome = Mutex<Result<T, any Error>?>(nil)
            let pending = Pending(
                run: { db in
                    let result = Result { try Self.inSavepoint(db, updates) }
                    outcome.withLock { $0 = result }
                },
                finish: { commitError in
                    if let commitError {
                        continuation.resume(throwing: commitError)
                    } else {
                        continuation.resume(with: outcome.withLock { $0 } ?? .failure(DatabaseError(resultCode: .SQLITE_ABORT)))
                    }
                })
            let startDrain = state.withLock { state -> Bool in
                state.queue.append(pending)
                guard !state.draining else { return false }
                state.draining = true
                return true
            }
            if startDrain {
                Task { await self.drain() }
            }
        }
    }

    /// Runs one write in its own savepoint: its failure rolls back only its own changes. The savepoint statements are
    /// prepared once (GRDB's `inSavepoint` parses them on every call). A failure that ended the whole transaction
    /// (SQLite aborts it on I/O errors, for one) fails the batch, so no later write can run outside it.
    private static func inSavepoint<T>(_ db: Database, _ updates: (Database) throws -> T) throws -> T {
        try db.cachedStatement(sql: "SAVEPOINT request").execute()
        EventTally.begin(db)
        do {
            let value = try updates(db)
            try db.cachedStatement(sql: "RELEASE SAVEPOINT request").execute()
            EventTally.keep(db)
            return value
        } catch {
            EventTally.discard(db)
            // The batch loop sees the ended transaction and fails every write of the batch.
            guard db.isInsideTransaction else { throw error }
            try db.cachedStatement(sql: "ROLLBACK TRANSACTION TO SAVEPOINT request").execute()
            try db.cachedStatement(sql: "RELEASE SAVEPOINT request").execute()
            throw error
        }
    }

    /// Commits queued writes in batches until the queue is empty.
    private func drain() async {
        while true {
            let batch = state.withLock { state -> [Pending] in
                let batch = Array(state.queue.prefix(maxBatch))
                state.queue.removeFirst(batch.count)
                if batch.isEmpty { state.draining = false }
                return batch
            }
            guard !batch.isEmpty else { return }
            do {
                let tally = try await writer.write { db in
                    EventTally.open(db)
                    defer { EventTally.close(db) }
                    for pending in batch {
                        pending.run(db)
                        guard db.isInsideTransaction else { throw DatabaseError(resultCode: .SQLITE_ABORT) }
                    }
                    return EventTally.kept(db)
                }
                for pending in batch { pending.finish(nil) }
                if !tally.isEmpty {
                    for observer in observers.withLock({ $0 }) { observer(tally) }
                }
            } catch {
                for pending in batch { pending.finish(error) }
            }
        }
    }
}

/// The events each write of a batch appends, by type, kept only for writes whose savepoint is released: so that what
/// a commit wrote can be observed after it (metrics, the event feed) without reading it back.
/// Keyed by connection, since the writer runs one batch at a time per connection.
enum EventTally {
    private struct Tally {
        var kept: [String: Int] = [:]
        var current: [String: Int]?
    }

    private static let tallies = Mutex<[ObjectIdentifier: Tally]>([:])

    static func open(_ db: Database) { tallies.withLock { $0[ObjectIdentifier(db)] = Tally() } }
    static func close(_ db: Database) { _ = tallies.withLock { $0.removeValue(forKey: ObjectIdentifier(db)) } }
    static func kept(_ db: Database) -> [String: Int] { tallies.withLock { $0[ObjectIdentifier(db)]?.kept ?? [:] } }

    static func begin(_ db: Database) { tallies.withLock { $0[ObjectIdentifier(db)]?.current = [:] } }

    static func keep(_ db: Database) {
        tallies.withLock { tallies in
            guard var tally = tallies[ObjectIdentifier(db)], let current = tally.current else { return }
            tally.kept.merge(current, uniquingKeysWith: +)
            tally.current = nil
            tallies[ObjectIdentifier(db)] = tally
        }
    }

    static func discard(_ db: Database) { tallies.withLock { $0[ObjectIdentifier(db)]?.current = nil } }

    /// Counts one appended event, when a batch is open on this connection.
    static func note(_ db: Database, _ type: String) {
        tallies.withLock { tallies in
            let key = ObjectIdentifier(db)
            guard tallies[key]?.current != nil else { return }
            tallies[key]!.current![type, default: 0] += 1
        }
    }
}
