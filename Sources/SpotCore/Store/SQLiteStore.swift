import Crypto
import Foundation
import GRDB
import Logging

/// The store: one SQLite file in WAL mode behind one `DatabasePool`.
/// Every method that keeps an invariant is exactly one transaction.
public final class SQLiteStore: Sendable {
    let writer: DatabasePool
    let batcher: WriteBatcher
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

    /// Opens (creating if needed) the store at `path` and applies `migrations` (by default those built into the
    /// binary). Errors name the path and what is wrong with it.
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
        do {
            self.writer = try DatabasePool(path: path, configuration: configuration)
        } catch let error as DatabaseError {
            throw StartupError.database(path: path, detail: StartupError.explain(error))
        }
        self.batcher = WriteBatcher(writer: writer)
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

    /// One write transaction, shared with concurrent writers (group commit); answered once it is on disk.
    func write<T: Sendable>(_ updates: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await batcher.write(updates)
    }

    /// A read from a snapshot, off the cooperative threads.
    func read<T: Sendable>(_ value: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await writer.read(value)
    }

    /// Flushes the WAL into the main file; called at shutdown.
    public func close() throws {
        try writer.writeWithoutTransaction { db in _ = try db.checkpoint(.truncate) }
        try writer.close()
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
            let applied = try Row.fetchAll(db, sql: "SELECT version, name FROM schema_migrations ORDER BY version")
            for row in applied {
                let version: Int = row["version"]
                if known[version] == nil {
                    throw MigrationError.newer(version: version, name: row["name"], newest: newest)
                }
            }
            for migration in migrations.sorted(by: { $0.version < $1.version }) {
                try db.inTransaction(.immediate) {
                    if let existing = try String.fetchOne(
                        db, sql: "SELECT checksum FROM schema_migrations WHERE version = ?", arguments: [migration.version])
                    {
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
