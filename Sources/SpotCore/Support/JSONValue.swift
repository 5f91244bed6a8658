import Foundation

/// A parsed JSON document, kept exact so that request bodies can be validated field by field.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// A short name of the JSON type, for error messages.
    var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .int, .double: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}

extension JSONValue: Codable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .int(value)
        } else if let value = try? container.decode(Double.self) {
            self = .double(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }
}

extension JSONValue {
    /// Parses a request body; malformed JSON becomes a 400 problem naming what is wrong and where.
    static func parse(_ data: Data) throws -> JSONValue {
        guard !data.isEmpty else {
            throw Problem.badRequest("request body is empty; a JSON object is expected")
        }
        do {
            return try JSONReader.parse(data)
        } catch {
            throw Problem.badRequest(error.message)
        }
    }

    /// Encodes to compact JSON bytes, keys sorted (for storage and responses).
    var jsonBytes: [UInt8] { JSONWriter.bytes(self) }

    /// Encodes to compact JSON text, keys sorted (for storage).
    var jsonText: String { String(decoding: JSONWriter.bytes(self), as: UTF8.self) }

    /// Decodes stored JSON text; returns `.null` when it cannot be read.
    static func fromText(_ text: String?) -> JSONValue {
        guard let text, let value = try? JSONReader.parse(text.utf8) else { return .null }
        return value
    }
}

// MARK: - For clients of spotd (the CLI)

extension JSONValue {
    /// Reads JSON text as strictly as spotd reads request bodies; a failure says what is wrong with `subject` and where.
    public static func read(_ bytes: some Sequence<UInt8>, subject: String) -> Result<JSONValue, JSONReadError> {
        do {
            return .success(try JSONReader.parse(bytes))
        } catch {
            return .failure(JSONReadError(description: error.describe(subject)))
        }
    }

    /// Compact JSON text, keys sorted: the form spotd serves.
    public var serialized: String { jsonText }
}

/// Why a text is not JSON spotd can read, in words.
public struct JSONReadError: Error, CustomStringConvertible, Sendable {
    public let description: String
}

/// A JSON object read field by field, each failure naming the field.
struct JSONObject {
    let fields: [String: JSONValue]
    /// Path of this object inside the body, e.g. `detail.` for nested objects.
    let path: String

    init(_ value: JSONValue, path: String = "") throws {
        guard case .object(let fields) = value else {
            throw Problem.invalidField(path.isEmpty ? "body" : String(path.dropLast()), "must be a JSON object, got \(value.typeName)")
        }
        self.fields = fields
        self.path = path
    }

    /// Refuses any field not in `allowed`.
    func rejectUnknown(_ allowed: Set<String>) throws {
        for key in fields.keys.sorted() where !allowed.contains(key) {
            throw Problem.invalidField(path + key, "is not a known field (allowed: \(allowed.sorted().joined(separator: ", ")))")
        }
    }

    /// The field's value; nil when absent. An explicit `null` is refused: no field of spotd's is nullable.
    private func present(_ key: String, required: Bool) throws -> JSONValue? {
        guard let value = fields[key] else {
            if required { throw Problem.invalidField(path + key, "is required") }
            return nil
        }
        if value == .null {
            throw Problem.invalidField(path + key, required ? "is required and must not be null" : "must not be null; leave it out instead")
        }
        return value
    }

    func string(_ key: String, required: Bool = false, maxLength: Int = 256, pattern: NamePattern? = nil) throws -> String? {
        guard let value = try present(key, required: required) else { return nil }
        guard case .string(let text) = value else {
            throw Problem.invalidField(path + key, "must be a string, got \(value.typeName)")
        }
        if text.isEmpty { throw Problem.invalidField(path + key, "must not be empty") }
        if let offset = text.unicodeScalars.firstIndex(where: { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }) {
            let position = text.unicodeScalars.distance(from: text.unicodeScalars.startIndex, to: offset)
            throw Problem.invalidField(path + key, "must not contain control characters (one is at character \(position))")
        }
        if text.unicodeScalars.count > maxLength { throw Problem.invalidField(path + key, "must be at most \(maxLength) characters") }
        if let pattern, !pattern.matches(text) {
            throw Problem.invalidField(path + key, "must match \(pattern.description)")
        }
        return text
    }

