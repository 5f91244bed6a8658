import Foundation
import Synchronization

/// Milliseconds since the Unix epoch, UTC: how spotd stores and compares time.
public typealias Millis = Int64

/// The source of the current time, injected so that workflows can be tested step by step.
public protocol SpotClock: Sendable {
    func now() -> Millis
}

/// The wall clock.
public struct SystemClock: SpotClock {
    public init() {}
    public func now() -> Millis { Millis((Date().timeIntervalSince1970 * 1000).rounded(.down)) }
}

/// A clock that moves only when told to; for tests.
public final class ManualClock: SpotClock {
    private let current: Mutex<Millis>
    public init(_ start: Millis = 1_800_000_000_000) { current = Mutex(start) }
    public func now() -> Millis { current.withLock { $0 } }
    public func advance(seconds: Double) { current.withLock { $0 += Millis(seconds * 1000) } }
    public func set(_ value: Millis) { current.withLock { $0 = value } }
}

/// RFC 3339 and RFC 1123 formatting and parsing.
enum TimeFormat {
    /// `2026-11-29T10:48:44.123Z`.
    static func rfc3339(_ millis: Millis) -> String {
        var seconds = time_t(millis >= 0 ? millis / 1000 : (millis - 999) / 1000)
        let fraction = Int((millis % 1000 + 1000) % 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
            Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
            Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), fraction)
    }

    /// Parses an RFC 3339 time with or without fractional seconds; returns nil when malformed.
    static func parseRFC3339(_ text: String) -> Millis? {
        guard text.utf8.count <= 64 else { return nil }
        let withFraction = ISO8601DateFormatter()
        withFraction.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = withFraction.date(from: text) { return millis(date) }
        let plain = ISO8601DateFormatter()
        plain.formatOptions = [.withInternetDateTime]
        if let date = plain.date(from: text) { return millis(date) }
        return nil
    }

    /// Parses an RFC 1123 time (`Mon, 19 Sep 2016 18:29:47 GMT`), as Azure sends `NotBefore`.
    static func parseRFC1123(_ text: String) -> Millis? {
        guard text.utf8.count <= 64 else { return nil }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        for format in ["EEE, dd MMM yyyy HH:mm:ss zzz", "EEE, d MMM yyyy HH:mm:ss zzz", "dd MMM yyyy HH:mm:ss zzz"] {
            formatter.dateFormat = format
            if let date = formatter.date(from: text) { return millis(date) }
        }
        return nil
    }

    private static func millis(_ date: Date) -> Millis? {
        let value = date.timeIntervalSince1970 * 1000
        guard value.isFinite, abs(value) < 1.0e15 else { return nil }
        return Millis(value.rounded())
    }
}
