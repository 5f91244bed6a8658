import Foundation
import Logging
import Testing

@testable import SpotCore

/// moto's server (PyPI `moto[server]`), started on a free port for the test; `.ci/run` installs it.
final class MotoServer {
    let port: Int
    private let process: Process
    var url: String { "http://127.0.0.1:\(port)" }

    /// Starts `moto_server`, or returns nil when it is not installed (and `SPOTD_REQUIRE_MOTO` is not set).
    static func start() async throws -> MotoServer? {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/moto_server" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let path else {
            if ProcessInfo.processInfo.environment["SPOTD_REQUIRE_MOTO"] != nil { Issue.record("moto_server is not installed") }
            print("moto_server is not installed: skipping (pip install 'moto[server]'; .ci/run does)")
            return nil
        }
        let server = MotoServer(path: path, port: freePort())
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if let (status, _) = try? await DemoClient(base: server.url).call("GET", "/moto-api/"), status > 0 { return server }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("moto_server did not come up")
        return nil
    }

    private init(path: String, port: Int) {
        self.port = port
        process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = ["-H", "127.0.0.1", "-p", String(port)]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try? process.run()
    }

    deinit { process.terminate() }
}

@Suite("The AWS queue mode against moto's SQS", .serialized)
struct SQSTests {
    static let credentials = AWSCredentials(accessKeyId: "testing", secretAccessKey: "testing")

    /// An SQS client for the test's own calls (the poller's signed JSON-protocol call).
    func sqs(_ moto: MotoServer, queue: String = "/") -> SQSQueuePoller {
        let env = try! TestEnv()
        return SQSQueuePoller(
            settings: .init(queueURL: URL(string: moto.url + queue)!, region: "us-east-1", credentials: Self.credentials), store: env.store,
            clock: SystemClock(), signal: WorkerSignal(), metrics: SpotMetrics(), logger: Logger(label: "test"))
    }

    static func event(_ node: String, id: String) -> String {
        """
        {"version":"0","id":"\(id)","detail-type":"EC2 Spot Instance Interruption Warning","source":"aws.ec2",\
        "account":"123456789012","time":"\(TimeFormat.rfc3339(SystemClock().now()))","region":"us-east-1",\
        "resources":["arn:aws:ec2:us-east-1a:instance/\(node)"],"detail":{"instance-id":"\(node)","instance-action":"terminate"}}
        """
    }

    /// 200 EventBridge messages (and 5 duplicates, and one that is no event at all) on a queue, two spotd replicas on
    /// one store polling it: every notice is recorded once, every node cordoned, the queue ends empty, and the
    /// malformed message is deleted and logged.
    @Test func twoReplicasRecordEveryNoticeOnceAndEmptyTheQueue() async throws {
        guard let moto = try await MotoServer.start() else { return }
        let created = try await sqs(moto).call("CreateQueue", ["QueueName": .string("spotd-notices")], timeout: .seconds(10))
        let queueURL = try #require(created["QueueUrl"]?.string)
        let client = sqs(moto, queue: String(queueURL.dropFirst(moto.url.count)))
        var bodies = (0..<200).map { Self.event("i-\(String(format: "%05d", $0))", id: "evt-\($0)") }
        bodies += (0..<5).map { Self.event("i-\(String(format: "%05d", $0))", id: "evt-\($0)") }
        bodies.append(#"{"hello":"not an event"}"#)
        for start in stride(from: 0, to: bodies.count, by: 10) {
            let entries = bodies[start..<min(start + 10, bodies.count)].enumerated().map { index, body in
                JSONValue.object(["Id": .string("e\(index)"), "MessageBody": .string(body)])
            }
            _ = try await client.call(
                "SendMessageBatch", ["QueueUrl": .string(queueURL), "Entries": .array(entries)], timeout: .seconds(10))
        }

        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-sqs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let environment = [
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
            "SPOTD_AWS_SQS_QUEUE_URL": queueURL, "LOG_LEVEL": "info",
        ]
        let first = SpotdProcess(directory: directory, port: freePort(), environment: environment)
        // The nodes exist before any replica polls.
        let seeding = SpotdProcess(directory: directory, port: freePort())
        try await seeding.start()
        try await seeding.request("POST", "/v1/pools", Seed.pool("spot-a", "spot"))
        for index in 0..<200 {
            try await seeding.request("POST", "/v1/nodes", Seed.node("i-\(String(format: "%05d", index))", pool: "spot-a"))
        }
        seeding.kill(SIGTERM)
        let second = SpotdProcess(directory: directory, port: freePort(), environment: environment)
        try await first.start()
        try await second.start()

        func interruptions() async throws -> [JSONValue] {
            try await first.request("GET", "/v1/interruptions?limit=1000").1["items"]?.array ?? []
        }
        #expect(try await first.eventually(60) { try await interruptions().count >= 200 })
        func remaining() async throws -> Int {
            let attributes = try await client.call(
                "GetQueueAttributes",
                [
                    "QueueUrl": .string(queueURL),
                    "AttributeNames": .array([.string("ApproximateNumberOfMessages"), .string("ApproximateNumberOfMessagesNotVisible")]),
                ], timeout: .seconds(10))
            let values = attributes["Attributes"]
            return (Int(values?["ApproximateNumberOfMessages"]?.string ?? "") ?? -1)
                + (Int(values?["ApproximateNumberOfMessagesNotVisible"]?.string ?? "") ?? -1)
        }
        #expect(try await first.eventually(30) { try await remaining() == 0 }, "the queue is empty at the end")
        let recorded = try await interruptions()
        #expect(recorded.count == 200)
        #expect(Set(recorded.compactMap { $0["node_id"]?.string }).count == 200)
        let cordoned = try await first.request("GET", "/v1/nodes?state=cordoned&limit=1000").1["items"]?.array.count ?? 0
        let draining = try await first.request("GET", "/v1/nodes?state=draining&limit=1000").1["items"]?.array.count ?? 0
        let drained = try await first.request("GET", "/v1/nodes?state=drained&limit=1000").1["items"]?.array.count ?? 0
        #expect(cordoned + draining + drained == 200, "every node taken out of scheduling")
        let events = try await first.request("GET", "/v1/events?type=interruption.received&limit=1000").1["items"]?.array ?? []
        #expect(events.count == 200 && events.allSatisfy { $0["actor"] == .string("sqs") })
        first.kill(SIGTERM)
        second.kill(SIGTERM)
        let logs = [first.logPath, second.logPath].compactMap { try? String(contentsOfFile: $0, encoding: .utf8) }.joined()
        #expect(logs.contains("SQS message is not an EC2 interruption event: deleted"), "the malformed message is logged")
        for log in [first.logPath, second.logPath] {
            #expect((try? String(contentsOfFile: log, encoding: .utf8))?.contains("polling the SQS queue") == true, "both replicas poll")
        }
    }
}
