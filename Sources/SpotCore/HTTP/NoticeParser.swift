import Foundation

/// Maps each cloud's own payload to notices; pure, with the clock passed in.
enum NoticeParser {
    /// Deadlines further than this from now are refused as nonsense.
    static let maxDeadlineSkew: Millis = 7 * 24 * 3600 * 1000

    /// Most interruption records one request may create; a larger document is refused whole (413), so that one
    /// sender cannot hold the single writer, or fill an answer, for everyone else.
    static let maxRecordsPerRequest = 1000

    static func tooManyRecords(_ count: Int, _ what: String) -> Problem {
        Problem(
            status: .contentTooLarge, type: "urn:spotd:problem:too-many-records", title: "Too many records",
            detail: "the document names at least \(count) \(what); at most \(maxRecordsPerRequest) are taken per request: split it")
    }

    /// The generic form: `{node_id, kind, deadline | notice_seconds, source, event_id}`.
    static func generic(_ body: JSONObject, now: Millis) throws -> Notice {
        try body.rejectUnknown(["node_id", "kind", "deadline", "notice_seconds", "source", "event_id"])
        let nodeId = try body.string("node_id", required: true, maxLength: 128, pattern: .identifier)!
        let kind = try body.enumeration("kind", InterruptionKind.self, required: true)!
        let source = try body.string("source", maxLength: 64, pattern: .identifier) ?? "generic"
        let eventId = try body.string("event_id", maxLength: 256) ?? Ids.new("evt")
        let deadlineText = try body.string("deadline", maxLength: 64)
        let noticeSeconds = try body.int("notice_seconds", range: 0...86_400)
        if deadlineText != nil && noticeSeconds != nil {
            throw Problem.invalidField("deadline", "and notice_seconds are exclusive; give one")
        }
        var deadline: Millis?
        if let deadlineText {
            guard let parsed = TimeFormat.parseRFC3339(deadlineText) else {
                throw Problem.invalidField("deadline", "must be an RFC 3339 time such as 2026-11-29T10:50:00Z")
            }
            deadline = try checked(parsed, now: now, field: "deadline")
        } else if let noticeSeconds {
            deadline = now + noticeSeconds * 1000
        } else if kind == .termination {
            deadline = now + 120_000
        }
        return Notice(nodeId: nodeId, kind: kind, deadline: deadline, source: source, eventId: eventId)
    }

    /// An AWS EventBridge event: spot interruption warning or rebalance recommendation.
    static func aws(_ body: JSONObject, now: Millis) throws -> Notice {
        let detailType = try body.string("detail-type", required: true, maxLength: 256)!
        let eventId = try body.string("id", required: true, maxLength: 256)!
        if let source = try body.string("source", maxLength: 64), source != "aws.ec2" {
            throw Problem.invalidField("source", "must be aws.ec2 for an EC2 interruption event, got \(source)")
        }
        let detail = try body.object("detail", required: true)!
        let instanceId = try detail.string("instance-id", required: true, maxLength: 128, pattern: .identifier)!
        var time: Millis?
        if let timeText = try body.string("time", maxLength: 64) {
            guard let parsed = TimeFormat.parseRFC3339(timeText) else {
                throw Problem.invalidField("time", "must be an RFC 3339 time such as 2026-11-29T10:50:00Z")
            }
            time = parsed
        }
        switch detailType {
        case "EC2 Spot Instance Interruption Warning":
            guard let time else { throw Problem.invalidField("time", "is required for a spot interruption warning") }
            let deadline = try checked(time + 120_000, now: now, field: "time")
            return Notice(nodeId: instanceId, kind: .termination, deadline: deadline, source: "aws", eventId: eventId)
        case "EC2 Instance Rebalance Recommendation":
            return Notice(nodeId: instanceId, kind: .rebalance, deadline: nil, source: "aws", eventId: eventId)
        default:
            throw Problem(
                status: .unprocessableContent, type: "urn:spotd:problem:unsupported-event", title: "Unsupported event",
                detail:
                    "detail-type '\(detailType)' is not an interruption; expected 'EC2 Spot Instance Interruption Warning' or 'EC2 Instance Rebalance Recommendation'",
                field: "detail-type")
        }
    }

    /// GCP: the node agent's metadata form, a Cloud Audit Log entry, or either inside a Pub/Sub push envelope.
    static func gcp(_ body: JSONObject, now: Millis) throws -> Notice {
        if let message = try body.object("message") {
            let data = try message.string("data", required: true, maxLength: 1 << 20)!
            guard let decoded = Data(base64Encoded: data) else {
                throw Problem.unprocessable("message.data", "must be base64-encoded JSON")
            }
            guard let inner = try? JSONValue.parse(decoded) else {
                throw Problem.unprocessable("message.data", "must be base64-encoded JSON")
            }
            return try gcp(JSONObject(inner, path: "message.data."), now: now)
        }
        if body.fields["protoPayload"] != nil {
            return try gcpAuditLog(body, now: now)
        }
        let name = try body.string("instance_name", maxLength: 128, pattern: .identifier)
        let numericId = try body.string("instance_id", maxLength: 128, pattern: .identifier)
        guard let primary = name ?? numericId else {
            throw Problem.invalidField(body.path + "instance_name", "or instance_id is required")
        }
        _ = try body.string("zone", maxLength: 256)
        // As the metadata server says it (`TRUE`, `FALSE`), in lower case, or a JSON boolean. Anything else is malformed.
        let preempted: Bool
        switch body.fields["preempted"] {
        case .bool(let flag)?: preempted = flag
        case .string("TRUE")?, .string("true")?: preempted = true
        case .string("FALSE")?, .string("false")?: preempted = false
        case nil, .null?: throw Problem.invalidField(body.path + "preempted", "is required")
        default: throw Problem.invalidField(body.path + "preempted", "must be true, false, \"TRUE\" or \"FALSE\"")
        }
        guard preempted else {
            throw Problem(
                status: .unprocessableContent, type: "urn:spotd:problem:not-preempted", title: "Not preempted",
                detail: "preempted is false: the instance is not being preempted, so there is nothing to record",
                field: body.path + "preempted")
        }
        let eventId = try body.string("event_id", maxLength: 256) ?? "preempted:\(numericId ?? primary)"
        let aliases = [name, numericId].compactMap { $0 }.filter { $0 != primary }
        return Notice(nodeId: primary, kind: .termination, deadline: now + 30_000, source: "gcp", eventId: eventId, aliases: aliases)
    }

