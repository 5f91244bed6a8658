import Crypto
import Foundation
import GRDB
import Logging
import Synchronization

/// The store: one SQLite file in WAL mode behind one `DatabasePool` (the embedded default), or a PostgreSQL
/// database that several replicas share. The store's transactions are written once, against `Database` (`SQL.swift`).
/// Every method that keeps an invariant is exactly one transaction.
public final class SpotStore: Sendable {
    enum Engine: Sendable {
        case sqlite(DatabasePool, WriteBatcher)
        case postgres(PostgresPool)
    }

    let engine: Engine
    let placementHints = PlacementHints()
    let catalog = Catalog()
    let clock: any SpotClock
    let logger: Logger

    /// The migrations this store was opened with; `/readyz` compares the store against them.
    let migrations: [Migration]
    /// The admission limit (`--admission-limit`) of the default policies, for a tier with no stored policy.
    let admissionLimit: Int64
    /// How long a replica that stops serving drains (`--replica-drain-seconds`).
    let replicaDrainSeconds: Int64
    /// Whether the simulated provider is the cloud: then a node registered through the API is one of its instances.
    let simulatedCloud: Bool
    /// Told, after each commit, how many events of each type it wrote.
    private let commitObservers = CommitObservers()

    /// Opens the store `location` names: a `postgres://` URL, or a SQLite file (created if needed). SQLite takes
    /// `migrations` (by default those built into the binary), PostgreSQL its own (`migrations/postgres/`). Errors name
    /// the path or server and what is wrong with it.
    public convenience init(
        location: String, migrations: [Migration]? = nil, connections: Int = 8, admissionLimit: Int64 = 3600,
        replicaDrainSeconds: Int64 = 30,
        simulatedCloud: Bool = false, clock: any SpotClock = SystemClock(), logger: Logger = Logger(label: "spotd.store")
    ) throws {
        if PostgresTarget.isPostgres(location) {
            try self.init(
                postgres: try PostgresTarget(url: location), migrations: migrations ?? Migration.embeddedPostgres,
                connections: connections, admissionLimit: admissionLimit, replicaDrainSeconds: replicaDrainSeconds,
                simulatedCloud: simulatedCloud, clock: clock,
                logger: logger)
        } else {
            try self.init(
                path: location, migrations: migrations ?? Migration.embedded, admissionLimit: admissionLimit,
                replicaDrainSeconds: replicaDrainSeconds, simulatedCloud: simulatedCloud, clock: clock, logger: logger)
        }
    }

    /// Opens (creating if needed) the SQLite store at `path` and applies `migrations`.
    public init(
        path: String, migrations: [Migration] = Migration.embedded, admissionLimit: Int64 = 3600, replicaDrainSeconds: Int64 = 30,
        simulatedCloud: Bool = false,
        clock: any SpotClock = SystemClock(),
        logger: Logger = Logger(label: "spotd.store")
    ) throws {
        var configuration = Configuration()
        configuration.foreignKeysEnabled = true
        configuration.busyMode = .timeout(10)
        configuration.label = "spotd"
        configuration.prepareDatabase { db in
            // FULL: a commit is on disk before the answer is sent.
            try db.execute(sql: "PRAGMA synchronous = FULL")
            // The Checkpointer service checkpoints off the write path; this threshold (40 MiB of WAL) is the net.
            try db.execute(sql: "PRAGMA wal_autocheckpoint = 10000")
        }
        let writer: DatabasePool
        do {
            writer = try DatabasePool(path: path, configuration: configuration)
        } catch let error as DatabaseError {
            throw StartupError.database(path: path, detail: StartupError.explain(error))
        }
        self.engine = .sqlite(writer, WriteBatcher(writer: writer))
        self.clock = clock
        self.logger = logger
        self.migrations = migrations
        self.admissionLimit = admissionLimit
        self.replicaDrainSeconds = replicaDrainSeconds
        self.simulatedCloud = simulatedCloud
        do {
            try Migrator(migrations: migrations, logger: logger).apply(to: writer)
        } catch let error as MigrationError {
            throw StartupError.database(path: path, detail: error.description)
        } catch let error as DatabaseError {
            throw StartupError.database(path: path, detail: StartupError.explain(error))
        }
        if case .sqlite(_, let batcher) = engine {
            let observers = commitObservers
            batcher.observeCommits { observers.tell($0) }
        }
    }

