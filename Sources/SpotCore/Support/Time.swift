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

    /// Parses an RFC 3339 time (`2026-11-29T10:48:44Z`, `...44.123+02:00`); nil when malformed.
    static func parseRFC3339(_ text: String) -> Millis? {
        let bytes = Array(text.utf8)
        guard bytes.count >= 20, bytes.count <= 64 else { return nil }
        func number(_ from: Int, _ count: Int) -> Int? {
            guard from + count <= bytes.count else { return nil }
            var value = 0
            for byte in bytes[from..<from + count] {
                guard byte >= 0x30 && byte <= 0x39 else { return nil }
                value = value * 10 + Int(byte - 0x30)
            }
            return value
        }
        guard let year = number(0, 4), bytes[4] == 0x2D, let month = number(5, 2), bytes[7] == 0x2D, let day = number(8, 2),
            bytes[10] == 0x54 || bytes[10] == 0x74 || bytes[10] == 0x20, let hour = number(11, 2), bytes[13] == 0x3A,
            let minute = number(14, 2), bytes[16] == 0x3A, let second = number(17, 2)
        else { return nil }
        guard (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second <= 60, year >= 1 else { return nil }
        var index = 19
        var fraction = 0.0
        if index < bytes.count && bytes[index] == 0x2E {
            index += 1
            var scale = 0.1
            let start = index
            while index < bytes.count, bytes[index] >= 0x30 && bytes[index] <= 0x39 {
                fraction += Double(bytes[index] - 0x30) * scale
                scale /= 10
                index += 1
            }
            guard index > start else { return nil }
        }
        guard index < bytes.count else { return nil }
        var offsetSeconds = 0
        switch bytes[index] {
        case 0x5A, 0x7A:
            index += 1
        case 0x2B, 0x2D:
            guard let offsetHours = number(index + 1, 2), index + 3 < bytes.count, bytes[index + 3] == 0x3A,
                let offsetMinutes = number(index + 4, 2), offsetHours < 24, offsetMinutes < 60
            else { return nil }
            offsetSeconds = (offsetHours * 3600 + offsetMinutes * 60) * (bytes[index] == 0x2D ? -1 : 1)
            index += 6
        default:
            return nil
        }
        guard index == bytes.count else { return nil }
        let daysInMonth = [31, (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        guard day <= daysInMonth[month - 1] else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + min(second, 59) - offsetSeconds
        return Millis(seconds) * 1000 + Millis((fraction * 1000).rounded(.down))
    }

    /// Parses an RFC 1123 time (`Mon, 19 Sep 2016 18:29:47 GMT`), as Azure sends `NotBefore`. The weekday is not checked.
    static func parseRFC1123(_ text: String) -> Millis? {
        let parts = text.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 6, parts[0].count == 4, parts[0].hasSuffix(","), parts[5] == "GMT" || parts[5] == "UTC",
            ["Mon,", "Tue,", "Wed,", "Thu,", "Fri,", "Sat,", "Sun,"].contains(String(parts[0])),
            parts[1].count <= 2, let day = Int(parts[1]), (1...31).contains(day),
            let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].firstIndex(
                of: String(parts[2])),
            parts[3].count == 4, let year = Int(parts[3])
        else { return nil }
        let clock = parts[4].split(separator: ":")
        guard clock.count == 3, clock.allSatisfy({ $0.count == 2 }), let hour = Int(clock[0]), let minute = Int(clock[1]),
            let second = Int(clock[2]), hour < 24, minute < 60, second <= 60
        else { return nil }
        let days = daysFromCivil(year: year, month: month + 1, day: day)
        return Millis(days * 86_400 + hour * 3600 + minute * 60 + min(second, 59)) * 1000
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}
