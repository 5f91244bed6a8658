import Foundation
import Testing

@testable import SpotCore

@Suite("JSON reader and writer")
struct JSONCodingTests {
    func read(_ text: String) throws(JSONReader.Failure) -> JSONValue {
        try JSONReader.parse(Array(text.utf8))
    }

    @Test func readsEveryKindOfValue() throws {
        let value = try read(#" { "a" : [1, -2, 3.5, 1e3, true, false, null], "b": {"c": "d\u00e9\n\"\\\/"}, "e": "\ud83d\ude00" } "#)
        #expect(
            value
                == .object([
                    "a": .array([.int(1), .int(-2), .double(3.5), .int(1000), .bool(true), .bool(false), .null]),
                    "b": .object(["c": .string("dé\n\"\\/")]), "e": .string("😀"),
                ]))
        #expect(try read("9223372036854775807") == .int(Int64.max))
        #expect(try read("92233720368547758070") == .double(9.223_372_036_854_775_808e19))
        #expect(try read("-0") == .int(0))
        // JSON has one number type: a whole number is an integer however it is written, read exactly (no Double).
        #expect(try read("9007199254740992.0") == .int(9_007_199_254_740_992))
        #expect(try read("9007199254740993.0") == .int(9_007_199_254_740_993))
        #expect(try read("1.5e1") == .int(15))
        #expect(try read("100e-2") == .int(1))
        #expect(try read("-0.0") == .int(0))
        #expect(try read("0e99999") == .int(0))
        #expect(try read("1.25e1") == .double(12.5))
        #expect(try read("1e19") == .double(1e19))
        #expect(try read("-9223372036854775808.0") == .int(Int64.min))
        #expect(try read("9223372036854775808.0") == .double(9_223_372_036_854_775_808))
        // A number longer than any client needs is refused before it costs time (a 1 MiB one took seconds).
        let long = "0." + String(repeating: "0", count: 300_000) + "1e300001"
        #expect(throws: JSONReader.Failure.numberOutOfRange(offset: 5)) { try read(#"{"x":\#(long)}"#) }
        #expect(try read("1." + String(repeating: "0", count: 200)) == .int(1))
        #expect(try read("\"\"") == .string(""))
        #expect(try read("[]") == .array([]))
        #expect(try read("{}") == .object([:]))
    }

    @Test(arguments: [
        "", " ", "{", "}", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "01", "1.", ".5", "-", "+1", "1e", "1e+", "0x10",
        "tru", "nul", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"a\tb\"",
        "[1] 2", "NaN", "Infinity", "1e400", "'a'",
    ])
    func refusesMalformedDocuments(_ text: String) {
        #expect(throws: JSONReader.Failure.self) { try read(text) }
    }

    @Test func refusesDuplicateKeysInvalidUTF8AndDeepNesting() {
        #expect(throws: JSONReader.Failure.duplicateKey("a")) { try read(#"{"a":1,"b":2,"a":3}"#) }
        #expect(throws: JSONReader.Failure.invalidUTF8(offset: 1)) { try JSONReader.parse([0x22, 0xC3, 0x28, 0x22]) }
        #expect(throws: JSONReader.Failure.invalidUTF8(offset: 1)) { try JSONReader.parse([0x22, 0xED, 0xA0, 0x80, 0x22]) }
        let deep = String(repeating: "[", count: JSONReader.maxDepth + 1) + String(repeating: "]", count: JSONReader.maxDepth + 1)
        #expect(throws: JSONReader.Failure.tooDeep) { try read(deep) }
        let allowed = String(repeating: "[", count: JSONReader.maxDepth) + String(repeating: "]", count: JSONReader.maxDepth)
        #expect((try? read(allowed)) != nil)
    }

    @Test func writesCompactSortedJSONThatFoundationReadsBack() throws {
        let value = JSONValue.object([
            "z": .string("quote \" backslash \\ slash / newline \n tab \t bell \u{07} é 😀"), "a": .int(-42), "m": .double(2.5),
            "n": .double(3), "l": .array([.null, .bool(true), .object([:])]),
        ])
        let text = value.jsonText
        #expect(
            text.hasPrefix(#"{"a":-42,"l":[null,true,{}],"m":2.5,"n":3,"z":"quote \" backslash \\ slash / newline \n tab \t bell \u0007"#))
        let foundation = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        #expect(foundation?["z"] as? String == "quote \" backslash \\ slash / newline \n tab \t bell \u{07} é 😀")
        #expect(try read(text) == value.normalized)
    }
}

extension JSONValue {
    /// Integral doubles are written as integers, and so read back as `.int`.
    fileprivate var normalized: JSONValue {
        switch self {
        case .double(let double) where double.rounded() == double && abs(double) < 1e15: .int(Int64(double))
        case .array(let items): .array(items.map(\.normalized))
        case .object(let fields): .object(fields.mapValues(\.normalized))
        default: self
        }
    }
}
