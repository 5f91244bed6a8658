import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import Synchronization

/// Where the PostgreSQL store is, from `--db postgres://user:password@host:port/database?sslmode=…`.
struct PostgresTarget: Sendable, CustomStringConvertible {
    var host: String
    var port: Int
    var user: String
    var password: String?
    var database: String
    var sslmode: String

    /// Whether `text` asks for PostgreSQL at all (then it must parse, or spotd says why).
    static func isPostgres(_ text: String) -> Bool {
        let lowered = text.prefix(13).lowercased()
        return lowered.hasPrefix("postgres://") || lowered.hasPrefix("postgresql://")
    }

    /// Whether `text` is some URL (`scheme://…`), which is never taken as a SQLite path.
    static func isURL(_ text: String) -> Bool { text.contains("://") }

    /// Parses a URL; the error names what is wrong with it (and never repeats the password).
    init(url text: String) throws(StartupError) {
        func bad(_ why: String) -> StartupError { .databaseURL(why) }
        guard Self.isPostgres(text), let components = URLComponents(string: text) else {
            throw bad("it is not a URL of the form postgres://user:password@host:5432/database")
        }
        guard let host = components.host, !host.isEmpty else { throw bad("it names no host") }
        guard let user = components.user, !user.isEmpty else { throw bad("it names no user (postgres://USER:password@host/database)") }
        if let port = components.port {
            guard (1...65535).contains(port) else { throw bad("the port \(port) is not between 1 and 65535") }
            self.port = port
        } else {
            self.port = 5432
        }
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        guard !path.isEmpty, !path.contains("/") else { throw bad("it names no database (postgres://user:password@host/DATABASE)") }
        var sslmode = "prefer"
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let value = item.value, ["disable", "prefer", "require"].contains(value) else {
                    throw bad("sslmode must be disable, prefer or require")
                }
                sslmode = value
            default:
                throw bad("the parameter '\(item.name)' is not known (only sslmode is)")
            }
        }
        self.host = host
        self.user = user
        self.password = components.password
        self.database = path
        self.sslmode = sslmode
    }

    /// The URL without its password.
    var description: String { "postgres://\(user)@\(host):\(port)/\(database)" }

    func configuration() throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS
        switch sslmode {
        case "disable": tls = .disable
        case "require": tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
        default:
            var client = TLSConfiguration.makeClientConfiguration()
            client.certificateVerification = .none
            tls = .prefer(try NIOSSLContext(configuration: client))
        }
        var configuration = PostgresConnection.Configuration(
            host: host, port: port, username: user, password: password, database: database, tls: tls)
        configuration.options.connectTimeout = .seconds(5)
        // The server enforces the limits itself, so that a replica that froze (or a statement the client stopped
        // waiting for) cannot hold the store's write lock: a transaction idle 5 s is ended, a statement ends after
        // 15 s, a lock wait after 10 s, and a client gone is noticed within seconds.
        configuration.options.additionalStartupParameters = [
            ("application_name", "spotd"), ("idle_in_transaction_session_timeout", "5s"), ("statement_timeout", "15s"),
            ("lock_timeout", "10s"), ("client_connection_check_interval", "1s"), ("tcp_keepalives_idle", "5"),
            ("tcp_keepalives_interval", "2"), ("tcp_keepalives_count", "3"),
        ]
        return configuration
    }
}

/// PostgreSQL's connections, each used by one blocking thread at a time: a store transaction's closure is
/// synchronous (it is written once for both stores), so it runs on one of `threads` and waits there for each
/// statement's answer. As many connections as threads; a broken one is dropped and the next use connects again, so
/// spotd reconnects by itself after PostgreSQL restarts.
final class PostgresPool: Sendable {
    let target: PostgresTarget
    private let configuration: PostgresConnection.Configuration
    private let group: MultiThreadedEventLoopGroup
    /// Writes and reads on threads of their own: writes wait for each other at the write lock, and reads (`/readyz`
    /// among them) must not queue behind them. Together as many threads as connections.
    private let threads: NIOThreadPool
    private let readThreads: NIOThreadPool
    /// The worker lease's own thread and connection: its renewal never queues behind the API's writes.
    private let leaseThread: NIOThreadPool
    private let leaseConnection = Mutex<PostgresConnection?>(nil)
    private let idle = Mutex<[PostgresConnection]>([])
    private let nextId = Atomic<Int>(1)
    private let logger: Logger
    /// Statement texts rewritten for PostgreSQL, once each.
    let dialect = PostgresDialect()

