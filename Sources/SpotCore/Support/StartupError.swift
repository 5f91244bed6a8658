import GRDB

/// Why spotd cannot start, naming what is wrong: the address, the database path, the migrations, a setting.
public enum StartupError: Error, CustomStringConvertible, Equatable {
    case database(path: String, detail: String)
    case migrations(path: String, detail: String)
    case listen(address: String, detail: String)
    case setting(name: String, detail: String)
    /// `--db` looks like a PostgreSQL URL but is not a usable one.
    case databaseURL(String)
    /// PostgreSQL refused or could not be reached: `target` is the URL without its password.
    case postgres(target: String, detail: String)

    public var description: String {
        switch self {
        case .database(let path, let detail): "cannot use the database at \(path): \(detail)"
        case .migrations(let path, let detail): "cannot read the migrations in \(path): \(detail)"
        case .listen(let address, let detail): "cannot listen on \(address): \(detail)"
        case .setting(let name, let detail): "\(name) \(detail)"
        case .databaseURL(let detail): "the --db URL is not usable: \(detail)"
        case .postgres(let target, let detail): "cannot use the PostgreSQL database \(target): \(detail)"
        }
    }

    /// SQLite's failure in words an operator can act on.
    static func explain(_ error: DatabaseError) -> String {
        switch error.resultCode {
        case .SQLITE_CANTOPEN: "the file cannot be opened or created (does its folder exist, and may spotd write there?)"
        case .SQLITE_NOTADB: "the file is not a SQLite database"
        case .SQLITE_READONLY, .SQLITE_PERM, .SQLITE_AUTH: "spotd may not write to it (check its permissions)"
        case .SQLITE_BUSY, .SQLITE_LOCKED: "it is locked by another process"
        case .SQLITE_CORRUPT: "the file is damaged"
        case .SQLITE_FULL: "the disk is full"
        default: "\(error.message ?? "SQLite error") (SQLite error \(error.resultCode.rawValue))"
        }
    }
}