    /// Connects to PostgreSQL and applies `migrations` under an advisory lock (replicas starting together apply them
    /// once). Errors say which of URL, host, password or database is wrong.
    init(
        postgres target: PostgresTarget, migrations: [Migration], connections: Int = 8, admissionLimit: Int64 = 3600,
        replicaDrainSeconds: Int64 = 30, simulatedCloud: Bool = false, clock: any SpotClock = SystemClock(),
        logger: Logger = Logger(label: "spotd.store")
    ) throws {
        let pool: PostgresPool
        do {
            pool = try PostgresPool(target: target, connections: connections, logger: logger)
        } catch {
            throw StartupError.postgres(target: target.description, detail: "TLS cannot be set up: \(error)")
        }
        self.engine = .postgres(pool)
        self.clock = clock
        self.logger = logger
        self.migrations = migrations
        self.admissionLimit = admissionLimit
        self.replicaDrainSeconds = replicaDrainSeconds
        self.simulatedCloud = simulatedCloud
        do {
            try PostgresMigrator(migrations: migrations, logger: logger).apply(pool)
        } catch {
            pool.shutdown()
            throw StartupError.postgres(target: target.description, detail: PostgresMigrator.explain(error, target: target))
        }
    }

    /// "sqlite" or "postgres", as `/readyz` says.
    public var kind: String {
        switch engine {
        case .sqlite: "sqlite"
        case .postgres: "postgres"
        }
    }

    /// Whether the store answers and every migration this binary knows is applied (no file is read).
    public func isReady() async -> Bool {
        let newest = migrations.map(\.version).max() ?? 0
        do {
            let applied = try await read { db in
                try Int.fetchOne(db.cachedStatement(sql: "SELECT COALESCE(MAX(version), 0) FROM schema_migrations")) ?? 0
            }
            return applied >= newest
        } catch {
            return false
        }
    }

    /// Calls `observer` after every commit with the events it wrote, by type (nothing for a write that rolled back).
    func observeCommits(_ observer: @escaping @Sendable ([String: Int]) -> Void) {
        commitObservers.add(observer)
    }

    /// One write transaction. SQLite: shared with concurrent writers (group commit), answered once it is on disk.
    /// PostgreSQL: its own transaction, after the write lock.
    func write<T: Sendable>(_ updates: @escaping @Sendable (Database) throws -> T) async throws -> T {
        switch engine {
        case .sqlite(_, let batcher):
            return try await batcher.write { db in try updates(Database(sqlite: db)) }
        case .postgres(let pool):
            let (value, events) = try await pool.transaction(write: true) { db in
                let value = try updates(db)
                guard case .postgres(let session) = db.backend else { return (value, [String: Int]()) }
                return (value, session.appendedEvents)
            }
            if !events.isEmpty { commitObservers.tell(events) }
            return value
        }
    }

    /// The worker lease's write. PostgreSQL: on its own connection, never queued behind the API's writes.
    func leaseWrite<T: Sendable>(_ updates: @escaping @Sendable (Database) throws -> T) async throws -> T {
        switch engine {
        case .sqlite: try await write(updates)
        case .postgres(let pool): try await pool.leaseTransaction(updates)
        }
    }

    /// A read from a snapshot, off the cooperative threads.
    func read<T: Sendable>(_ value: @escaping @Sendable (Database) throws -> T) async throws -> T {
        switch engine {
        case .sqlite(let writer, _): try await writer.read { db in try value(Database(sqlite: db)) }
        case .postgres(let pool): try await pool.transaction(write: false, value)
        }
    }

    /// A read on the calling thread (tests, and tools that are not async).
    func blockingRead<T>(_ value: (Database) throws -> T) throws -> T {
        switch engine {
        case .sqlite(let writer, _): try writer.read { db in try value(Database(sqlite: db)) }
        case .postgres(let pool): try pool.blockingTransaction(write: false, value)
        }
    }

    /// The SQLite pool, when the store is SQLite (the checkpointer, and tests of SQLite's query plans).
    var sqliteWriter: DatabasePool? {
        if case .sqlite(let writer, _) = engine { return writer }
        return nil
    }

    /// A write at startup, before the server runs (seeding the policies).
    func blockingWrite<T>(_ updates: (Database) throws -> T) throws -> T {
        switch engine {
        case .sqlite(let writer, _): try writer.write { db in try updates(Database(sqlite: db)) }
        case .postgres(let pool): try pool.blockingTransaction(write: true, updates)
        }
    }

    /// SQLite: flushes the WAL into the main file. PostgreSQL: closes the connections. Called at shutdown.
    public func close() throws {
        switch engine {
        case .sqlite(let writer, _):
            try writer.writeWithoutTransaction { db in _ = try db.checkpoint(.truncate) }
            try writer.close()
        case .postgres(let pool):
            pool.shutdown()
        }
    }
}

