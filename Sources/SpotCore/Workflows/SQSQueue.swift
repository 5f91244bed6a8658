import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import ServiceLifecycle

/// The AWS queue mode of `spotd serve`: EventBridge puts EC2 spot interruption warnings and rebalance
/// recommendations on an SQS queue; every spotd replica long-polls it (SQS's JSON protocol, SigV4-signed), records
/// each notice durably exactly as `POST /v1/interruptions/aws` does, and only then deletes the message. A message
/// that is not such an event is logged and deleted. A message whose recording failed (the store is away) is left for
/// SQS to deliver again after its visibility timeout. Several replicas may poll one queue: a notice is recorded once
/// whoever receives it (idempotent by the event's id), and a message is deleted by whoever recorded it.
public struct SQSQueuePoller: Service {
    public struct Settings: Sendable {
        public var queueURL: URL
        public var region: String
        public var credentials: AWSCredentials
        /// Long poll: how long one ReceiveMessage may wait for messages (SQS allows up to 20 s).
        public var waitSeconds = 20
        /// How long a received message stays hidden from other pollers (and is delivered again if not deleted).
        public var visibilitySeconds = 60

        public init(queueURL: URL, region: String, credentials: AWSCredentials) {
            self.queueURL = queueURL
            self.region = region
            self.credentials = credentials
        }

        /// The region of a queue URL: `https://sqs.<region>.amazonaws.com/<account>/<queue>`.
        public static func region(of url: URL) -> String? {
            guard let host = url.host, host.hasPrefix("sqs."), host.hasSuffix(".amazonaws.com") else { return nil }
            let middle = host.dropFirst(4).dropLast(".amazonaws.com".count)
            return middle.isEmpty ? nil : String(middle)
        }
    }

    let settings: Settings
    let store: any ResourceStore
    let clock: any SpotClock
    let signal: WorkerSignal
    let metrics: SpotMetrics
    let logger: Logger
    var client: HTTPClient = .shared

    init(
        settings: Settings, store: any ResourceStore, clock: any SpotClock, signal: WorkerSignal, metrics: SpotMetrics, logger: Logger
    ) {
        self.settings = settings
        self.store = store
        self.clock = clock
        self.signal = signal
        self.metrics = metrics
        self.logger = logger
    }

    struct Message: Sendable {
        var id: String
        var receiptHandle: String
        var body: String
    }

