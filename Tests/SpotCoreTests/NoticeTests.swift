import Foundation
import Testing

@testable import SpotCore

/// The test clock's start (`ManualClock()`), written by hand: fixtures must not be made by the formatter under test.
let startMillis: Millis = 1_800_000_000_000
let startRFC3339 = "2027-01-15T08:00:00.000Z"
/// 45 s after the start, as Azure writes `NotBefore` (2027-01-15 is a Friday).
let startPlus45RFC1123 = "Fri, 15 Jan 2027 08:00:45 GMT"

struct UnknownFixtureTime: Error {}

/// Fills a fixture's placeholders with hand-written times of the test clock's start and with instance names.
func filled(_ name: String, now: Millis, instances: [String]) throws -> String {
    guard now == startMillis else { throw UnknownFixtureTime() }
    var text = try fixture(name)
    text = text.replacingOccurrences(of: "{{TIME}}", with: startRFC3339)
    text = text.replacingOccurrences(of: "{{RFC1123}}", with: startPlus45RFC1123)
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
        let badTime = text.replacingOccurrences(of: startRFC3339, with: "yesterday")
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

    @Test func gcpAuditLogResourceNameMustNameAnInstance() throws {
        for name in ["projects/p/zones/z/instances/", "x/instances/gpu-1", "projects//zones/z/instances/gpu-1", "gpu-1"] {
            let entry = #"{"protoPayload":{"methodName":"compute.instances.preempted","resourceName":"\#(name)"}}"#
            let problem = try #require(throws: Problem.self) { try NoticeParser.gcp(object(entry), now: now) }
            #expect(problem.field == "protoPayload.resourceName", "\(name)")
        }
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

    /// Vectors written by hand (values from Python's `calendar.timegm`), not made by the code under test.
    @Test(arguments: [
        ("2016-09-19T18:29:47Z", 1_474_309_787_000 as Millis?),
        ("2016-09-19T18:29:47.250Z", 1_474_309_787_250),
        // Fractions are integer milliseconds: .035 is 35 ms, not 34 (a Double sum gave 34.999...).
        ("2027-01-15T08:00:51.035Z", 1_800_000_051_035),
        ("2027-01-15T08:00:51.0359Z", 1_800_000_051_035),
        ("2027-01-15T08:00:51.9Z", 1_800_000_051_900),
        ("2027-01-15T10:00:51.035+02:00", 1_800_000_051_035),
        ("2027-01-15t08:00:51.035z", 1_800_000_051_035),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000),
        ("2000-02-29T12:34:56Z", 951_827_696_000),
        ("2016-12-31T23:59:60Z", 1_483_228_799_999),
        ("0001-01-01T00:00:00Z", -62_135_596_800_000),
        ("9999-12-31T23:59:59.999Z", 253_402_300_799_999),
        ("2026-02-29T00:00:00Z", nil), ("2100-02-29T00:00:00Z", nil), ("2026-04-31T00:00:00Z", nil),
        ("2016-09-19 18:29:47", nil), ("2016-09-19T18:29:47.Z", nil), ("2016-09-19T24:00:00Z", nil),
        ("2016-09-19T18:29:47+2:00", nil), ("+016-09-19T18:29:47Z", nil), ("2016-9-19T18:29:47Z", nil),
        ("2016-09-19T18:29:47Z ", nil), ("0000-01-01T00:00:00Z", nil),
    ])
    func rfc3339Vectors(text: String, expected: Millis?) {
        #expect(TimeFormat.parseRFC3339(text) == expected, "\(text)")
    }

    @Test(arguments: [
        ("Mon, 19 Sep 2016 18:29:47 GMT", 1_474_309_787_000 as Millis?),
        ("Mon, 30 Nov 2026 10:00:00 GMT", 1_796_032_800_000),
        ("Tue, 29 Feb 2000 12:34:56 GMT", 951_827_696_000),
        ("Mon, 30 Nov 2026 -1:-1:-1 GMT", nil), ("Mon, 31 Feb 2026 10:00:00 GMT", nil), ("Tue, 30 Nov 2026 10:00:00 GMT", nil),
        ("Mon, 30 Nov 2026 10:00:00 UTC", nil), ("Mon, 30 Nov 2026 10:00:00", nil), ("Mon, 30 Nov 26 10:00:00 GMT", nil),
        ("Mon,  3 Nov 2026 10:00:00 GMT", nil), ("Mon, 30 nov 2026 10:00:00 GMT", nil), ("Mon, 30 Nov 2026 24:00:00 GMT", nil),
        ("Mon, 30 Nov 2026 10:00:00 GMT ", nil), ("Mon, 30 Nov +026 10:00:00 GMT", nil),
    ])
    func rfc1123Vectors(text: String, expected: Millis?) {
        #expect(TimeFormat.parseRFC1123(text) == expected, "\(text)")
    }

    @Test func rfc1123MalformedAndImpossibleAreTold() {
        #expect(TimeFormat.readRFC1123("Mon, 30 Nov 2026 10:00:00 GMT") == .time(1_796_032_800_000))
        #expect(TimeFormat.readRFC1123("Mon, 31 Feb 2026 10:00:00 GMT") == .malformed)
        #expect(TimeFormat.readRFC1123("Mon, 31 Nov 2026 10:00:00 GMT") == .malformed)
        #expect(TimeFormat.readRFC1123("Mon, 30 Nov 2026 -1:-1:-1 GMT") == .malformed)
        #expect(TimeFormat.readRFC1123("Sun, 29 Feb 2026 10:00:00 GMT") == .impossible)
        #expect(TimeFormat.readRFC1123("Tue, 30 Nov 2026 10:00:00 GMT") == .impossible)
        #expect(TimeFormat.readRFC1123("Tue, 29 Feb 2000 12:34:56 GMT") == .time(951_827_696_000))
    }

    @Test func rfc3339FormattingIsExact() {
        #expect(TimeFormat.rfc3339(1_474_309_787_250) == "2016-09-19T18:29:47.250Z")
        #expect(TimeFormat.rfc3339(1_800_000_051_035) == "2027-01-15T08:00:51.035Z")
        #expect(TimeFormat.rfc3339(-62_135_596_800_000) == "0001-01-01T00:00:00.000Z")
        #expect(TimeFormat.rfc3339(-1) == "1969-12-31T23:59:59.999Z")
    }

    @Test func gcpPreemptedMustBeABooleanOrTrueFalse() throws {
        for value in [#""yes""#, "1", #""""#, "[]", #""True""#] {
            let problem = try #require(throws: Problem.self) {
                try NoticeParser.gcp(object(#"{"instance_name":"gpu-1","preempted":\#(value)}"#), now: now)
            }
            #expect(problem.status == .badRequest, "preempted \(value): \(problem.detail)")
        }
        let no = try #require(throws: Problem.self) {
            try NoticeParser.gcp(object(#"{"instance_name":"gpu-1","preempted":"FALSE"}"#), now: now)
        }
        #expect(no.status == .unprocessableContent)
        #expect(try NoticeParser.gcp(object(#"{"instance_name":"gpu-1","preempted":"TRUE"}"#), now: now).kind == .termination)
    }

    @Test func azureDocumentOfMoreThanAThousandRecordsIsRefusedWhole() throws {
        func document(events: Int, vms: Int, type: String = "Preempt") -> String {
            let list = (0..<events).map { event in
                let resources = (0..<vms).map { #""vm-\#(event)-\#($0)""# }.joined(separator: ",")
                return #"{"EventId":"e\#(event)","EventType":"\#(type)","Resources":[\#(resources)],"NotBefore":""}"#
            }
            return #"{"DocumentIncarnation":1,"Events":[\#(list.joined(separator: ","))]}"#
        }
        #expect(try NoticeParser.azure(object(document(events: 10, vms: 100)), now: now).notices.count == 1000)
        for text in [
            document(events: 100, vms: 1000), document(events: 11, vms: 100), document(events: 2, vms: 1000, type: "Freeze"),
            document(events: 1, vms: 1001),
        ] {
            let problem = try #require(throws: Problem.self) { try NoticeParser.azure(object(text), now: now) }
            #expect(problem.status == .contentTooLarge)
        }
    }
}