    /// Longest wait for one statement's answer (the write lock included): past it the connection is dropped and the
    /// request answered 503, so a connection that silently went away cannot hold a thread for ever.
    static let statementSeconds: Int64 = 15

    /// Every write transaction takes this advisory lock first: writes are serialized across replicas, as SQLite
    /// serializes them in one process. Placements cannot double-book, a fence check cannot pass beside a lease
    /// change, and events commit in id order, so every reader of "events after id N" misses none.
    static let writeLockKey: Int64 = 0x5350_4F54_4400  // "SPOTD"
    /// Held while migrations run, so that replicas starting together apply them once.
    static let migrationLockKey: Int64 = 0x5350_4F54_4401

    init(target: PostgresTarget, connections: Int, logger: Logger) throws {
        self.target = target
        self.configuration = try target.configuration()
        self.logger = logger
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let writers = max(1, min(4, connections / 2))
        self.threads = NIOThreadPool(numberOfThreads: writers)
        threads.start()
        self.readThreads = NIOThreadPool(numberOfThreads: max(1, connections - writers))
        readThreads.start()
        self.leaseThread = NIOThreadPool(numberOfThreads: 1)
        leaseThread.start()
    }

    func shutdown() {
        let open = idle.withLock { connections in
            defer { connections.removeAll() }
            return connections
        }
        let lease = leaseConnection.withLock { connection in
            defer { connection = nil }
            return connection
        }
        for connection in open + (lease.map { [$0] } ?? []) where (try? connection.close().boundedWait(seconds: 2)) == nil {
            Self.discard(connection)
        }
        try? threads.syncShutdownGracefully()
        try? readThreads.syncShutdownGracefully()
        try? leaseThread.syncShutdownGracefully()
        try? group.syncShutdownGracefully()
    }

    /// Runs `body` in one transaction on a pool thread. A write takes the write lock first; a read sees one snapshot.
    func transaction<T: Sendable>(write: Bool, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await (write ? threads : readThreads).runIfActive { try self.blockingTransaction(write: write, body) }
    }

