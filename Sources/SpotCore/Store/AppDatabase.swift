import Crypto
import Foundation
import GRDB
import Logging

/// The store: one SQLite file in WAL mode behind one `DatabasePool`.
/// Every method that keeps an invariant is exactly one transaction.
public final class AppDatabase: Sendable {
    let writer: DatabasePool
    let batcher: WriteBatcher
    let placementHints = PlacementHints()
    let catalog = Catalog()
    let clock: any SpotClock
    let logger: Logger

    /// Opens (creating if needed) the store at `path` and applies the migrations found in `migrationsDirectory`.
    public init(path: String, migrationsDirectory: URL, clock: any SpotClock = SystemClock(), logger: Logger = Logger(label: "spotd.store"))
        throws
    {
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
        self.writer = try DatabasePool(path: path, configuration: configuration)
        self.batcher = WriteBatcher(writer: writer)
        self.clock = clock
        self.logger = logger
        try Migrator(directory: migrationsDirectory, logger: logger).apply(to: writer)
    }

    /// Whether the store answers and every known migration is applied.
    public func isReady(migrationsDirectory: URL) -> Bool {
        do {
            let expected = try Migrator(directory: migrationsDirectory, logger: logger).files().count
            let applied = try writer.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM schema_migrations") ?? 0 }
            return applied >= expected
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

    /// A fresh opaque id with a prefix.
    static func newId(_ prefix: String) -> String {
        var bytes = [UInt8](repeating: 0, count: 8)
        var generator = SystemRandomNumberGenerator()
        for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255, using: &generator) }
        return prefix + "-" + Hex.encode(bytes)
    }
}

/// Applies `migrations/NNNN_name.sql` in order, recording each in `schema_migrations`.
struct Migrator {
    let directory: URL
    let logger: Logger

    struct File {
        var version: Int
        var name: String
        var sql: String
        var checksum: String
    }

    func files() throws -> [File] {
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        return try names.filter { $0.hasSuffix(".sql") }.sorted().map { name in
            guard let version = Int(name.prefix { $0.isNumber }), version > 0 else {
                throw MigrationError.badName(name)
            }
            let sql = try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
            let checksum = Hex.encode(SHA256.hash(data: Data(sql.utf8)))
            return File(version: version, name: name, sql: sql, checksum: checksum)
        }
    }

    func apply(to writer: DatabasePool) throws {
        let files = try files()
        guard !files.isEmpty else { throw MigrationError.none(directory.path) }
        try writer.writeWithoutTransaction { db in
            try db.execute(
                sql: """
                    CREATE TABLE IF NOT EXISTS schema_migrations (
                        version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at INTEGER NOT NULL)
                    """)
            for file in files {
                try db.inTransaction(.immediate) {
                    if let existing = try String.fetchOne(
                        db, sql: "SELECT checksum FROM schema_migrations WHERE version = ?", arguments: [file.version])
                    {
                        guard existing == file.checksum else { throw MigrationError.edited(file.name) }
                        return .commit
                    }
                    try db.execute(sql: file.sql)
                    try db.execute(
                        sql: "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                        arguments: [file.version, file.name, file.checksum, SystemClock().now()])
                    logger.info("migration applied", metadata: ["migration": "\(file.name)"])
                    return .commit
                }
            }
        }
    }

    /// Where the migrations live: an explicit folder, `./migrations`, the package's own folder, or the installed copy.
    static func locate(explicit: String?) -> URL {
        if let explicit { return URL(fileURLWithPath: explicit) }
        let candidates = [
            URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent("migrations"),
            URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("migrations"),
            URL(fileURLWithPath: "/usr/share/spotd/migrations"),
        ]
        for candidate in candidates
        where FileManager.default.fileExists(atPath: candidate.appendingPathComponent("0001_init.sql").path) {
            return candidate
        }
        return candidates[1]
    }
}

enum MigrationError: Error, CustomStringConvertible {
    case badName(String)
    case edited(String)
    case none(String)

    var description: String {
        switch self {
        case .badName(let name): "migration file \(name) must be named NNNN_name.sql"
        case .edited(let name): "migration \(name) was changed after it was applied; add a new migration instead"
        case .none(let path): "no migrations found in \(path)"
        }
    }
}
