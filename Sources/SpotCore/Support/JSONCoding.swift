/// A strict RFC 8259 reader and a compact writer for `JSONValue`, working on bytes.
///
/// They replace Foundation's JSONDecoder/JSONEncoder on the request path, where the profile showed them at a fifth of
/// the CPU (Codable's generic containers). The reader is stricter than Foundation's: it refuses duplicate object keys,
/// invalid UTF-8, lone surrogates, non-finite numbers and nesting deeper than `maxDepth`.
struct JSONReader {
    enum Failure: Error, Equatable {
        case syntax(offset: Int, expected: String)
        case tooDeep
        case duplicateKey(String)
        case invalidUTF8(offset: Int)
        case numberOutOfRange(offset: Int)
    }

    static let maxDepth = 512
    /// Longest number token read, in bytes.
    static let maxNumberLength = 256

    private let bytes: UnsafeRawBufferPointer
    private var at = 0

    private init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    static func parse(_ bytes: some Sequence<UInt8>) throws(Failure) -> JSONValue {
        let result: Result<JSONValue, Failure> =
            bytes.withContiguousStorageIfAvailable { buffer in
                parse(UnsafeRawBufferPointer(buffer))
            } ?? Array(bytes).withUnsafeBytes { parse($0) }
        return try result.get()
    }

    private static func parse(_ buffer: UnsafeRawBufferPointer) -> Result<JSONValue, Failure> {
        var reader = JSONReader(buffer)
        do throws(Failure) {
            reader.skipSpace()
            let value = try reader.value(depth: 0)
            reader.skipSpace()
            guard reader.at == buffer.count else { throw .syntax(offset: reader.at, expected: "end of document") }
            return .success(value)
        } catch {
            return .failure(error)
        }
    }

    private var peek: UInt8? { at < bytes.count ? bytes[at] : nil }

    private mutating func skipSpace() {
        while at < bytes.count {
            switch bytes[at] {
            case 0x20, 0x09, 0x0A, 0x0D: at += 1
            default: return
            }
        }
    }

    private mutating func expect(_ literal: StaticString, _ value: JSONValue) throws(Failure) -> JSONValue {
        let count = literal.utf8CodeUnitCount
        guard at + count <= bytes.count else { throw .syntax(offset: at, expected: "\(literal)") }
        for index in 0..<count where bytes[at + index] != literal.utf8Start[index] {
            throw .syntax(offset: at + index, expected: "\(literal)")
        }
        at += count
        return value
    }

