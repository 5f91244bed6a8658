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
    public func now() -> Millis {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Millis(spec.tv_sec) * 1000 + Millis(spec.tv_nsec / 1_000_000)
    }
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

    /// Parses an RFC 3339 time (`2026-11-29T10:48:44Z`, `...44.123+02:00`) to integer milliseconds; nil when
    /// malformed. Fractions past the millisecond are truncated, digit by digit: no floating point is involved.
    static func parseRFC3339(_ text: String) -> Millis? {
        let bytes = Array(text.utf8)
        guard bytes.count >= 20, bytes.count <= 64 else { return nil }
        guard let year = digits(bytes, 0, 4), bytes[4] == 0x2D, let month = digits(bytes, 5, 2), bytes[7] == 0x2D,
            let day = digits(bytes, 8, 2), bytes[10] == 0x54 || bytes[10] == 0x74 || bytes[10] == 0x20,
            let hour = digits(bytes, 11, 2), bytes[13] == 0x3A, let minute = digits(bytes, 14, 2), bytes[16] == 0x3A,
            let second = digits(bytes, 17, 2)
        else { return nil }
        guard year >= 1, (1...12).contains(month), day >= 1, day <= daysInMonth(year: year, month: month), hour < 24, minute < 60,
            second <= 60
        else { return nil }
        var index = 19
        var millis = 0
        if index < bytes.count && bytes[index] == 0x2E {
            index += 1
            let start = index
            while index < bytes.count, bytes[index] >= 0x30 && bytes[index] <= 0x39 {
                if index - start < 3 { millis = millis * 10 + Int(bytes[index] - 0x30) }
                index += 1
            }
            guard index > start else { return nil }
            for _ in min(index - start, 3)..<3 { millis *= 10 }
        }
        guard index < bytes.count else { return nil }
        var offsetSeconds = 0
        switch bytes[index] {
        case 0x5A, 0x7A:
            index += 1
        case 0x2B, 0x2D:
            guard let offsetHours = digits(bytes, index + 1, 2), index + 3 < bytes.count, bytes[index + 3] == 0x3A,
                let offsetMinutes = digits(bytes, index + 4, 2), offsetHours < 24, offsetMinutes < 60
            else { return nil }
            offsetSeconds = (offsetHours * 3600 + offsetMinutes * 60) * (bytes[index] == 0x2D ? -1 : 1)
            index += 6
        default:
            return nil
        }
        guard index == bytes.count else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        // A leap second (:60) is read as :59.999, its last representable millisecond.
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + min(second, 59) - offsetSeconds
        return Millis(seconds) * 1000 + Millis(second == 60 ? 999 : millis)
    }

    private static let weekdays = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    /// What reading an RFC 1123 time found.
    enum RFC1123: Equatable {
        case time(Millis)
        /// Not the IMF-fixdate shape (`Mon, 19 Sep 2016 18:29:47 GMT`), or a day past the month's longest (31 Feb).
        case malformed
        /// The right shape, but no such day: 29 Feb of a common year, or a weekday the date does not fall on.
        case impossible
    }

    /// Reads an RFC 1123 time exactly as RFC 9110's IMF-fixdate writes it (`Mon, 19 Sep 2016 18:29:47 GMT`), as
    /// Azure sends `NotBefore`: two-digit day, `GMT`, and the weekday that date falls on.
    static func readRFC1123(_ text: String) -> RFC1123 {
        let bytes = Array(text.utf8)
        // "Www, DD Mmm YYYY HH:MM:SS GMT" is exactly 29 bytes.
        guard bytes.count == 29, bytes[3] == 0x2C, bytes[4] == 0x20, bytes[7] == 0x20, bytes[11] == 0x20, bytes[16] == 0x20,
            bytes[19] == 0x3A, bytes[22] == 0x3A, bytes[25] == 0x20, bytes[26...28].elementsEqual("GMT".utf8),
            let day = digits(bytes, 5, 2), let year = digits(bytes, 12, 4), let hour = digits(bytes, 17, 2),
            let minute = digits(bytes, 20, 2), let second = digits(bytes, 23, 2),
            let monthIndex = months.firstIndex(where: { bytes[8...10].elementsEqual($0.utf8) }),
            let weekdayIndex = weekdays.firstIndex(where: { bytes[0...2].elementsEqual($0.utf8) })
        else { return .malformed }
        let month = monthIndex + 1
        // The longest the month can be (29 for February): the shape a pattern can check.
        guard day >= 1, day <= (month == 2 ? 29 : daysInMonth(year: 2000, month: month)), hour < 24, minute < 60, second <= 60 else {
            return .malformed
        }
        guard year >= 1, day <= daysInMonth(year: year, month: month) else { return .impossible }
        let days = daysFromCivil(year: year, month: month, day: day)
        // 1970-01-01 was a Thursday.
        guard weekdayIndex == ((days % 7) + 7) % 7 else { return .impossible }
        return .time(Millis(days * 86_400 + hour * 3600 + minute * 60 + min(second, 59)) * 1000 + (second == 60 ? 999 : 0))
    }

    /// The time of an RFC 1123 text, or nil when it is malformed or impossible.
    static func parseRFC1123(_ text: String) -> Millis? {
        if case .time(let millis) = readRFC1123(text) { return millis }
        return nil
    }

    /// The number made of `count` ASCII digits at `from`; nil when any is not a digit or the text is too short.
    private static func digits(_ bytes: [UInt8], _ from: Int, _ count: Int) -> Int? {
        guard from >= 0, from + count <= bytes.count else { return nil }
        var value = 0
        for byte in bytes[from..<from + count] {
            guard byte >= 0x30 && byte <= 0x39 else { return nil }
            value = value * 10 + Int(byte - 0x30)
        }
        return value
    }

    static func daysInMonth(year: Int, month: Int) -> Int {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
        return [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
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