    /// The worker lease's transaction: on its own thread and connection, without the write lock (the lease row's lock
    /// orders it against the fence checks, which read the row `FOR SHARE`).
    func leaseTransaction<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await leaseThread.runIfActive { try self.blockingTransaction(write: true, writeLock: false, lease: true, body) }
    }

    /// The same, on the calling thread (startup, before the server runs).
    func blockingTransaction<T>(write: Bool, writeLock: Bool? = nil, lease: Bool = false, _ body: (Database) throws -> T) throws -> T {
        try withSession(lease: lease) { session in
            try session.run(write ? "BEGIN ISOLATION LEVEL READ COMMITTED" : "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            do {
                if writeLock ?? write { try session.run("SELECT pg_advisory_xact_lock(\(Self.writeLockKey))") }
                let db = Database(postgres: session)
                let value = try body(db)
                try session.run("COMMIT")
                return value
            } catch {
                // A connection that broke or stopped answering is dropped as it is: a ROLLBACK would wait behind it.
                if !session.connection.isClosed && !Self.isConnectionError(error) { try? session.run("ROLLBACK") }
                throw error
            }
        }
    }

    /// A session on a connection of the pool (connecting when none is idle), given back unless it broke.
    func withSession<T>(lease: Bool = false, _ body: (PostgresSession) throws -> T) throws -> T {
        let connection =
            try lease ? (leaseConnection.withLock { $0.take() }.flatMap { $0.isClosed ? nil : $0 } ?? connectOrUnavailable()) : checkout()
        let session = PostgresSession(connection: connection, dialect: dialect, logger: logger)
        do {
            let value = try body(session)
            if lease { leaseConnection.withLock { $0 = connection } } else { checkin(connection) }
            return value
        } catch {
            if connection.isClosed || Self.isConnectionError(error) {
                Self.discard(connection)
                // The others idle beside it most likely broke with it (a restart cuts every connection).
                dropIdle()
                throw StoreError.unavailable("PostgreSQL at \(target.host):\(target.port) is unreachable (\(Self.describe(error)))")
            }
            if lease { leaseConnection.withLock { $0 = connection } } else { checkin(connection) }
            throw error
        }
    }

    private func checkout() throws -> PostgresConnection {
        while let connection = idle.withLock({ $0.popLast() }) {
            if !connection.isClosed { return connection }
        }
        return try connectOrUnavailable()
    }

    private func connectOrUnavailable() throws -> PostgresConnection {
        do {
            return try connect()
        } catch {
            throw StoreError.unavailable("PostgreSQL at \(target.host):\(target.port) is unreachable (\(Self.describe(error)))")
        }
    }

    /// A new connection; errors as PostgreSQL or the network gave them.
    func connect() throws -> PostgresConnection {
        let id = nextId.add(1, ordering: .relaxed).oldValue
        return try PostgresConnection.connect(on: group.next(), configuration: configuration, id: id, logger: logger)
            .boundedWait(seconds: 10)
    }

    /// Closes every idle connection (after one broke: the next use connects afresh).
    private func dropIdle() {
        let open = idle.withLock { connections in
            defer { connections.removeAll() }
            return connections
        }
        for connection in open { Self.discard(connection) }
    }

    /// Closes a connection without waiting, holding it until it is closed (a connection let go open is a bug
    /// postgres-nio asserts on).
    static func discard(_ connection: PostgresConnection) {
        let closing: EventLoopFuture<Void> = connection.close()
        closing.whenComplete { _ in withExtendedLifetime(connection) {} }
    }

    deinit {
        for connection in idle.withLock({ $0 }) { Self.discard(connection) }
    }

    private func checkin(_ connection: PostgresConnection) {
        guard !connection.isClosed else { return }
        idle.withLock { $0.append(connection) }
    }

    static func isConnectionError(_ error: any Error) -> Bool {
        guard let error = error as? PSQLError else { return error is ChannelError || error is IOError || error is PostgresTimeout }
        switch error.code {
        case .connectionError, .serverClosedConnection, .uncleanShutdown, .clientClosedConnection, .poolClosed: return true
        case .server:
            // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 08xxx connection exceptions.
            let state = error.serverInfo?[.sqlState] ?? ""
            return state.hasPrefix("57P") || state.hasPrefix("08")
        default: return false
        }
    }

    /// What went wrong, in words (PSQLError's own description hides everything).
    static func describe(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if let message = error.serverInfo?[.message] {
                return "\(message) [\(error.serverInfo?[.sqlState] ?? "?")]"
            }
            if let underlying = error.underlying { return describe(underlying) }
            return "\(error.code)"
        }
        if let error = error as? IOError { return error.description }
        return String(describing: error)
    }
}

/// One connection inside one transaction: each statement is sent and waited for on the calling (pool) thread.
final class PostgresSession {
    let connection: PostgresConnection
    let dialect: PostgresDialect
    let logger: Logger
    /// Events this transaction appended, by type (told to the commit observers once it commits).
    var appendedEvents: [String: Int] = [:]
    /// Longest wait for one statement's answer.
    var timeoutSeconds = PostgresPool.statementSeconds

    init(connection: PostgresConnection, dialect: PostgresDialect, logger: Logger) {
        self.connection = connection
        self.dialect = dialect
        self.logger = logger
    }

    /// A statement of our own, without arguments.
    func run(_ sql: String) throws {
        _ = try send(PostgresQuery(unsafeSQL: sql), sql)
    }

    /// Runs a statement; the rows it changed.
    func execute(_ sql: String, _ values: [SQLValue]) throws -> Int {
        let result = try send(sql, values)
        return result.metadata.rows ?? 0
    }

    /// One statement and its answer; PostgreSQL's refusal says what it refused and where.
    private func send(_ sql: String, _ values: [SQLValue]) throws -> PostgresQueryResult {
        try send(query(sql, values), dialect.translate(sql))
    }

    private func send(_ query: PostgresQuery, _ sql: String) throws -> PostgresQueryResult {
        do {
            return try connection.query(query, logger: logger).boundedWait(seconds: timeoutSeconds)
        } catch let error as PSQLError where error.code == .server {
            let state = error.serverInfo?[.sqlState] ?? ""
            if state.hasPrefix("57P") || state.hasPrefix("08") { throw error }
            // 55P03: the write lock (or a row) was not had within lock_timeout; 57014: statement_timeout. The
            // connection is fine; the store is busy.
            if state == "55P03" || state == "57014" {
                throw StoreError.unavailable("PostgreSQL is busy (\(error.serverInfo?[.message] ?? state))")
            }
            throw PostgresStatementError(message: error.serverInfo?[.message] ?? "refused", sqlState: state, statement: sql)
        }
    }

