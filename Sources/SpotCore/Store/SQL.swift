import GRDB
import Synchronization

// The SQL seam: the store's transactions are written once, against these types, and run on either store.
// On SQLite they are thin wrappers over GRDB's own (`cachedStatement`, and `ModelCursor` on the hot paths); on
// PostgreSQL each statement is one round trip on the transaction's connection (`PostgresSession`), with the few
// words of SQL that differ rewritten once per statement text (`PostgresDialect`).
// The names are GRDB's, so that the store's code reads as before; inside this module they shadow GRDB's.

/// One value bound to, or read from, a statement.
enum SQLValue: Sendable, Equatable {
    case null
    case int(Int64)
    case double(Double)
    case text(String)

    var databaseValue: DatabaseValue {
        switch self {
        case .null: .null
        case .int(let value): value.databaseValue
        case .double(let value): value.databaseValue
        case .text(let value): value.databaseValue
        }
    }

    init(_ value: DatabaseValue) {
        switch value.storage {
        case .null: self = .null
        case .int64(let value): self = .int(value)
        case .double(let value): self = .double(value)
        case .string(let value): self = .text(value)
        case .blob(let data): self = .text(String(decoding: data, as: UTF8.self))
        }
    }
}

/// A Swift value a statement can take as an argument.
protocol SQLBindable {
    var sqlValue: SQLValue { get }
}

extension Int: SQLBindable { var sqlValue: SQLValue { .int(Int64(self)) } }
extension Int64: SQLBindable { var sqlValue: SQLValue { .int(self) } }
extension Int32: SQLBindable { var sqlValue: SQLValue { .int(Int64(self)) } }
extension Bool: SQLBindable { var sqlValue: SQLValue { .int(self ? 1 : 0) } }
extension Double: SQLBindable { var sqlValue: SQLValue { .double(self) } }
extension String: SQLBindable { var sqlValue: SQLValue { .text(self) } }
extension Substring: SQLBindable { var sqlValue: SQLValue { .text(String(self)) } }
extension Optional: SQLBindable where Wrapped: SQLBindable {
    var sqlValue: SQLValue { self?.sqlValue ?? .null }
}

/// A Swift value a column can be read as. A NULL read as a non-optional value is its zero (never a trap).
protocol SQLDecodable {
    static func decode(_ value: SQLValue) -> Self
}

extension Int64: SQLDecodable {
    static func decode(_ value: SQLValue) -> Int64 {
        switch value {
        case .int(let value): value
        case .double(let value): value.isFinite ? Int64(exactly: value.rounded(.towardZero)) ?? 0 : 0
        case .text(let text): Int64(text) ?? 0
        case .null: 0
        }
    }
}

extension Int: SQLDecodable {
    static func decode(_ value: SQLValue) -> Int { Int(Int64.decode(value)) }
}

extension Bool: SQLDecodable {
    static func decode(_ value: SQLValue) -> Bool { Int64.decode(value) != 0 }
}

extension Double: SQLDecodable {
    static func decode(_ value: SQLValue) -> Double {
        switch value {
        case .int(let value): Double(value)
        case .double(let value): value
        case .text(let text): Double(text) ?? 0
        case .null: 0
        }
    }
}

extension String: SQLDecodable {
    static func decode(_ value: SQLValue) -> String {
        switch value {
        case .text(let text): text
        case .int(let value): String(value)
        case .double(let value): String(value)
        case .null: ""
        }
    }
}

extension Optional: SQLDecodable where Wrapped: SQLDecodable {
    static func decode(_ value: SQLValue) -> Wrapped? {
        if case .null = value { return nil }
        return Wrapped.decode(value)
    }
}

/// A statement's arguments, in order.
struct StatementArguments: ExpressibleByArrayLiteral, Sendable {
    var values: [SQLValue]

    init(arrayLiteral elements: (any SQLBindable)?...) {
        values = elements.map { $0?.sqlValue ?? .null }
    }

    init(_ elements: [some SQLBindable]) {
        values = elements.map(\.sqlValue)
    }

    @discardableResult
    mutating func append(contentsOf other: StatementArguments) -> Bool {
        values.append(contentsOf: other.values)
        return true
    }

    var grdb: GRDB.StatementArguments {
        GRDB.StatementArguments(values.map { $0.databaseValue })
    }
}

/// One row, read by name or by position.
struct Row: Sendable, CustomStringConvertible {
    var names: [String]
    var values: [SQLValue]

    init(names: [String], values: [SQLValue]) {
        self.names = names
        self.values = values
    }

    init(_ row: GRDB.Row) {
        names = Array(row.columnNames)
        values = row.databaseValues.map(SQLValue.init)
    }

    func value(named name: String) -> SQLValue {
        if let index = names.firstIndex(of: name) { return values[index] }
        let lowered = name.lowercased()
        if let index = names.firstIndex(where: { $0.lowercased() == lowered }) { return values[index] }
        return .null
    }

