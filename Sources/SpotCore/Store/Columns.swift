import GRDB
import GRDBSQLite

/// Where a model's columns are read from, by position: a `Row` (list pages, and PostgreSQL) or the SQLite statement itself
/// (the hot paths). One decoder per model serves both.
protocol ColumnSource {
    func int(_ index: Int32) -> Int64
    func optionalInt(_ index: Int32) -> Int64?
    func double(_ index: Int32) -> Double
    func text(_ index: Int32) -> String
    func optionalText(_ index: Int32) -> String?
}

extension ColumnSource {
    func int(_ index: Int32) -> Int { Int(int(index) as Int64) }
    func bool(_ index: Int32) -> Bool { (int(index) as Int64) != 0 }
}

/// The current row of a stepping SQLite statement, read with the C API: no `Row`, no copy, no name lookup.
/// GRDB's `Row.fetchOne` builds a lowercased column-name dictionary and copies every value for each row; on the
/// placement path that was a fifth of the writer's time.
struct StatementColumns: ColumnSource {
    let statement: SQLiteStatement

    func int(_ index: Int32) -> Int64 { sqlite3_column_int64(statement, index) }

    func optionalInt(_ index: Int32) -> Int64? {
        sqlite3_column_type(statement, index) == SQLITE_NULL ? nil : sqlite3_column_int64(statement, index)
    }

    func double(_ index: Int32) -> Double { sqlite3_column_double(statement, index) }

    func text(_ index: Int32) -> String {
        guard let bytes = sqlite3_column_text(statement, index) else { return "" }
        let count = Int(sqlite3_column_bytes(statement, index))
        return String(decoding: UnsafeBufferPointer(start: bytes, count: count), as: UTF8.self)
    }

    func optionalText(_ index: Int32) -> String? {
        sqlite3_column_type(statement, index) == SQLITE_NULL ? nil : text(index)
    }
}

/// A model read by position from the columns its `columns` list names.
protocol ColumnDecodable {
    init(columns: some ColumnSource)
}

extension ColumnDecodable {
    init(row: Row) { self.init(columns: row) }

    /// All rows of a (cached) statement: on SQLite read in place from the statement.
    static func fetchAll(_ statement: Statement, arguments: StatementArguments = []) throws -> [Self] {
        guard let sqlite = statement.sqlite else { return try statement.rows(arguments).map(Self.init(row:)) }
        var items: [Self] = []
        try ModelCursor<Self>(sqlite, arguments: arguments.grdb).forEach { items.append($0) }
        return items
    }

    /// The first row of a (cached) statement, if any.
    static func fetchOne(_ statement: Statement, arguments: StatementArguments = []) throws -> Self? {
        guard let sqlite = statement.sqlite else { return try statement.rows(arguments, limit: 1).first.map(Self.init(row:)) }
        return try ModelCursor<Self>(sqlite, arguments: arguments.grdb).next()
    }
}

/// The values of each row of a stepping statement, read with SQLite's C API.
final class ValuesCursor: DatabaseCursor {
    typealias Element = [SQLValue]
    let _statement: GRDB.Statement
    var _isDone = false
    let names: [String]

    init(_ statement: GRDB.Statement, arguments: GRDB.StatementArguments) throws {
        _statement = statement
        names = statement.columnNames
        try statement.setArguments(arguments)
    }

    deinit {
        sqlite3_reset(_statement.sqliteStatement)
    }

    func _element(sqliteStatement: SQLiteStatement) throws -> [SQLValue] {
        let columns = StatementColumns(statement: sqliteStatement)
        return (0..<sqlite3_column_count(sqliteStatement)).map { index in
            switch sqlite3_column_type(sqliteStatement, index) {
            case SQLITE_NULL: .null
            case SQLITE_INTEGER: .int(columns.int(index))
            case SQLITE_FLOAT: .double(columns.double(index))
            default: .text(columns.text(index))
            }
        }
    }
}

/// GRDB's extension point for custom cursors: it steps the statement (with GRDB's bookkeeping); we read the columns.
final class ModelCursor<Element: ColumnDecodable>: DatabaseCursor {
    let _statement: GRDB.Statement
    var _isDone = false

    init(_ statement: GRDB.Statement, arguments: GRDB.StatementArguments) throws {
        _statement = statement
        try statement.setArguments(arguments)
    }

    deinit {
        // Release the statement (and its read snapshot) when the cursor stops early, as `fetchOne` does.
        sqlite3_reset(_statement.sqliteStatement)
    }

    func _element(sqliteStatement: SQLiteStatement) throws -> Element {
        Element(columns: StatementColumns(statement: sqliteStatement))
    }
}