    func rows(_ sql: String, _ values: [SQLValue]) throws -> [Row] {
        let result = try send(sql, values)
        var names: [String]?
        return result.rows.map { row in
            var values: [SQLValue] = []
            var columns: [String] = []
            for cell in row {
                values.append(Self.value(cell))
                if names == nil { columns.append(cell.columnName) }
            }
            if names == nil { names = columns }
            return Row(names: names!, values: values)
        }
    }

    private func query(_ sql: String, _ values: [SQLValue]) throws -> PostgresQuery {
        var bindings = PostgresBindings(capacity: values.count)
        for value in values {
            switch value {
            case .null: bindings.appendNull()
            case .int(let value): try bindings.append(value)
            case .double(let value): try bindings.append(value)
            case .text(let value): try bindings.append(value)
            }
        }
        return PostgresQuery(unsafeSQL: dialect.translate(sql), binds: bindings)
    }

    static func value(_ cell: PostgresCell) -> SQLValue {
        guard cell.bytes != nil else { return .null }
        switch cell.dataType {
        case .int2, .int4, .int8:
            return (try? cell.decode(Int64.self)).map(SQLValue.int) ?? .null
        case .bool:
            return (try? cell.decode(Bool.self)).map { .int($0 ? 1 : 0) } ?? .null
        case .float4, .float8:
            return (try? cell.decode(Double.self)).map(SQLValue.double) ?? .null
        case .numeric:
            guard let decimal = try? cell.decode(Decimal.self) else { return .null }
            let number = NSDecimalNumber(decimal: decimal)
            let double = number.doubleValue
            if decimal == Decimal(number.int64Value) { return .int(number.int64Value) }
            return .double(double)
        default:
            return (try? cell.decode(String.self)).map(SQLValue.text) ?? .null
        }
    }
}

extension EventLoopFuture where Value: Sendable {
    /// Waits for the value on the calling (non-event-loop) thread, at most `seconds`: past it, a connection error
    /// (and the caller drops the connection).
    func boundedWait(seconds: Int64) throws -> Value {
        let promise = eventLoop.makePromise(of: Value.self)
        let timeout = eventLoop.scheduleTask(in: .seconds(seconds)) {
            promise.fail(PostgresTimeout(seconds: seconds))
        }
        cascade(to: promise)
        promise.futureResult.whenComplete { _ in timeout.cancel() }
        return try promise.futureResult.wait()
    }
}

/// PostgreSQL did not answer in time.
struct PostgresTimeout: Error, CustomStringConvertible {
    var seconds: Int64
    var description: String { "no answer within \(seconds) s" }
}

/// PostgreSQL refused a statement (a bug, or a constraint the code did not expect): what, and which statement.
struct PostgresStatementError: Error, CustomStringConvertible {
    var message: String
    var sqlState: String
    var statement: String

    var description: String { "PostgreSQL: \(message) [\(sqlState)] in `\(statement)`" }
}

/// The store's SQL is SQLite's; these are the few spellings PostgreSQL takes differently, rewritten once per text:
/// `?` placeholders become `$1…`, the two-argument `MAX`/`MIN` become `GREATEST`/`LEAST`, SQLite's index hints
/// (`INDEXED BY`, a unary `+`) go, `IS [NOT] ?` becomes `IS [NOT] DISTINCT FROM ?`, and `json_each` becomes
/// `json_array_elements_text`.
final class PostgresDialect: Sendable {
    private let cache = Mutex<[String: String]>([:])

    func translate(_ sql: String) -> String {
        if let done = cache.withLock({ $0[sql] }) { return done }
        let translated = Self.rewrite(sql)
        cache.withLock { cache in
            if cache.count > 4096 { cache.removeAll() }
            cache[sql] = translated
        }
        return translated
    }

