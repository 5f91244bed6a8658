import Foundation
import Testing

@testable import SpotCore

/// Fills a fixture's placeholders with the clock's time and instance names.
func filled(_ name: String, now: Millis, instances: [String]) throws -> String {
    var text = try fixture(name)
    text = text.replacingOccurrences(of: "{{TIME}}", with: TimeFormat.rfc3339(now))
    let formatter = DateFormatter()
    formatter.locale = Locale(identifier: "en_US_POSIX")
    formatter.timeZone = TimeZone(identifier: "GMT")
    formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
    text = text.replacingOccurrences(of: "{{RFC1123}}", with: formatter.string(from: Date(timeIntervalSince1970: Double(now) / 1000 + 45)))
    for (index, instance) in instances.enumerated() {
        text = text.replacingOccurrences(of: index == 0 ? "{{INSTANCE}}" : "{{INSTANCE\(index + 1)}}", with: instance)
    }
    return text
}

func object(_ text: String) throws -> JSONObject {
    try JSONObject(JSONValue.parse(Data(text.utf8)))
}

@Suite("Cloud notice formats")
struct NoticeParserTests {
    let now: Millis = 1_800_000_000_000

    @Test func awsSpotWarningIsTerminationAtTimePlus120() throws {
        let notice = try NoticeParser.aws(object(filled("aws-spot-interruption.json", now: now, instances: ["i-0abc"])), now: now + 500)
        #expect(
            notice
                == Notice(
                    nodeId: "i-0abc", kind: .termination, deadline: now + 120_000, source: "aws",
                    eventId: "12345678-1234-1234-1234-123456789012"))
    }

    @Test func awsRebalanceHasNoDeadline() throws {
        let notice = try NoticeParser.aws(object(filled("aws-rebalance.json", now: now, instances: ["i-0abc"])), now: now)
        #expect(notice.kind == .rebalance)
        #expect(notice.deadline == nil)
        #expect(notice.nodeId == "i-0abc")
    }

    @Test func awsRefusesOtherEventsAndBadShapes() throws {
        var text = try filled("aws-spot-interruption.json", now: now, instances: ["i-0abc"])
        let wrongType = text.replacingOccurrences(
            of: "EC2 Spot Instance Interruption Warning", with: "EC2 Instance State-change Notification")
        #expect(throws: Problem.self) { try NoticeParser.aws(object(wrongType), now: now) }
        let badTime = text.replacingOccurrences(of: TimeFormat.rfc3339(now), with: "yesterday")
        let problem = try #require(throws: Problem.self) { try NoticeParser.aws(object(badTime), now: now) }
        #expect(problem.field == "time")
        text = text.replacingOccurrences(of: "\"instance-id\": \"i-0abc\",", with: "")
        let missing = try #require(throws: Problem.self) { try NoticeParser.aws(object(text), now: now) }
        #expect(missing.field == "detail.instance-id")
    }

    @Test func gcpMetadataFormIsThirtySeconds() throws {
        let notice = try NoticeParser.gcp(object(filled("gcp-metadata.json", now: now, instances: ["gke-gpu-1"])), now: now)
        #expect(notice.nodeId == "gke-gpu-1")
        #expect(notice.aliases == ["4567890123456789012"])
        #expect(notice.deadline == now + 30_000)
        #expect(notice.kind == .termination)
    }

    @Test func gcpAuditLogEntryAndPubSubEnvelope() throws {
        let entry = try filled("gcp-audit-log.json", now: now, instances: ["gke-gpu-2"])
        let notice = try NoticeParser.gcp(object(entry), now: now)
        #expect(notice.nodeId == "gke-gpu-2")
        #expect(notice.eventId == "-x0gjn7e1b1oc")
        #expect(notice.deadline == now + 30_000)
        let envelope =
            #"{"message":{"data":"\#(Data(entry.utf8).base64EncodedString())","messageId":"1"},"subscription":"projects/p/subscriptions/s"}"#
        #expect(try NoticeParser.gcp(object(envelope), now: now) == notice)
    }

    @Test func gcpRefusesNotPreemptedAndOtherMethods() throws {
        let notPreempted = #"{"instance_name":"a","preempted":false}"#
        #expect(throws: Problem.self) { try NoticeParser.gcp(object(notPreempted), now: now) }
        let other = try filled("gcp-audit-log.json", now: now, instances: ["x"]).replacingOccurrences(
            of: "\"methodName\": \"compute.instances.preempted\"", with: "\"methodName\": \"v1.compute.instances.delete\"")
        #expect(throws: Problem.self) { try NoticeParser.gcp(object(other), now: now) }
        #expect(throws: Problem.self) { try NoticeParser.gcp(object(#"{"zone":"z","preempted":true}"#), now: now) }
    }

    @Test func azurePreemptCoversEveryVMAndIgnoresFreeze() throws {
        let text = try filled("azure-preempt.json", now: now, instances: ["vm-a", "vm-b", "vm-c"])
        let (notices, ignored) = try NoticeParser.azure(object(text), now: now)
        #expect(notices.map(\.nodeId) == ["vm-a", "vm-b"])
        #expect(notices.allSatisfy { $0.deadline == now + 45_000 && $0.eventId == "C7061BAC-AFDC-4513-B24B-AA5F13A16123" })
        #expect(ignored == [IgnoredNotice(eventId: "F8C3A7B2-1B2C-4D5E-9F00-1234567890AB", eventType: "Freeze", resources: ["vm-c"])])
    }

    @Test func azureRefusesBadNotBeforeAndShapes() throws {
        let text = try filled("azure-preempt.json", now: now, instances: ["vm-a", "vm-b", "vm-c"])
        let badTime = text.replacingOccurrences(of: "GMT\"", with: "nonsense\"")
        let problem = try #require(throws: Problem.self) { try NoticeParser.azure(object(badTime), now: now) }
        #expect(problem.field == "Events[0].NotBefore")
        #expect(throws: Problem.self) { try NoticeParser.azure(object(#"{"DocumentIncarnation":1,"Events":{}}"#), now: now) }
        #expect(throws: Problem.self) { try NoticeParser.azure(object(#"{"Events":[]}"#), now: now) }
    }

    @Test func genericFormDefaultsAndExclusiveDeadline() throws {
        let notice = try NoticeParser.generic(
            object(#"{"node_id":"n1","kind":"termination","notice_seconds":60,"source":"agent","event_id":"e1"}"#), now: now)
        #expect(notice.deadline == now + 60_000)
        let both = #"{"node_id":"n1","kind":"termination","notice_seconds":60,"deadline":"2027-01-15T08:00:00Z"}"#
        #expect(throws: Problem.self) { try NoticeParser.generic(object(both), now: now) }
        let farAway = #"{"node_id":"n1","kind":"termination","deadline":"2099-01-01T00:00:00Z"}"#
        #expect(throws: Problem.self) { try NoticeParser.generic(object(farAway), now: now) }
        let unknownKind = #"{"node_id":"n1","kind":"maintenance"}"#
        let problem = try #require(throws: Problem.self) { try NoticeParser.generic(object(unknownKind), now: now) }
        #expect(problem.field == "kind")
    }

    @Test func rfc1123AndRfc3339Parsing() {
        #expect(TimeFormat.parseRFC1123("Mon, 19 Sep 2016 18:29:47 GMT") == 1_474_309_787_000)
        #expect(TimeFormat.parseRFC3339("2016-09-19T18:29:47Z") == 1_474_309_787_000)
        #expect(TimeFormat.parseRFC3339("2016-09-19T18:29:47.250Z") == 1_474_309_787_250)
        #expect(TimeFormat.parseRFC3339("2016-09-19 18:29:47") == nil)
        #expect(TimeFormat.rfc3339(1_474_309_787_250) == "2016-09-19T18:29:47.250Z")
    }
}
