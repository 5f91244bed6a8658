import ArgumentParser
import SpotCore

/// Text for people from spotd's JSON: aligned tables and key: value views. Whatever the server answers (a missing
/// field, a wrong type, a huge number), something is printed and nothing traps.
enum Render {
    /// A value as one table cell: `-` for null or missing, lists joined with commas, objects as compact JSON.
    static func cell(_ value: JSONValue?) -> String {
        switch value {
        case nil, .null?: "-"
        case .bool(let flag)?: flag ? "true" : "false"
        case .int(let number)?: String(number)
        case .double(let number)?:
            number.isFinite && number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : String(number)
        case .string(let text)?: text.isEmpty ? "-" : clean(text)
        case .array(let items)?: items.isEmpty ? "-" : items.map { cell($0) }.joined(separator: ",")
        case .object(let fields)?: clean(JSONValue.object(fields).serialized)
        }
    }

    /// The text with control characters (and bidirectional overrides) shown as `?`: a server's strings cannot move
    /// the cursor, colour the terminal or reorder a line.
    static func clean(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isUnsafe) else { return text }
        return String(String.UnicodeScalarView(text.unicodeScalars.map { isUnsafe($0) ? "?" : $0 }))
    }

    /// Control characters (C0, C1) and the marks that reorder or break a line: bidi embeddings, isolates and marks
    /// (LRM, RLM, ALM), and the line and paragraph separators.
    private static func isUnsafe(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || (0x202A...0x202E).contains(scalar.value)
            || (0x2066...0x2069).contains(scalar.value) || (0x200E...0x200F).contains(scalar.value) || scalar.value == 0x061C
            || (0x2028...0x2029).contains(scalar.value)
    }

    /// Columns as wide as their widest cell, two spaces apart, headers as given, no trailing spaces.
    static func table(_ headers: [String], _ rows: [[String]], indent: String = "") -> [String] {
        var widths = headers.map(\.count)
        for row in rows {
            for (index, text) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], text.count) }
        }
        return ([headers] + rows).map { row in
            var line = indent
            for index in widths.indices {
                let text = index < row.count ? row[index] : ""
                line += index == widths.count - 1 ? text : text + String(repeating: " ", count: widths[index] - text.count + 2)
            }
            return trimmed(line)
        }
    }

    static func trimmed(_ line: String) -> String {
        var line = line
        while line.last == " " { line.removeLast() }
        return line
    }

    /// A JSON object as `key: value` lines: plain values aligned first (`first` keys in that order, then the rest
    /// alphabetically), then nested objects indented, then lists of objects as tables.
    static func details(_ value: JSONValue, first: [String] = [], indent: String = "") -> [String] {
        guard case .object(let fields) = value else { return [indent + cell(value)] }
        let keys = first.filter { fields[$0] != nil } + fields.keys.filter { !first.contains($0) }.sorted()
        let plain = keys.filter { !isNested(fields[$0]!) }
        let width = (plain.map(\.count).max() ?? 0) + 1
        var lines = plain.map { key in
            trimmed(indent + (clean(key) + ":").padding(width) + " " + cell(fields[key]))
        }
        for key in keys where isNested(fields[key]!) {
            lines.append(indent + clean(key) + ":")
            if case .array(let items) = fields[key]! {
                lines += objectTable(items, indent: indent + "  ")
            } else {
                lines += details(fields[key]!, indent: indent + "  ")
            }
        }
        return lines
    }

    private static func isNested(_ value: JSONValue) -> Bool {
        switch value {
        case .object(let fields): !fields.isEmpty
        case .array(let items): items.contains { if case .object = $0 { true } else { false } }
        default: false
        }
    }

    /// The order of the columns of a list of objects (a timeline, the jobs a drill hits); `detail` goes last.
    static let itemKeys = ["id", "at", "node_id", "step", "job_id", "type", "subject", "tier", "gpus", "action", "pool", "state"]

    /// A list of objects as a table whose columns are the union of their keys.
    static func objectTable(_ items: [JSONValue], indent: String) -> [String] {
        var keys: Set<String> = []
        for case .object(let fields) in items { keys.formUnion(fields.keys) }
        let rest = keys.filter { !itemKeys.contains($0) && $0 != "detail" }.sorted()
        let columns = itemKeys.filter(keys.contains) + rest + (keys.contains("detail") ? ["detail"] : [])
        let headers = columns.map { clean($0).uppercased().replacingOccurrences(of: "_", with: " ") }
        return table(headers, items.map { item in columns.map { cell(item.field($0)) } }, indent: indent)
    }
}

extension String {
    /// The text padded with spaces to `width` characters.
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

// MARK: - Resources

/// A table column: its header and how a cell is read from an item.
struct Column {
    var header: String
    var value: (JSONValue) -> String

    init(_ header: String, _ value: @escaping (JSONValue) -> String) {
        self.header = header
        self.value = value
    }

    /// The cell of the field at `path` (`nodes.ready` reads a nested field).
    init(_ header: String, _ path: String) {
        self.init(header) { item in Render.cell(Column.lookup(item, path)) }
    }

