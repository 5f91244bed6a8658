import Foundation
import Testing

@testable import SpotCore

/// The JSON reader against a reference parser (Foundation's `JSONSerialization`) over generated documents and their
/// byte-level mutations: the two accept the same documents and read the same values, except where spotd is stricter
/// on purpose (a key twice in one object, a lone surrogate, a number out of Double's range). Seeded and bounded so
/// that it runs in CI in seconds; `SPOTD_TEST_SEED` replays a failure.
@Suite("JSON reader against Foundation")
struct JSONFuzzTests {
    /// Documents per run (and as many mutants).
    static let documents = 30_000

    struct Generator {
        var random: TestRandom

        mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &random) }
        mutating func chance(_ percent: Int) -> Bool { int(1...100) <= percent }

        mutating func space() -> String {
            chance(70) ? "" : String((0..<int(1...3)).map { _ in [" ", "\n", "\t", "\r"][int(0...3)] }.joined())
        }

        mutating func number() -> String {
            switch int(0...7) {
            case 0: return String(int(-1000...1000))
            case 1: return String(Int64.random(in: Int64.min...Int64.max, using: &random))
            case 2: return "\(int(-99...99)).\(int(0...999))"
            case 3: return "\(int(1...9))e\(int(-30...30))"
            case 4: return "\(int(-9...9)).\(int(0...99))E+\(int(0...20))"
            case 5: return ["0", "-0", "0.0", "-0.0", "1e0", "9007199254740993", "9223372036854775808", "1.0e19"][int(0...7)]
            case 6: return "\(int(1...9))\(String(repeating: "0", count: int(10...25)))"
            default: return "\(int(0...9)).\(String(repeating: "0", count: int(1...5)))"
            }
        }

        mutating func string() -> String {
            var text = "\""
            for _ in 0..<int(0...8) {
                switch int(0...9) {
                case 0: text += ["\\n", "\\t", "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\r"][int(0...7)]
                case 1: text += String(format: "\\u%04x", int(0x20...0xD7FF))
                case 2: text += "\\ud83d\\ude00"
                case 3: text += ["é", "日本", "😀", "ß"][int(0...3)]
                default:
                    text += String(UnicodeScalar(UInt8(int(0x20...0x7E)))).replacingOccurrences(of: "\\", with: "x")
                        .replacingOccurrences(of: "\"", with: "y")
                }
            }
            return text + "\""
        }

        mutating func value(depth: Int) -> String {
            let kind = depth > 6 ? int(0...4) : int(0...6)
            switch kind {
            case 0: return "null"
            case 1: return chance(50) ? "true" : "false"
            case 2, 3: return number()
            case 4: return string()
            case 5:
                let items = (0..<int(0...4)).map { _ in space() + value(depth: depth + 1) + space() }
                return "[" + items.joined(separator: ",") + (items.isEmpty ? space() : "") + "]"
            default:
                var keys = Set<String>()
                var fields: [String] = []
                for _ in 0..<int(0...4) {
                    let key = string()
                    guard keys.insert(key).inserted else { continue }
                    fields.append(space() + key + space() + ":" + space() + value(depth: depth + 1) + space())
                }
                return "{" + fields.joined(separator: ",") + (fields.isEmpty ? space() : "") + "}"
            }
        }

        mutating func mutate(_ bytes: [UInt8]) -> [UInt8] {
            var bytes = bytes
            for _ in 0..<int(1...3) {
                guard !bytes.isEmpty else { break }
                let at = int(0...bytes.count - 1)
                switch int(0...3) {
                case 0: bytes[at] = UInt8(int(0...255))
                case 1: bytes.remove(at: at)
                case 2: bytes.insert(Array("{}[]\",:\\0-.eE+ \u{7f}".utf8).randomElement(using: &random)!, at: at)
                default: bytes.insert(bytes[at], at: at)
                }
            }
            return bytes
        }
    }

    /// Foundation's value in spotd's terms; numbers are compared by value, not by the type Foundation picked.
    static func same(_ ours: JSONValue, _ theirs: Any) -> Bool {
        switch ours {
        case .null: return theirs is NSNull
        // Scalar by scalar: `String ==` would call two spellings of one character equal.
        case .string(let text): return (theirs as? String).map { Array($0.unicodeScalars) == Array(text.unicodeScalars) } ?? false
        case .array(let items):
            guard let other = theirs as? [Any], other.count == items.count else { return false }
            return zip(items, other).allSatisfy { same($0, $1) }
        case .object(let fields):
            guard let other = theirs as? [String: Any], other.count == fields.count else { return false }
            // Keys matched scalar by scalar too (a dictionary lookup treats canonically equal keys as one).
            return fields.allSatisfy { key, value in
                other.first { Array($0.key.unicodeScalars) == Array(key.unicodeScalars) }.map { same(value, $0.value) } ?? false
            }
        case .bool(let flag):
            guard let number = theirs as? NSNumber, String(cString: number.objCType) == "c" else { return false }
            return number.boolValue == flag
        case .int(let int):
            // Foundation gives large integers as NSDecimalNumber, whose text is exact and whose Double is not.
            guard let number = theirs as? NSNumber, String(cString: number.objCType) != "c" else { return false }
            return number.stringValue == String(int) || (number.doubleValue == Double(int) && !(number is NSDecimalNumber))
        case .double(let double):
            guard let number = theirs as? NSNumber, String(cString: number.objCType) != "c" else { return false }
            // Both sides round correctly, so they agree exactly; only Foundation's decimal numbers (long digit
            // strings) go through a conversion of their own, which can be a few units in the last place off
            // (`-56110432869898688e74`): read their exact decimal text instead, within a few ulps when Foundation's
            // 38-digit mantissa cut the digits.
            let other = number.doubleValue
            guard number is NSDecimalNumber, other != double else { return other == double }
            return Double(number.stringValue) == double || abs(other - double) <= abs(double) * 1e-14
        }
    }

    /// Whether spotd refusing what Foundation accepts is one of its deliberate strictnesses (RFC 8259 says so):
    /// a key twice, a lone surrogate, a number out of range, a comma before a closing bracket (Foundation takes
    /// `[1,]`).
    static func deliberatelyStricter(_ failure: JSONReader.Failure, _ bytes: [UInt8]) -> Bool {
        switch failure {
        case .duplicateKey, .numberOutOfRange, .tooDeep: return true
        case .syntax(let offset, let expected):
            if expected.contains("surrogate") { return true }
            let before = bytes[..<min(offset, bytes.count)].last { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }
            let closing = offset < bytes.count && (bytes[offset] == UInt8(ascii: "]") || bytes[offset] == UInt8(ascii: "}"))
            return before == UInt8(ascii: ",") && closing
        case .invalidUTF8: return false
        }
    }

    func check(_ bytes: [UInt8], _ origin: String) -> Bool {
        let ours = Result { () throws(JSONReader.Failure) -> JSONValue in try JSONReader.parse(bytes) }
        // Foundation guesses UTF-16 or UTF-32 from NUL bytes; spotd reads UTF-8 only, so such inputs say nothing.
        let theirs = bytes.contains(0) ? nil : try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
        switch (ours, theirs) {
        case (.success(let value), .some(let reference)):
            if !Self.same(value, reference) {
                Issue.record("\(origin): values differ for \(String(decoding: bytes, as: UTF8.self)): \(value) vs \(reference)")
                return false
            }
        case (.success(let value), .none):
            // spotd accepted what Foundation refused, or a document with a raw NUL (never valid JSON): never allowed.
            Issue.record("\(origin): spotd accepted what it should refuse: \(String(decoding: bytes, as: UTF8.self)) -> \(value)")
            return false
        case (.failure(let failure), .some):
            if !Self.deliberatelyStricter(failure, bytes) {
                Issue.record("\(origin): spotd refused (\(failure)) what Foundation accepted: \(String(decoding: bytes, as: UTF8.self))")
                return false
            }
        case (.failure, .none):
            break
        }
        return true
    }

    @Test func agreesWithFoundationOnGeneratedDocumentsAndMutants() {
        var generator = Generator(random: TestRandom())
        var accepted = 0
        var failures = 0
        for index in 0..<Self.documents where failures < 10 {
            let text = generator.space() + generator.value(depth: 0) + generator.space()
            let bytes = Array(text.utf8)
            if (try? JSONReader.parse(bytes)) != nil { accepted += 1 }
            if !check(bytes, "document \(index)") { failures += 1 }
            if !check(generator.mutate(bytes), "mutant \(index)") { failures += 1 }
        }
        // The generator makes valid documents: nearly all of them must have been read (a reader that refused
        // everything would otherwise pass).
        #expect(accepted > Self.documents * 9 / 10, "only \(accepted) of \(Self.documents) generated documents were read")
    }
}