    static func rewrite(_ sql: String) -> String {
        var text = sql
        text = text.replacingOccurrences(of: "/*FOR SHARE*/", with: "FOR SHARE")
        // "the job is on node ?": PostgreSQL plans `id IN (subquery)` under an OR as a scan of every job (10 ms at
        // 40,000 jobs); `id = ANY (ARRAY(subquery))` is two index lookups (0.1 ms).
        text = text.replacingOccurrences(
            of: "id IN (SELECT job_id FROM job_nodes WHERE node_id = ?)",
            with: "id = ANY (ARRAY(SELECT job_id FROM job_nodes WHERE node_id = ?))")
        text = text.replacingOccurrences(of: "+state IN", with: "state IN").replacingOccurrences(of: "+j.state IN", with: "j.state IN")
        text = text.replacingOccurrences(of: "IS NOT ?", with: "IS DISTINCT FROM ?")
        text = text.replacingOccurrences(of: " IS ?", with: " IS NOT DISTINCT FROM ?")
        text = text.replacingOccurrences(of: "\\s+INDEXED BY [a-z_]+", with: "", options: .regularExpression)
        text = text.replacingOccurrences(
            of: "SELECT value FROM json_each(?)", with: "SELECT value FROM json_array_elements_text(CAST(? AS json)) AS value")
        text = scalarMinMax(text)
        // Placeholders, outside string literals.
        var out = ""
        out.reserveCapacity(text.utf8.count + 16)
        var number = 0
        var quoted = false
        for character in text {
            if character == "'" { quoted.toggle() }
            if character == "?" && !quoted {
                number += 1
                out += "$\(number)"
            } else {
                out.append(character)
            }
        }
        return out
    }

    /// `MAX(a, b)` → `GREATEST(a, b)` and `MIN(a, b)` → `LEAST(a, b)`: a MAX or MIN whose parentheses hold a comma
    /// at their own level is SQLite's scalar function (the aggregates take one argument).
    static func scalarMinMax(_ sql: String) -> String {
        var result = ""
        var rest = Substring(sql)
        while let range = rest.range(of: "(MAX|MIN)\\(", options: [.regularExpression, .caseInsensitive]) {
            let name = rest[range].dropLast().uppercased()
            let preceding = rest[..<range.lowerBound].last
            result += rest[..<range.lowerBound]
            let open = rest.index(before: range.upperBound)
            var depth = 0
            var comma = false
            var close = rest.endIndex
            var index = open
            while index < rest.endIndex {
                let character = rest[index]
                if character == "(" { depth += 1 }
                if character == ")" {
                    depth -= 1
                    if depth == 0 {
                        close = index
                        break
                    }
                }
                if character == "," && depth == 1 { comma = true }
                index = rest.index(after: index)
            }
            let isWord = preceding.map { $0.isLetter || $0.isNumber || $0 == "_" } ?? false
            if comma && !isWord && close < rest.endIndex {
                result += (name == "MAX" ? "GREATEST(" : "LEAST(")
                // The arguments may hold a scalar MAX/MIN of their own.
                result += scalarMinMax(String(rest[rest.index(after: open)..<close]))
                result += ")"
                rest = rest[rest.index(after: close)...]
            } else {
                result += rest[range]
                rest = rest[range.upperBound...]
            }
        }
        return result + rest
    }
}

/// Applies PostgreSQL's migrations at start, in order, each in its own transaction, under an advisory lock held for
/// the whole run: replicas that start together wait for each other, and the first applies them once.
struct PostgresMigrator {
    let migrations: [Migration]
    let logger: Logger