    subscript<T: SQLDecodable>(_ name: String) -> T { T.decode(value(named: name)) }
    subscript<T: SQLDecodable>(_ index: Int) -> T { T.decode(index < values.count ? values[index] : .null) }

    /// The columns as `name:value` pairs (the store digest of the tests prints rows this way on both stores).
    var description: String {
        zip(names, values).map { name, value in
            switch value {
            case .null: "\(name):NULL"
            case .int(let v): "\(name):\(v)"
            case .double(let v): "\(name):\(v)"
            case .text(let v): "\(name):'\(v)'"
            }
        }.joined(separator: " ")
    }

    static func fetchAll(_ statement: Statement, arguments: StatementArguments = []) throws -> [Row] {
        try statement.rows(arguments)
    }

    static func fetchOne(_ statement: Statement, arguments: StatementArguments = []) throws -> Row? {
        try statement.rows(arguments, limit: 1).first
    }

    static func fetchAll(_ db: Database, sql: String, arguments: StatementArguments = []) throws -> [Row] {
        try fetchAll(db.cachedStatement(sql: sql), arguments: arguments)
    }

    static func fetchOne(_ db: Database, sql: String, arguments: StatementArguments = []) throws -> Row? {
        try fetchOne(db.cachedStatement(sql: sql), arguments: arguments)
    }
}

extension Row: ColumnSource {
    func int(_ index: Int32) -> Int64 { self[Int(index)] }
    func optionalInt(_ index: Int32) -> Int64? { self[Int(index)] }
    func double(_ index: Int32) -> Double { self[Int(index)] }
    func text(_ index: Int32) -> String { self[Int(index)] }
    func optionalText(_ index: Int32) -> String? { self[Int(index)] }
}

extension SQLDecodable {
    static func fetchOne(_ statement: Statement, arguments: StatementArguments = []) throws -> Self? {
        // No row, or a NULL: nil (as GRDB answers).
        guard let row = try statement.rows(arguments, limit: 1).first, let first = row.values.first, first != .null else { return nil }
        return decode(first)
    }

    static func fetchAll(_ statement: Statement, arguments: StatementArguments = []) throws -> [Self] {
        try statement.rows(arguments).map { decode($0.values.first ?? .null) }
    }

    static func fetchOne(_ db: Database, sql: String, arguments: StatementArguments = []) throws -> Self? {
        try fetchOne(db.cachedStatement(sql: sql), arguments: arguments)
    }

    static func fetchAll(_ db: Database, sql: String, arguments: StatementArguments = []) throws -> [Self] {
        try fetchAll(db.cachedStatement(sql: sql), arguments: arguments)
    }
}

/// A transaction's connection: what a store method's closure is given.
final class Database {
    enum Backend {
        case sqlite(GRDB.Database)
        case postgres(PostgresSession)
    }

    let backend: Backend
    /// Rows the last statement changed (PostgreSQL; SQLite asks its connection).
    fileprivate var postgresChanges = 0

    init(sqlite db: GRDB.Database) { backend = .sqlite(db) }
    init(postgres session: PostgresSession) { backend = .postgres(session) }

    /// The statement for `sql`: prepared once per connection on SQLite, rewritten once per text on PostgreSQL.
    func cachedStatement(sql: String) throws -> Statement {
        switch backend {
        case .sqlite(let db): Statement(db: self, sqlite: try db.cachedStatement(sql: sql), sql: sql)
        case .postgres: Statement(db: self, sqlite: nil, sql: sql)
        }
    }

    func execute(sql: String, arguments: StatementArguments = []) throws {
        try cachedStatement(sql: sql).execute(arguments: arguments)
    }

    /// Rows changed by the last INSERT, UPDATE or DELETE.
    var changesCount: Int {
        switch backend {
        case .sqlite(let db): db.changesCount
        case .postgres: postgresChanges
        }
    }

    var isPostgres: Bool {
        if case .postgres = backend { return true }
        return false
    }
}

/// One statement of a transaction.
struct Statement {
    let db: Database
    let sqlite: GRDB.Statement?
    let sql: String

    func execute(arguments: StatementArguments = []) throws {
        switch db.backend {
        case .sqlite:
            try sqlite!.execute(arguments: arguments.grdb)
        case .postgres(let session):
            db.postgresChanges = try session.execute(sql, arguments.values)
        }
    }

    func rows(_ arguments: StatementArguments, limit: Int = .max) throws -> [Row] {
        switch db.backend {
        case .sqlite:
            // Read in place with SQLite's C API (no GRDB `Row` per row, the column names shared by every row).
            let cursor = try ValuesCursor(sqlite!, arguments: arguments.grdb)
            var rows: [Row] = []
            while rows.count < limit, let values = try cursor.next() { rows.append(Row(names: cursor.names, values: values)) }
            return rows
        case .postgres(let session):
            return try session.rows(sql, arguments.values)
        }
    }
}
