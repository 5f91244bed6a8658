import Foundation

/// A subscription: matching events delivered to a URL, in event order, at least once.
public struct Subscription: Sendable, Equatable {
    public enum Format: String, Sendable, CaseIterable { case json, slack }

    public var id: String
    public var url: String
    public var events: [EventPattern]
    public var format: Format
    /// The signing secret; shown once, at creation.
    public var secret: String
    /// The id of the last event dealt with (delivered, or passed over as not matching).
    public var cursor: Int64
    public var delivered: Int64
    /// Failed tries of the event at the head, since the last success.
    public var attempts: Int64
    public var nextAttemptAt: Millis
    public var lastAttemptAt: Millis?
    public var lastStatus: Int?
    public var lastError: String?
    public var lastDeliveredAt: Millis?
    public var createdAt: Millis
    public var createdBy: String

    func matches(_ type: String) -> Bool { events.contains { $0.matches(type) } }

    /// The URL as shown to readers: scheme, host and port only. A chat webhook's path is its password (Slack's
    /// `hooks.slack.com/services/T…/B…/secret`), and a viewer may read subscriptions.
    public var redactedURL: String {
        guard let components = URLComponents(string: url), let scheme = components.scheme, let host = components.host else { return "…" }
        let port = components.port.map { ":\($0)" } ?? ""
        let path = components.path.isEmpty || components.path == "/" ? components.path : "/…"
        return "\(scheme)://\(host)\(port)\(path)"
    }
}

/// Which events a subscription wants: a type (`node.cordoned`), a family (`interruption.*`), or everything (`*`).
public struct EventPattern: Sendable, Equatable, CustomStringConvertible {
    public let text: String

    /// A pattern, or nil when `text` is not one: `*`, `family.*` or `family.name`, each part `[a-z][a-z_]{0,63}`.
    public init?(_ text: String) {
        guard text == "*" || Self.valid(text) else { return nil }
        self.text = text
    }

    private static func valid(_ text: String) -> Bool {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, Self.word(parts[0]) else { return false }
        return parts[1] == "*" || Self.word(parts[1])
    }

    private static func word(_ part: Substring) -> Bool {
        let bytes = Array(part.utf8)
        guard (1...64).contains(bytes.count), (0x61...0x7A).contains(bytes[0]) else { return false }
        return bytes.allSatisfy { (0x61...0x7A).contains($0) || $0 == 0x5F }
    }

    public func matches(_ type: String) -> Bool {
        if text == "*" { return true }
        if text.hasSuffix(".*") { return type.hasPrefix(text.dropLast()) }
        return type == text
    }

    public var description: String { text }
}

/// Delivery bodies: the event as `/v1/events` shows it (`json`), or one readable line for a chat channel (`slack`).
enum DeliveryFormat {
    static func body(_ event: Event, format: Subscription.Format) -> Data {
        switch format {
        case .json: Data(View.event(event).jsonText.utf8)
        case .slack: Data(JSONValue.object(["text": .string(slackLine(event))]).jsonText.utf8)
        }
    }

    /// One line a person reads in a chat channel: what happened, to what, and the detail that matters.
    static func slackLine(_ event: Event) -> String {
        let data = event.data
        func field(_ key: String) -> String? {
            switch data[demo: key] {
            case .string(let text)?: text
            case .int(let number)?: String(number)
            case .double(let number)?: String(number)
            case .bool(let flag)?: String(flag)
            default: nil
            }
        }
        let subject = event.subject.split(separator: "/", maxSplits: 1).last.map(String.init) ?? event.subject
        let time = TimeFormat.rfc3339(event.at)
        var line: String
        switch event.type {
        case "interruption.received":
            line = "Interruption: node \(subject) will be reclaimed"
            if let deadline = field("deadline") { line += " by \(deadline)" }
            if let source = field("source") { line += " (\(source) \(field("kind") ?? "notice"))" }
        case "interruption.completed": line = "Interruption \(subject) completed: node \(field("node_id") ?? "?") is handled"
        case "interruption.unmatched": line = "Notice for unknown node \(subject)"
        case "node.cordoned": line = "Node \(subject) cordoned" + (field("reason").map { ": \($0)" } ?? "")
        case "node.drained": line = "Node \(subject) drained"
        case "node.terminated": line = "Node \(subject) terminated" + (field("reason").map { ": \($0)" } ?? "")
        case "node.registered": line = "Node \(subject) registered in pool \(field("pool") ?? "?")"
        case "job.requeued": line = "Job \(subject) requeued" + (field("reason").map { ": \($0)" } ?? "")
        case "job.checkpoint_requested": line = "Job \(subject) asked to checkpoint" + (field("deadline").map { " by \($0)" } ?? "")
        case "job.checkpointed": line = "Job \(subject) checkpointed" + (field("step").map { " at step \($0)" } ?? "")
        case "provisioning.requested":
            line = "Replacement capacity requested in pool \(field("pool") ?? "?")" + (field("reason").map { " (\($0))" } ?? "")
        case "provisioning.fulfilled": line = "Provisioning \(subject) fulfilled" + (field("node_id").map { ": node \($0)" } ?? "")
        case "provisioning.failed": line = "Provisioning \(subject) failed" + (field("error").map { ": \($0)" } ?? "")
        default:
            let details = ["node_id", "pool", "reason", "state"].compactMap { key in field(key).map { "\(key)=\($0)" } }
            line = "\(event.type) \(subject)" + (details.isEmpty ? "" : " (\(details.joined(separator: ", ")))")
        }
        return slackEscaped("[spotd] \(line) — \(time) by \(event.actor)")
    }

    /// Slack's escaping of message text: `&`, `<` and `>` (so that a reason cannot ping `<!channel>` or hide a link).
    static func slackEscaped(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