    func apply(_ pool: PostgresPool) throws {
        guard !migrations.isEmpty else { throw MigrationError.none }
        let known = Dictionary(uniqueKeysWithValues: migrations.map { ($0.version, $0) })
        let newest = migrations.map(\.version).max()!
        let connection = try pool.connect()
        defer { if (try? connection.close().boundedWait(seconds: 2)) == nil { PostgresPool.discard(connection) } }
        let session = PostgresSession(connection: connection, dialect: pool.dialect, logger: logger)
        // Migrations may take long, and a replica waits for another's: no statement or lock limit here.
        session.timeoutSeconds = 600
        try session.run("SET statement_timeout = 0")
        try session.run("SET lock_timeout = 0")
        try session.run("SELECT pg_advisory_lock(\(PostgresPool.migrationLockKey))")
        try session.run(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at BIGINT NOT NULL)
            """)
        let db = Database(postgres: session)
        for row in try Row.fetchAll(db, sql: "SELECT version, name, checksum FROM schema_migrations ORDER BY version") {
            let version: Int = row["version"]
            guard let migration = known[version] else {
                throw MigrationError.newer(version: version, name: row["name"], newest: newest)
            }
            guard migration.checksum == row["checksum"] as String else { throw MigrationError.edited(migration.name) }
        }
        let applied = Set(try Int.fetchAll(db.cachedStatement(sql: "SELECT version FROM schema_migrations")))
        for migration in migrations.sorted(by: { $0.version < $1.version }) where !applied.contains(migration.version) {
            try session.run("BEGIN")
            do {
                for statement in Self.statements(migration.sql) { try session.run(statement) }
                _ = try session.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                    [.int(Int64(migration.version)), .text(migration.name), .text(migration.checksum), .int(SystemClock().now())])
                try session.run("COMMIT")
            } catch {
                try? session.run("ROLLBACK")
                if let error = error as? PostgresStatementError {
                    throw MigrationError.failed(migration.name, "\(error.message) [\(error.sqlState)]")
                }
                throw error
            }
            logger.info("migration applied", metadata: ["migration": "\(migration.name)"])
        }
        try session.run("SELECT pg_advisory_unlock(\(PostgresPool.migrationLockKey))")
    }

    /// A migration's statements, split at the semicolons that end them (not those inside quotes, comments or a
    /// `$$` function body): postgres-nio sends one statement at a time.
    static func statements(_ sql: String) -> [String] {
        var statements: [String] = []
        var current = ""
        var quoted = false
        var dollar = false
        var comment = false
        let characters = Array(sql)
        var index = 0
        while index < characters.count {
            let character = characters[index]
            let next = index + 1 < characters.count ? characters[index + 1] : nil
            if comment {
                if character == "\n" { comment = false }
            } else if !quoted && !dollar && character == "-" && next == "-" {
                comment = true
            } else {
                if character == "'" && !dollar { quoted.toggle() }
                if character == "$" && next == "$" && !quoted {
                    dollar.toggle()
                    current += "$$"
                    index += 2
                    continue
                }
                if character == ";" && !quoted && !dollar {
                    let trimmed = current.trimmingCharacters(in: .whitespacesAndNewlines)
                    if !trimmed.isEmpty { statements.append(trimmed) }
                    current = ""
                    index += 1
                    continue
                }
                current.append(character)
            }
            index += 1
        }
        let trimmed = current.trimmingCharacters(in: .whitespacesAndNewlines)
        if !trimmed.isEmpty { statements.append(trimmed) }
        return statements
    }

    /// What an operator reads when spotd cannot use the database: the URL's server, the password, the database, or
    /// the migrations, each said plainly.
    static func explain(_ error: any Error, target: PostgresTarget) -> String {
        if let error = error as? MigrationError { return error.description }
        if let error = error as? PSQLError {
            switch error.code {
            case .server:
                let state = error.serverInfo?[.sqlState] ?? ""
                let message = error.serverInfo?[.message] ?? "refused"
                switch state {
                case "28P01": return "the password for user '\(target.user)' was refused (\(message))"
                case "28000": return "user '\(target.user)' may not connect (\(message); check pg_hba.conf)"
                case "3D000": return "the database '\(target.database)' does not exist (\(message))"
                case "42501": return "user '\(target.user)' lacks a privilege spotd needs (\(message))"
                default: return "\(message) [\(state)]"
                }
            case .authMechanismRequiresPassword:
                return "the server asks for a password and the URL gives none (postgres://user:PASSWORD@host/database)"
            case .sslUnsupported:
                return "the server does not offer TLS, which sslmode=require asks for"
            case .connectionError:
                let why = error.underlying.map { PostgresPool.describe($0) } ?? "the connection failed"
                return "the server at \(target.host):\(target.port) cannot be reached (\(why))"
            default:
                return "the connection failed: \(PostgresPool.describe(error))"
            }
        }
        if let error = error as? StoreError, case .unavailable(let detail) = error { return detail }
        return "\(error)"
    }
}

/// Makes a fresh, empty database on a PostgreSQL server: each test (and each benchmark run) gets its own.
public enum PostgresScratch {
    /// Creates database `name` through `serverURL` (any database of that server) and answers its URL.
    public static func createDatabase(serverURL: String, name: String) throws -> String {
        var target = try PostgresTarget(url: serverURL)
        let pool = try PostgresPool(target: target, connections: 1, logger: Logger(label: "spotd.scratch"))
        defer { pool.shutdown() }
        let connection = try pool.connect()
        defer { if (try? connection.close().boundedWait(seconds: 2)) == nil { PostgresPool.discard(connection) } }
        let quoted = name.replacingOccurrences(of: "\"", with: "\"\"")
        _ = try connection.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \"\(quoted)\""), logger: Logger(label: "spotd.scratch"))
            .boundedWait(seconds: 60)
        target.database = name
        var components = URLComponents(string: serverURL)!
        components.path = "/" + name
        return components.string!
    }
}
