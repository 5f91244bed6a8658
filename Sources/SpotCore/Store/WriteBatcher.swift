import GRDB
import Synchronization

/// Group commit: concurrent writes share one transaction, and so one fsync, each inside its own savepoint.
/// A write that throws rolls back only its savepoint and gets its own error; the others commit together.
/// Every caller is answered only after the shared commit is on disk.
final class WriteBatcher: Sendable {
    private struct Pending: Sendable {
        /// Runs the write inside the shared transaction, remembering its outcome.
        let run: @Sendable (GRDB.Database) -> Void
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

    func write<T: Sendable>(_ updates: @escaping @Sendable (GRDB.Database) throws -> T) async throws -> T {
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
    private static func inSavepoint<T>(_ db: GRDB.Database, _ updates: (GRDB.Database) throws -> T) throws -> T {
        try db.cachedStatement(sql: "SAVEPOINT request").execute()
        do {
            let value = try updates(db)
            try db.cachedStatement(sql: "RELEASE SAVEPOINT request").execute()
            return value
        } catch {
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
                let observed = !observers.withLock { $0.isEmpty }
                let tally = try await writer.write { db in
                    // Events are numbered in commit order: what this batch wrote is what lies past the newest id now
                    // (a write that rolled back its savepoint took its events with it).
                    let newest = observed ? try Self.newestEventId(db) : 0
                    for pending in batch {
                        pending.run(db)
                        guard db.isInsideTransaction else { throw DatabaseError(resultCode: .SQLITE_ABORT) }
                    }
                    return observed ? try Self.eventTypes(db, after: newest) : [:]
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

    /// The events of one batch, by rowid range (StoreTests checks that SQLite searches the rowid for it).
    static let batchEventTypesSQL = "SELECT type FROM events WHERE id > ?"

    private static func newestEventId(_ db: GRDB.Database) throws -> Int64 {
        try Int64.fetchOne(db.cachedStatement(sql: "SELECT COALESCE(MAX(id), 0) FROM events") as GRDB.Statement) ?? 0
    }

    /// Events written after `id`, counted by type. Read by rowid range and counted here: a `GROUP BY type` makes
    /// SQLite walk the whole `events_type` index, every event ever written, on every commit.
    private static func eventTypes(_ db: GRDB.Database, after id: Int64) throws -> [String: Int] {
        var counts: [String: Int] = [:]
        let types = try String.fetchCursor(db.cachedStatement(sql: batchEventTypesSQL) as GRDB.Statement, arguments: [id])
        while let type = try types.next() { counts[type, default: 0] += 1 }
        return counts
    }
}
