/// Strict decimal integers, as headers, query parameters and flags carry them.
enum StrictInteger {
    /// `0` or `[1-9][0-9]*`, optionally after a `-` when `signed`: no `+`, no leading zero, no spaces, at most 18
    /// digits (so that the value always fits an `Int64`, whatever arithmetic follows a range check). Nil otherwise.
    static func parse(_ text: some StringProtocol, signed: Bool = false) -> Int64? {
        var bytes = Substring(text).utf8[...]
        var negative = false
        if signed, bytes.first == UInt8(ascii: "-") {
            negative = true
            bytes = bytes.dropFirst()
        }
        guard let first = bytes.first, (1...18).contains(bytes.count) else { return nil }
        guard first != UInt8(ascii: "0") || bytes.count == 1 else { return nil }
        var value: Int64 = 0
        for byte in bytes {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int64(byte - UInt8(ascii: "0"))
        }
        if negative {
            guard value != 0 else { return nil }
            return -value
        }
        return value
    }
}