    /// `a/b` of two fields, e.g. GPUs used of total.
    init(_ header: String, ratio first: String, _ second: String) {
        self.init(header) { item in "\(Render.cell(Column.lookup(item, first)))/\(Render.cell(Column.lookup(item, second)))" }
    }

    static func lookup(_ item: JSONValue, _ path: String) -> JSONValue? {
        var value: JSONValue? = item
        for key in path.split(separator: ".") { value = value?.field(String(key)) }
        return value
    }
}

/// What `spotd get` can show.
enum Resource: String, ExpressibleByArgument, CaseIterable {
    case pools, nodes, jobs, services, interruptions, subscriptions, drills

    init?(argument: String) {
        let name = argument.lowercased()
        guard let resource = Self(rawValue: name) ?? Self(rawValue: name + "s") else { return nil }
        self = resource
    }

    var path: String { "/v1/\(rawValue)" }

    /// One of them, in messages: `node`.
    var noun: String { String(rawValue.dropLast()) }

    /// Whether the list can be filtered by state (`--state`).
    var filtersByState: Bool { [.nodes, .jobs, .interruptions].contains(self) }

    var columns: [Column] {
        switch self {
        case .pools:
            [
                Column("NAME", "name"), Column("TYPE", "capacity_type"), Column("GPU", "gpu_type"), Column("ZONE", "zone"),
                Column("READY", "nodes.ready"), Column("CORDONED", "nodes.cordoned"), Column("DRAINING", "nodes.draining"),
                Column("DRAINED", "nodes.drained"), Column("GPUS USED/TOTAL", ratio: "gpus_allocated", "gpus_total"),
                Column("MAX", "max_nodes"), Column("PRICE/H", "hourly_price"), Column("STOCKOUT", "stockout"),
            ]
        case .nodes:
            [
                Column("ID", "id"), Column("POOL", "pool"), Column("TYPE", "capacity_type"), Column("STATE", "state"),
                Column("GPUS USED/TOTAL", ratio: "gpus_allocated", "gpus"), Column("JOBS", "jobs"),
                Column("INTERRUPTION", "interruption_id"),
            ]
        case .jobs:
            [
                Column("ID", "id"), Column("TIER", "tier"), Column("STATE", "state"), Column("GPUS", "gpus"),
                Column("NODES", "node_ids"), Column("ATTEMPT", "attempt"), Column("REQUEUES", "requeue_count"),
                Column("CHECKPOINT BY", "checkpoint_deadline"), Column("SUBMITTED", "submitted_at"),
            ]
        case .services:
            [
                Column("ID", "id"), Column("TIER", "tier"), Column("READY/WANTED", ratio: "ready_replicas", "replicas"),
                Column("MIN AVAILABLE", "min_available"), Column("GPUS/REPLICA", "gpus_per_replica"),
                Column("BASE ON-DEMAND", "base_on_demand"), Column("GPU", "gpu_type"),
            ]
        case .interruptions:
            [
                Column("ID", "id"), Column("NODE", "node_id"), Column("POOL", "pool"), Column("KIND", "kind"),
                Column("SOURCE", "source"), Column("STATE", "state"), Column("DEADLINE", "deadline"),
                Column("RECEIVED", "received_at"),
            ]
        case .subscriptions:
            [
                Column("ID", "id"), Column("URL", "url"), Column("EVENTS", "events"), Column("FORMAT", "format"),
                Column("DELIVERY", "delivery.state"), Column("BEHIND", "delivery.events_behind"),
                Column("DELIVERED", "delivery.delivered"), Column("LAST STATUS", "delivery.last_status"),
            ]
        case .drills:
            [
                Column("ID", "id"), Column("POOL", "pool"), Column("NODES", "node_ids"),
                Column("NOTICE") { "\(Render.cell($0.field("notice_seconds"))) s" },
                Column("STARTED", "started_at"), Column("BY", "created_by"),
            ]
        }
    }

    /// The keys shown first in the key: value view of one.
    var firstKeys: [String] {
        switch self {
        case .pools: ["name", "capacity_type", "gpu_type", "zone", "instance_type"]
        case .nodes: ["id", "pool", "capacity_type", "state", "gpus", "gpus_allocated"]
        case .jobs: ["id", "tier", "state", "gpus", "node_id", "node_ids", "attempt"]
        case .services: ["id", "tier", "replicas", "ready_replicas", "min_available"]
        case .interruptions: ["id", "node_id", "pool", "kind", "source", "state", "deadline", "received_at", "completed_at"]
        case .subscriptions: ["id", "url", "events", "format"]
        case .drills: ["id", "pool", "state", "node_ids", "interruption_ids", "notice_seconds", "started_at", "created_by"]
        }
    }

    /// The items as a table.
    func table(_ items: [JSONValue]) -> [String] {
        let columns = columns
        return Render.table(columns.map(\.header), items.map { item in columns.map { $0.value(item) } })
    }
}
