import Foundation
import Logging
import Synchronization

/// `LOG_FORMAT=json`: one JSON object per line on standard error, for a log pipeline (journald, Loki, CloudWatch)
/// to parse rather than guess at: `time` (RFC 3339, UTC, milliseconds), `level`, `logger`, `message`, then the
/// metadata's keys (a key that would shadow one of those four is written as `meta.<key>`).
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String
    let write: @Sendable (String) -> Void

    public init(label: String, write: @escaping @Sendable (String) -> Void = JSONLogHandler.standardError) {
        self.label = label
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    static let reserved: Set<String> = ["time", "level", "logger", "message"]

    public func log(event: LogEvent) {
        var object: [String: JSONValue] = [
            "time": .string(TimeFormat.rfc3339(SystemClock().now())),
            "level": .string(event.level.rawValue), "logger": .string(label), "message": .string(event.message.description),
        ]
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        for (key, value) in merged {
            object[Self.reserved.contains(key) ? "meta.\(key)" : key] = Self.json(value)
        }
        write(JSONValue.object(object).jsonText + "\n")
    }

    static func json(_ value: Logger.Metadata.Value) -> JSONValue {
        switch value {
        case .string(let string): .string(string)
        case .stringConvertible(let convertible): .string(convertible.description)
        case .array(let values): .array(values.map(json))
        case .dictionary(let values): .object(values.mapValues(json))
        }
    }

    private static let lock = Mutex(())

    /// Writes a whole line at once, so that lines from several threads never interleave.
    public static let standardError: @Sendable (String) -> Void = { line in
        // The throwing write: a closed standard error must not stop the server.
        lock.withLock { _ in try? FileHandle.standardError.write(contentsOf: Data(line.utf8)) }
    }
}

/// `LOG_FORMAT` and `LOG_LEVEL`, read once at start.
public enum LogSettings {
    public enum Format: String, CaseIterable, Sendable { case text, json }

    /// The format and level the environment asks for, or a message naming the variable that is wrong.
    public static func parse(format: String?, level: String?) -> Result<(Format, Logger.Level), StartupError> {
        guard let parsedFormat = format.map({ Format(rawValue: $0.lowercased()) }) ?? .text else {
            return .failure(.setting(name: "LOG_FORMAT=\(format ?? "")", detail: "must be text or json"))
        }
        guard let parsedLevel = level.map({ Logger.Level(rawValue: $0.lowercased()) }) ?? .info else {
            return .failure(
                .setting(
                    name: "LOG_LEVEL=\(level ?? "")",
                    detail: "must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))"))
        }
        return .success((parsedFormat, parsedLevel))
    }

    /// Installs the handler for `format`; once per process, before the first logger is made.
    public static func bootstrap(_ format: Format) {
        switch format {
        case .text: LoggingSystem.bootstrap(StreamLogHandler.standardError)
        case .json: LoggingSystem.bootstrap { JSONLogHandler(label: $0) }
        }
    }
}