    private static func gcpAuditLog(_ body: JSONObject, now: Millis) throws -> Notice {
        let payload = try body.object("protoPayload", required: true)!
        let method = try payload.string("methodName", required: true, maxLength: 256)!
        guard method == "compute.instances.preempted" else {
            throw Problem(
                status: .unprocessableContent, type: "urn:spotd:problem:unsupported-event", title: "Unsupported event",
                detail: "methodName '\(method)' is not a preemption; expected compute.instances.preempted",
                field: payload.path + "methodName")
        }
        let resourceName = try payload.string("resourceName", required: true, maxLength: 1024)!
        // projects/PROJECT/zones/ZONE/instances/NAME, as the audit log writes it.
        let parts = resourceName.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 6, parts[0] == "projects", parts[2] == "zones", parts[4] == "instances", !parts[1].isEmpty, !parts[3].isEmpty
        else {
            throw Problem.invalidField(payload.path + "resourceName", "must name the instance (projects/P/zones/Z/instances/NAME)")
        }
        let name: String? = String(parts[5])
        let labels = try body.object("resource")?.object("labels")
        let numericId = try labels?.string("instance_id", maxLength: 128, pattern: .identifier)
        guard let primary = name ?? numericId, NamePattern.identifier.matches(primary) else {
            throw Problem.invalidField(payload.path + "resourceName", "must name the instance (projects/P/zones/Z/instances/NAME)")
        }
        let eventId = try body.string("insertId", maxLength: 256) ?? "preempted:\(numericId ?? primary)"
        let aliases = [name, numericId].compactMap { $0 }.filter { $0 != primary }
        return Notice(nodeId: primary, kind: .termination, deadline: now + 30_000, source: "gcp", eventId: eventId, aliases: aliases)
    }

    /// An Azure Scheduled Events document: every Preempt or Terminate event becomes a termination per VM.
    static func azure(_ body: JSONObject, now: Millis) throws -> (notices: [Notice], ignored: [IgnoredNotice]) {
        _ = try body.int("DocumentIncarnation", required: true, range: 0...Int64(Int32.max))
        let events = try body.array("Events", required: true, maxCount: 100)!
        var notices: [Notice] = []
        var ignored: [IgnoredNotice] = []
        var ignoredResources = 0
        for (index, value) in events.enumerated() {
            let event = try JSONObject(value, path: "Events[\(index)].")
            let eventId = try event.string("EventId", required: true, maxLength: 256)!
            let eventType = try event.string("EventType", required: true, maxLength: 64)!
            // No count limit here: the records limit below refuses a larger document whole (413).
            let resources = try event.array("Resources", required: true, maxCount: Int.max)!.enumerated().map { offset, item in
                guard case .string(let name) = item, NamePattern.identifier.matches(name) else {
                    throw Problem.invalidField(
                        "Events[\(index)].Resources[\(offset)]", "must be a VM name matching \(NamePattern.identifier.description)")
                }
                return name
            }
            var notBefore: Millis?
            switch event.fields["NotBefore"] {
            case nil, .string("")?:
                break
            case .string(let text)? where text.unicodeScalars.count <= 64:
                switch TimeFormat.readRFC1123(text) {
                case .time(let parsed): notBefore = parsed
                case .malformed:
                    throw Problem.invalidField(
                        "Events[\(index)].NotBefore", "must be an RFC 1123 time such as Mon, 19 Sep 2016 18:29:47 GMT")
                case .impossible:
                    throw Problem.unprocessable(
                        "Events[\(index)].NotBefore", "names a day that does not exist, or a weekday that date does not fall on")
                }
            default:
                throw Problem.invalidField("Events[\(index)].NotBefore", "must be an RFC 1123 time of at most 64 characters, or empty")
            }
            guard eventType == "Preempt" || eventType == "Terminate" else {
                ignoredResources += resources.count
                guard ignoredResources <= maxRecordsPerRequest else { throw tooManyRecords(ignoredResources, "VMs in ignored events") }
                ignored.append(IgnoredNotice(eventId: eventId, eventType: eventType, resources: resources))
                continue
            }
            guard notices.count + resources.count <= maxRecordsPerRequest else {
                throw tooManyRecords(notices.count + resources.count, "interruption records (events x VMs)")
            }
            var deadline = now
            if let notBefore {
                deadline = try checked(notBefore, now: now, field: "Events[\(index)].NotBefore")
            }
            for resource in resources {
                notices.append(Notice(nodeId: resource, kind: .termination, deadline: deadline, source: "azure", eventId: eventId))
            }
        }
        return (notices, ignored)
    }

    private static func checked(_ deadline: Millis, now: Millis, field: String) throws -> Millis {
        guard abs(deadline - now) <= maxDeadlineSkew else {
            throw Problem.unprocessable(field, "is more than 7 days away from now; check the clock or the payload")
        }
        return deadline
    }
}