    func int(_ key: String, required: Bool = false, range: ClosedRange<Int64>) throws -> Int64? {
        guard let value = try present(key, required: required) else { return nil }
        // The reader gives every whole number that fits an Int64 as `.int`, `1.0` and `1e3` included: a whole
        // `.double` is out of range by construction, and no conversion from Double happens here.
        let number: Int64
        switch value {
        case .int(let int): number = int
        case .double(let double) where double.rounded() == double:
            throw Problem.invalidField(path + key, "must be between \(range.lowerBound) and \(range.upperBound)")
        default: throw Problem.invalidField(path + key, "must be an integer, got \(value.typeName)")
        }
        guard range.contains(number) else {
            throw Problem.invalidField(path + key, "must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return number
    }

    func double(_ key: String, required: Bool = false, range: ClosedRange<Double>) throws -> Double? {
        guard let value = try present(key, required: required) else { return nil }
        let number: Double
        switch value {
        case .int(let int): number = Double(int)
        case .double(let double): number = double
        default: throw Problem.invalidField(path + key, "must be a number, got \(value.typeName)")
        }
        guard number.isFinite, range.contains(number) else {
            throw Problem.invalidField(path + key, "must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return number
    }

    func bool(_ key: String, required: Bool = false) throws -> Bool? {
        guard let value = try present(key, required: required) else { return nil }
        guard case .bool(let flag) = value else {
            throw Problem.invalidField(path + key, "must be true or false, got \(value.typeName)")
        }
        return flag
    }

    func enumeration<E: RawRepresentable & CaseIterable>(_ key: String, _ type: E.Type, required: Bool = false) throws -> E?
    where E.RawValue == String {
        guard let text = try string(key, required: required, maxLength: 64) else { return nil }
        guard let value = E(rawValue: text) else {
            let allowed = E.allCases.map(\.rawValue).joined(separator: ", ")
            throw Problem.invalidField(path + key, "must be one of: \(allowed)")
        }
        return value
    }

    func object(_ key: String, required: Bool = false) throws -> JSONObject? {
        guard let value = try present(key, required: required) else { return nil }
        return try JSONObject(value, path: path + key + ".")
    }

    func array(_ key: String, required: Bool = false, maxCount: Int = 1000) throws -> [JSONValue]? {
        guard let value = try present(key, required: required) else { return nil }
        guard case .array(let items) = value else {
            throw Problem.invalidField(path + key, "must be an array, got \(value.typeName)")
        }
        guard items.count <= maxCount else { throw Problem.invalidField(path + key, "must have at most \(maxCount) items") }
        return items
    }
}

/// The character classes that names and ids may use.
enum NamePattern: Sendable {
    /// `[a-z0-9-]{1,63}`, as pool names.
    case dnsLabel
    /// `[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}`, as cloud instance ids, job ids, zones and instance types: nothing that
    /// a path cannot carry (no `/`), so every stored id stays addressable.
    case identifier

    var description: String {
        switch self {
        case .dnsLabel: "[a-z0-9-]{1,63}"
        case .identifier: "[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}"
        }
    }

    func matches(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        switch self {
        case .dnsLabel:
            guard (1...63).contains(bytes.count) else { return false }
            return bytes.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
        case .identifier:
            guard (1...128).contains(bytes.count) else { return false }
            let isAlnum: (UInt8) -> Bool = { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x30 && $0 <= 0x39) }
            guard isAlnum(bytes[0]) else { return false }
            return bytes.allSatisfy { isAlnum($0) || $0 == 0x2E || $0 == 0x5F || $0 == 0x3A || $0 == 0x2D }
        }
    }
}