    public func run() async throws {
        logger.info("polling the SQS queue", metadata: ["queue": "\(settings.queueURL.absoluteString)"])
        var failures = 0
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                let messages = try await cancelWhenGracefulShutdown { try await receive() }
                failures = 0
                var done: [Message] = []
                do {
                    for message in messages where try await handle(message) { done.append(message) }
                } catch {
                    // The ones recorded before the failure are deleted; the rest come back after their visibility timeout.
                    if !done.isEmpty { try? await delete(done) }
                    throw error
                }
                if !done.isEmpty { try await delete(done) }
            } catch is CancellationError {
                break
            } catch {
                // SQS (or the store) is away: back off, 1 s doubling to 30 s; never a busy loop.
                failures += 1
                let pause = min(30, 1 << min(failures - 1, 5))
                logger.warning("SQS poll failed", metadata: ["error": "\(error)", "retry_in_seconds": "\(pause)"])
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(pause)) }
            }
        }
        logger.info("stopped polling the SQS queue")
    }

    /// Records one message's notice; true when the message is to be deleted (recorded, or not a notice at all).
    func handle(_ message: Message) async throws -> Bool {
        let notice: Notice
        do {
            let value = try JSONDecoder().decode(JSONValue.self, from: Data(message.body.utf8))
            notice = try NoticeParser.aws(try JSONObject(value), now: clock.now())
        } catch {
            logger.warning(
                "SQS message is not an EC2 interruption event: deleted",
                metadata: ["message_id": "\(message.id)", "error": "\(error)", "body": "\(message.body.prefix(200))"])
            metrics.sqsMessage("unparseable")
            return true
        }
        let outcome = try await store.recordNotices([notice], ignored: [], replayKey: nil, actor: "sqs")
        if outcome.results.contains(where: { $0.1 }) {
            metrics.notice(source: notice.source, kind: notice.kind.rawValue)
            signal.poke()
            metrics.sqsMessage("recorded")
        } else {
            metrics.sqsMessage("duplicate")
        }
        return true
    }

    // MARK: - SQS, JSON protocol

    func receive() async throws -> [Message] {
        let answer = try await call(
            "ReceiveMessage",
            [
                "QueueUrl": .string(settings.queueURL.absoluteString), "MaxNumberOfMessages": .int(10),
                "WaitTimeSeconds": .int(Int64(settings.waitSeconds)), "VisibilityTimeout": .int(Int64(settings.visibilitySeconds)),
            ], timeout: .seconds(Int64(settings.waitSeconds) + 10))
        guard case .object(let fields) = answer, case .array(let items)? = fields["Messages"] else { return [] }
        return items.compactMap { item in
            guard case .object(let message) = item, case .string(let id)? = message["MessageId"],
                case .string(let handle)? = message["ReceiptHandle"], case .string(let body)? = message["Body"]
            else { return nil }
            return Message(id: id, receiptHandle: handle, body: body)
        }
    }

    func delete(_ messages: [Message]) async throws {
        let entries = messages.enumerated().map { index, message in
            JSONValue.object(["Id": .string("m\(index)"), "ReceiptHandle": .string(message.receiptHandle)])
        }
        let answer = try await call(
            "DeleteMessageBatch", ["QueueUrl": .string(settings.queueURL.absoluteString), "Entries": .array(entries)],
            timeout: .seconds(10))
        if case .object(let fields) = answer, case .array(let failed)? = fields["Failed"], !failed.isEmpty {
            // Delivered again later; recording it again changes nothing.
            logger.warning("SQS did not delete some messages", metadata: ["failed": "\(failed.count)"])
        }
    }

    struct SQSError: Error, CustomStringConvertible {
        var status: Int
        var body: String
        var description: String { "SQS answered HTTP \(status): \(body.prefix(300))" }
    }

    /// One signed call: POST to the queue's endpoint with `X-Amz-Target: AmazonSQS.<action>`.
    func call(_ action: String, _ body: [String: JSONValue], timeout: TimeAmount) async throws -> JSONValue {
        let data = Data(JSONValue.object(body).jsonText.utf8)
        var components = URLComponents(url: settings.queueURL, resolvingAgainstBaseURL: false)
        components?.path = "/"
        components?.query = nil
        guard let endpoint = components?.url, let host = settings.queueURL.host else { throw SQSError(status: 0, body: "bad queue URL") }
        // The Host the HTTP client sends: without the port when it is the scheme's default.
        let defaultPort = settings.queueURL.scheme == "https" ? 443 : 80
        let hostHeader = settings.queueURL.port.flatMap { $0 == defaultPort ? nil : "\(host):\($0)" } ?? host
        var headers: [(String, String)] = [
            ("Host", hostHeader), ("Content-Type", "application/x-amz-json-1.0"), ("X-Amz-Target", "AmazonSQS.\(action)"),
        ]
        headers += SigV4(region: settings.region, service: "sqs").sign(
            .init(method: "POST", path: "/", headers: headers, body: data), credentials: settings.credentials, at: clock.now())
        var request = HTTPClientRequest(url: endpoint.absoluteString)
        request.method = .POST
        for (name, value) in headers where name != "Host" { request.headers.add(name: name, value: value) }
        request.body = .bytes(ByteBuffer(data: data))
        let response = try await client.execute(request, timeout: timeout)
        let bytes = try await response.body.collect(upTo: 4 << 20)
        let text = String(buffer: bytes)
        guard (200..<300).contains(Int(response.status.code)) else { throw SQSError(status: Int(response.status.code), body: text) }
        return (try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))) ?? .null
    }
}