    private mutating func value(depth: Int) throws(Failure) -> JSONValue {
        guard let byte = peek else { throw .syntax(offset: at, expected: "a value") }
        switch byte {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): return try expect("true", .bool(true))
        case UInt8(ascii: "f"): return try expect("false", .bool(false))
        case UInt8(ascii: "n"): return try expect("null", .null)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw .syntax(offset: at, expected: "a value")
        }
    }

    private mutating func object(depth: Int) throws(Failure) -> JSONValue {
        guard depth <= Self.maxDepth else { throw .tooDeep }
        at += 1
        var fields: [String: JSONValue] = [:]
        skipSpace()
        if peek == UInt8(ascii: "}") {
            at += 1
            return .object(fields)
        }
        while true {
            guard peek == UInt8(ascii: "\"") else { throw .syntax(offset: at, expected: "a string key") }
            let key = try string()
            skipSpace()
            guard peek == UInt8(ascii: ":") else { throw .syntax(offset: at, expected: "':'") }
            at += 1
            skipSpace()
            let item = try value(depth: depth)
            guard fields.updateValue(item, forKey: key) == nil else { throw .duplicateKey(key) }
            skipSpace()
            switch peek {
            case UInt8(ascii: ","):
                at += 1
                skipSpace()
            case UInt8(ascii: "}"):
                at += 1
                return .object(fields)
            default: throw .syntax(offset: at, expected: "',' or '}'")
            }
        }
    }

    private mutating func array(depth: Int) throws(Failure) -> JSONValue {
        guard depth <= Self.maxDepth else { throw .tooDeep }
        at += 1
        var items: [JSONValue] = []
        skipSpace()
        if peek == UInt8(ascii: "]") {
            at += 1
            return .array(items)
        }
        while true {
            items.append(try value(depth: depth))
            skipSpace()
            switch peek {
            case UInt8(ascii: ","):
                at += 1
                skipSpace()
            case UInt8(ascii: "]"):
                at += 1
                return .array(items)
            default: throw .syntax(offset: at, expected: "',' or ']'")
            }
        }
    }

    /// Reads a string starting at its opening quote.
    private mutating func string() throws(Failure) -> String {
        at += 1
        let start = at
        // Fast path: no escapes.
        while at < bytes.count {
            let byte = bytes[at]
            if byte == UInt8(ascii: "\"") {
                let text = try Self.validated(UnsafeRawBufferPointer(rebasing: bytes[start..<at]), offset: start)
                at += 1
                return text
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 { throw .syntax(offset: at, expected: "no control characters inside a string") }
            at += 1
        }
        var scalars = Array(UnsafeRawBufferPointer(rebasing: bytes[start..<at]))
        while true {
            guard at < bytes.count else { throw .syntax(offset: at, expected: "closing '\"'") }
            let byte = bytes[at]
            switch byte {
            case UInt8(ascii: "\""):
                at += 1
                return try Self.validated(scalars, offset: start)
            case UInt8(ascii: "\\"):
                at += 1
                guard let escape = peek else { throw .syntax(offset: at, expected: "an escape") }
                at += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): scalars.append(escape)
                case UInt8(ascii: "b"): scalars.append(0x08)
                case UInt8(ascii: "f"): scalars.append(0x0C)
                case UInt8(ascii: "n"): scalars.append(0x0A)
                case UInt8(ascii: "r"): scalars.append(0x0D)
                case UInt8(ascii: "t"): scalars.append(0x09)
                case UInt8(ascii: "u"):
                    var code = try hex4()
                    if (0xD800...0xDBFF).contains(code) {
                        guard peek == UInt8(ascii: "\\"), at + 1 < bytes.count, bytes[at + 1] == UInt8(ascii: "u") else {
                            throw .syntax(offset: at, expected: "a low surrogate after a high one")
                        }
                        at += 2
                        let low = try hex4()
                        guard (0xDC00...0xDFFF).contains(low) else { throw .syntax(offset: at - 4, expected: "a low surrogate") }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00...0xDFFF).contains(code) {
                        throw .syntax(offset: at - 4, expected: "no lone low surrogate")
                    }
                    guard let scalar = Unicode.Scalar(code) else { throw .syntax(offset: at - 4, expected: "a Unicode scalar") }
                    scalars.append(contentsOf: UTF8.encode(scalar)!)
                default: throw .syntax(offset: at - 1, expected: "a valid escape")
                }
            default:
                if byte < 0x20 { throw .syntax(offset: at, expected: "no control characters inside a string") }
                scalars.append(byte)
                at += 1
            }
        }
    }

    private mutating func hex4() throws(Failure) -> UInt32 {
        guard at + 4 <= bytes.count else { throw .syntax(offset: at, expected: "four hex digits") }
        var code: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[at]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw .syntax(offset: at, expected: "a hex digit")
            }
            code = code << 4 | UInt32(digit)
            at += 1
        }
        return code
    }

    private static func validated(_ utf8: some Collection<UInt8>, offset: Int) throws(Failure) -> String {
        guard let text = String(validating: utf8, as: UTF8.self) else { throw .invalidUTF8(offset: offset) }
        return text
    }

    private mutating func number() throws(Failure) -> JSONValue {
        let start = at
        var integral = true
        if peek == UInt8(ascii: "-") { at += 1 }
        guard let first = peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) else {
            throw .syntax(offset: at, expected: "a digit")
        }
        at += 1
        if first != UInt8(ascii: "0") { skipDigits() }
        if peek == UInt8(ascii: ".") {
            integral = false
            at += 1
            guard try digitsFollow() else { throw .syntax(offset: at, expected: "a digit after '.'") }
        }
        if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
            integral = false
            at += 1
            if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { at += 1 }
            guard try digitsFollow() else { throw .syntax(offset: at, expected: "a digit in the exponent") }
        }
        // No number a client has reason to send is this long; a longer one costs time to read for nothing.
        guard at - start <= Self.maxNumberLength else { throw .numberOutOfRange(offset: start) }
        let token = UnsafeRawBufferPointer(rebasing: bytes[start..<at])
        if integral, let int = Int64(String(decoding: token, as: UTF8.self)) { return .int(int) }
        // JSON has one number type: `1.0`, `1e3` and `9007199254740992.0` are integers too, read exactly here (a
        // Double would round the larger ones).
        if !integral, let int = Self.exactInteger(token) { return .int(int) }
        guard let double = Double(String(decoding: token, as: UTF8.self)), double.isFinite else {
            throw .numberOutOfRange(offset: start)
        }
        return .double(double)
    }

    /// The value of a number token with a fraction or an exponent when it is a whole number that fits an `Int64`.
    private static func exactInteger(_ token: UnsafeRawBufferPointer) -> Int64? {
        var negative = false
        var digits: [UInt8] = []
        var fractionDigits = 0
        var exponent = 0
        var index = 0
        if token.first == UInt8(ascii: "-") {
            negative = true
            index = 1
        }
        var inFraction = false
        while index < token.count {
            let byte = token[index]
            if byte == UInt8(ascii: ".") {
                inFraction = true
            } else if byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E") {
                index += 1
                var exponentNegative = false
                if token[index] == UInt8(ascii: "+") || token[index] == UInt8(ascii: "-") {
                    exponentNegative = token[index] == UInt8(ascii: "-")
                    index += 1
                }
                // Capped: past 10^5 the answer is the same (zero, or not an Int64), and the sum cannot overflow.
                while index < token.count {
                    if exponent < 100_000 { exponent = exponent * 10 + Int(token[index] - UInt8(ascii: "0")) }
                    index += 1
                }
                if exponentNegative { exponent = -exponent }
                break
            } else {
                digits.append(byte)
                if inFraction { fractionDigits += 1 }
            }
            index += 1
        }
        // A JSON number is at most 1 MiB long, so `fractionDigits` is too: no overflow.
        var scale = exponent - fractionDigits
        if digits.allSatisfy({ $0 == UInt8(ascii: "0") }) { return 0 }
        while let last = digits.last, last == UInt8(ascii: "0"), scale < 0 {
            digits.removeLast()
            scale += 1
        }
        guard scale >= 0 else { return nil }
        let significant = digits.drop { $0 == UInt8(ascii: "0") }
        guard significant.count + scale <= 19 else { return nil }
        digits = Array(significant)
        digits.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: scale))
        return Int64((negative ? "-" : "") + String(decoding: digits, as: UTF8.self))
    }

    private mutating func skipDigits() {
        while let byte = peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) { at += 1 }
    }

    private mutating func digitsFollow() throws(Failure) -> Bool {
        guard let byte = peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return false }
        skipDigits()
        return true
    }
}

