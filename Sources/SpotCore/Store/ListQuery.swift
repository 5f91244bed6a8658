/// A paged list query: a base `SELECT … WHERE <seq> > ?`, optional equality filters, then `ORDER BY <seq> LIMIT`.
struct ListQuery {
    private var sql: String
    private var arguments: StatementArguments
    private let seqColumn: String

    init(_ select: String, seqColumn: String = "seq", after page: PageRequest) {
        self.sql = "\(select) WHERE \(seqColumn) > ?"
        self.arguments = [page.after]
        self.seqColumn = seqColumn
    }

    /// Adds `AND <column> = ?` when the value is given.
    mutating func equals(_ column: String, _ value: String?) {
        guard let value else { return }
        sql += " AND \(column) = ?"
        _ = arguments.append(contentsOf: [value])
    }

    /// Adds `AND <condition>` with its arguments when they are given.
    mutating func condition(_ condition: String, _ values: [String]?) {
        guard let values else { return }
        sql += " AND \(condition)"
        _ = arguments.append(contentsOf: StatementArguments(values))
    }

    /// The rows of one page, plus one more to tell whether a next page exists.
    func fetch(_ db: Database, limit: Int) throws -> [Row] {
        var arguments = self.arguments
        _ = arguments.append(contentsOf: [limit + 1])
        return try Row.fetchAll(db.cachedStatement(sql: sql + " ORDER BY \(seqColumn) LIMIT ?"), arguments: arguments)
    }
}