/// The observers of commits, told what each commit wrote.
final class CommitObservers: Sendable {
    private let observers = Mutex<[@Sendable ([String: Int]) -> Void]>([])

    func add(_ observer: @escaping @Sendable ([String: Int]) -> Void) {
        observers.withLock { $0.append(observer) }
    }

    func tell(_ events: [String: Int]) {
        for observer in observers.withLock({ $0 }) { observer(events) }
    }
}

/// One schema change: `NNNN_name.sql`, applied once, in order, and recorded with its checksum.
public struct Migration: Sendable, Equatable {
    public var version: Int
    public var name: String
    public var sql: String
    public var checksum: String

    /// A migration from its file name (`NNNN_name.sql`) and text; nil when the name has no version.
    init?(file name: String, sql: String) {
        guard name.hasSuffix(".sql"), let version = Int(name.prefix { $0.isASCII && $0.isNumber }.prefix(9)), version > 0 else {
            return nil
        }
        self.version = version
        self.name = name
        self.sql = sql
        self.checksum = Hex.encode(SHA256.hash(data: Data(sql.utf8)))
    }

    /// The migrations of a folder, to use instead of the built-in ones (`--migrations`).
    public static func load(from directory: String) throws -> [Migration] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw StartupError.migrations(path: directory, detail: "the folder cannot be read (does it exist?)")
        }
        let migrations = try names.filter { $0.hasSuffix(".sql") }.sorted().map { name -> Migration in
            guard let text = try? String(contentsOfFile: (directory as NSString).appendingPathComponent(name), encoding: .utf8) else {
                throw StartupError.migrations(path: directory, detail: "\(name) cannot be read as UTF-8 text")
            }
            guard let migration = Migration(file: name, sql: text) else {
                throw StartupError.migrations(path: directory, detail: "\(name) must be named NNNN_name.sql")
            }
            return migration
        }
        guard !migrations.isEmpty else { throw StartupError.migrations(path: directory, detail: "the folder holds no NNNN_name.sql file") }
        guard Set(migrations.map(\.version)).count == migrations.count else {
            throw StartupError.migrations(path: directory, detail: "two files have the same version number")
        }
        return migrations
    }
}

/// Applies migrations in order, recording each in `schema_migrations`; refuses a store that a newer spotd wrote.
struct Migrator {
    let migrations: [Migration]
    let logger: Logger

    func apply(to writer: DatabasePool) throws {
        guard !migrations.isEmpty else { throw MigrationError.none }
        let known = Dictionary(uniqueKeysWithValues: migrations.map { ($0.version, $0) })
        let newest = migrations.map(\.version).max()!
        try writer.writeWithoutTransaction { db in
            try db.execute(
                sql: """
                    CREATE TABLE IF NOT EXISTS schema_migrations (
                        version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at INTEGER NOT NULL)
                    """)
            // A version this binary does not know means a newer spotd wrote the store: its schema may not be ours.
            let applied = try GRDB.Row.fetchAll(db, sql: "SELECT version, name FROM schema_migrations ORDER BY version")
            for row in applied {
                let version: Int = row["version"]
                if known[version] == nil {
                    throw MigrationError.newer(version: version, name: row["name"], newest: newest)
                }
            }
            for migration in migrations.sorted(by: { $0.version < $1.version }) {
                try db.inTransaction(.immediate) {
                    if let existing = try String.fetchOne(
                        db as GRDB.Database, sql: "SELECT checksum FROM schema_migrations WHERE version = ?", arguments: [migration.version]
                    ) {
                        guard existing == migration.checksum else { throw MigrationError.edited(migration.name) }
                        return .commit
                    }
                    do {
                        try db.execute(sql: migration.sql)
                    } catch let error as DatabaseError {
                        throw MigrationError.failed(migration.name, error.message ?? "\(error.resultCode)")
                    }
                    try db.execute(
                        sql: "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                        arguments: [migration.version, migration.name, migration.checksum, SystemClock().now()])
                    logger.info("migration applied", metadata: ["migration": "\(migration.name)"])
                    return .commit
                }
            }
        }
    }
}

enum MigrationError: Error, CustomStringConvertible {
    case edited(String)
    case none
    case newer(version: Int, name: String, newest: Int)
    case failed(String, String)

    var description: String {
        switch self {
        case .edited(let name): "migration \(name) was changed after it was applied; add a new migration instead"
        case .none: "no migrations to apply"
        case .failed(let name, let message): "migration \(name) failed: \(message)"
        case .newer(let version, let name, let newest):
            "it was written by a newer spotd (it has migration \(version) \(name); this spotd knows up to \(newest)): "
                + "run the newer spotd, or point --db at another file"
        }
    }
}