extension JSONReader.Failure {
    /// What a client is told.
    var message: String { describe("request body") }

    /// What is wrong with `subject` (the request body, the server's answer).
    func describe(_ subject: String) -> String {
        switch self {
        case .syntax(let offset, let expected): "\(subject) is not valid JSON: expected \(expected) at byte \(offset)"
        case .tooDeep: "\(subject) nests deeper than \(JSONReader.maxDepth) levels"
        case .duplicateKey(let key): "\(subject) has the key '\(key.prefix(64))' twice in one object"
        case .invalidUTF8(let offset): "\(subject) is not valid UTF-8 (string at byte \(offset))"
        case .numberOutOfRange(let offset):
            "\(subject) has a number out of range (or longer than \(JSONReader.maxNumberLength) characters) at byte \(offset)"
        }
    }
}

/// Writes compact JSON with sorted keys and unescaped slashes (the stored and served form).
enum JSONWriter {
    static func bytes(_ value: JSONValue) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(value, into: &out)
        return out
    }

    static func write(_ value: JSONValue, into out: inout [UInt8]) {
        switch value {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let flag): out.append(contentsOf: (flag ? "true" : "false").utf8)
        case .int(let int): out.append(contentsOf: String(int).utf8)
        case .double(let double): writeDouble(double, into: &out)
        case .string(let text): writeString(text, into: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (index, item) in items.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                write(item, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let fields):
            out.append(UInt8(ascii: "{"))
            for (index, key) in fields.keys.sorted().enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                writeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                write(fields[key]!, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    private static func writeDouble(_ double: Double, into out: inout [UInt8]) {
        guard double.isFinite else {
            out.append(contentsOf: "null".utf8)
            return
        }
        if double.rounded() == double, abs(double) < 1e15 {
            out.append(contentsOf: String(Int64(double)).utf8)
        } else {
            out.append(contentsOf: double.description.utf8)
        }
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    static func writeString(_ text: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x0A: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x00..<0x20:
                out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0x0F)])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
