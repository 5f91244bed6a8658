import AsyncHTTPClient
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import Synchronization

/// `spotd agent`: runs on a GPU node, watches the cloud's instance metadata service for a notice, posts each new one
/// to spotd once (the generic form, with a stable `event_id`, signed when a secret is set, retried with backoff while
/// spotd is away), and hands the checkpoint request over to the workload on loopback.
public struct AgentSettings: Sendable {
    public enum Cloud: String, Sendable, CaseIterable {
        case aws, gcp, azure
        /// Whichever metadata service answers: AWS's token call, then GCP's and Azure's instance name.
        case auto
    }

    public var server: URL
    public var token: String?
    public var webhookSecret: String?
    public var cloud: Cloud = .auto
    /// The node's id in spotd (the instance id); by default asked of the metadata service.
    public var nodeId: String?
    /// The metadata service (AWS: http://169.254.169.254).
    public var metadataURL: URL
    public var listenHost = "127.0.0.1"
    public var listenPort = 8787
    /// How often the metadata service is asked.
    public var pollInterval: Duration = .seconds(1)

    public init(server: URL, metadataURL: URL) {
        self.server = server
        self.metadataURL = metadataURL
    }
}

/// A notice the agent saw, as it posts it.
struct AgentNotice: Sendable, Equatable {
    var kind: InterruptionKind
    var deadline: Millis?
    var source: String
    var eventId: String
}

/// The calls the agent makes: to the metadata service and to spotd.
struct AgentHTTP: Sendable {
    let client: HTTPClient

    struct Answer: Sendable {
        var status: Int
        var body: String
        var etag: String? = nil
    }

    func send(_ method: HTTPMethod, _ url: String, headers: [(String, String)] = [], body: Data? = nil, timeout: Duration = .seconds(10))
        async throws -> Answer
    {
        var request = HTTPClientRequest(url: url)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(data: body)) }
        // Whole seconds and the fraction both (a sub-second timeout must not become zero).
        let nanoseconds = timeout.components.seconds * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000
        let response = try await client.execute(request, timeout: .nanoseconds(nanoseconds))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return Answer(status: Int(response.status.code), body: String(buffer: bytes), etag: response.headers.first(name: "ETag"))
    }
}

/// Where the agent learns of notices: the node's id, and the notices shown now.
protocol MetadataSource: Sendable {
    func nodeId() async throws -> String
    /// The notices the metadata service shows now; may wait (a long poll) for a change.
    func notices(nodeId: String) async throws -> [AgentNotice]
}

/// AWS IMDSv2: a session token (`PUT /latest/api/token`, kept until refused), then the spot instance action (404 until
/// a notice, then `{"action":"terminate","time":"…"}`) and the rebalance recommendation (`{"noticeTime":"…"}`).
final class AWSMetadata: MetadataSource {
    let base: String
    let http: AgentHTTP
    let tokenTTL = 21_600
    private let session = Mutex<String?>(nil)

    init(base: String, http: AgentHTTP) {
        self.base = base
        self.http = http
    }

    func token() async throws -> String {
        if let token = session.withLock({ $0 }) { return token }
        let answer = try await http.send(
            .PUT, base + "/latest/api/token", headers: [("X-aws-ec2-metadata-token-ttl-seconds", String(tokenTTL))])
        guard answer.status == 200, !answer.body.isEmpty else { throw AgentError.metadata("token: HTTP \(answer.status)") }
        session.withLock { $0 = answer.body }
        return answer.body
    }

    /// A GET with the session token; a 401 drops the token (the next call takes a new one).
    func get(_ path: String) async throws -> AgentHTTP.Answer {
        let answer = try await http.send(.GET, base + path, headers: [("X-aws-ec2-metadata-token", try await token())])
        if answer.status == 401 {
            session.withLock { $0 = nil }
            throw AgentError.unauthorized
        }
        return answer
    }

    func nodeId() async throws -> String {
        let answer = try await get("/latest/meta-data/instance-id")
        guard answer.status == 200, !answer.body.isEmpty else { throw AgentError.metadata("instance-id: HTTP \(answer.status)") }
        return answer.body
    }

    func notices(nodeId: String) async throws -> [AgentNotice] {
        var found: [AgentNotice] = []
        let action = try await get("/latest/meta-data/spot/instance-action")
        if action.status == 200, let value = try? JSONDecoder().decode(JSONValue.self, from: Data(action.body.utf8)),
            let time = value[demo: "time"]?.demoString, let at = TimeFormat.parseRFC3339(time)
        {
            let kind = value[demo: "action"]?.demoString ?? "terminate"
            if kind == "terminate" || kind == "stop" || kind == "hibernate" {
                found.append(AgentNotice(kind: .termination, deadline: at, source: "aws-imds", eventId: "\(nodeId):\(time)"))
            }
        }
        let rebalance = try await get("/latest/meta-data/events/recommendations/rebalance")
        if rebalance.status == 200, let value = try? JSONDecoder().decode(JSONValue.self, from: Data(rebalance.body.utf8)),
            let time = value[demo: "noticeTime"]?.demoString
        {
            found.append(AgentNotice(kind: .rebalance, deadline: nil, source: "aws-imds", eventId: "\(nodeId):rebalance:\(time)"))
        }
        return found
    }
}

/// GCP's metadata server (header `Metadata-Flavor: Google`): `instance/preempted` is `FALSE` until the VM is
/// preempted. The first read is plain (a preemption that came before the agent started is seen); after that the agent
/// long-polls with `wait_for_change=true` and the last `ETag`, so the server answers as soon as the value changes.
/// GCP gives about 30 s: the deadline is now + 30 s.
final class GCPMetadata: MetadataSource {
    let base: String
    let http: AgentHTTP
    let clock: any SpotClock
    private let etag = Mutex<String?>(nil)
    static let notice: Millis = 30_000

    init(base: String, http: AgentHTTP, clock: any SpotClock = SystemClock()) {
        self.base = base
        self.http = http
        self.clock = clock
    }

    func nodeId() async throws -> String {
        let answer = try await http.send(.GET, base + "/computeMetadata/v1/instance/name", headers: [("Metadata-Flavor", "Google")])
        guard answer.status == 200, !answer.body.isEmpty else { throw AgentError.metadata("instance/name: HTTP \(answer.status)") }
        return answer.body
    }

    func notices(nodeId: String) async throws -> [AgentNotice] {
        var path = "/computeMetadata/v1/instance/preempted"
        if let last = etag.withLock({ $0 }) { path += "?wait_for_change=true&timeout_sec=25&last_etag=\(SigV4.encode(last))" }
        let answer = try await http.send(.GET, base + path, headers: [("Metadata-Flavor", "Google")], timeout: .seconds(35))
        guard answer.status == 200 else { throw AgentError.metadata("instance/preempted: HTTP \(answer.status)") }
        etag.withLock { $0 = answer.etag ?? $0 ?? "none" }
        guard answer.body.trimmingCharacters(in: .whitespacesAndNewlines).uppercased() == "TRUE" else { return [] }
        return [
            AgentNotice(kind: .termination, deadline: clock.now() + Self.notice, source: "gcp-metadata", eventId: "\(nodeId):preempted")
        ]
    }
}

/// Azure Scheduled Events (header `Metadata: true`): `Preempt` and `Terminate` events naming this VM are notices
/// (deadline `NotBefore`, or now + 30 s when it is empty; event id `EventId`). An event is approved
/// (`POST StartRequests`) once spotd says every VM it names is drained, so that the VM goes without waiting for
/// `NotBefore`.
final class AzureMetadata: MetadataSource {
    let base: String
    let http: AgentHTTP
    let clock: any SpotClock
    static let path = "/metadata/scheduledevents?api-version=2020-07-01"
    /// Events posted and not yet approved, with the VMs they name; and the events approved already.
    private let awaiting = Mutex<[String: [String]]>([:])
    private let approvedIds = Mutex<Set<String>>([])

    init(base: String, http: AgentHTTP, clock: any SpotClock = SystemClock()) {
        self.base = base
        self.http = http
        self.clock = clock
    }

    func nodeId() async throws -> String {
        let answer = try await http.send(
            .GET, base + "/metadata/instance/compute/name?api-version=2021-02-01&format=text", headers: [("Metadata", "true")])
        guard answer.status == 200, !answer.body.isEmpty else { throw AgentError.metadata("compute/name: HTTP \(answer.status)") }
        return answer.body
    }

    func notices(nodeId: String) async throws -> [AgentNotice] {
        let answer = try await http.send(.GET, base + Self.path, headers: [("Metadata", "true")])
        guard answer.status == 200, let document = try? JSONDecoder().decode(JSONValue.self, from: Data(answer.body.utf8)) else {
            throw AgentError.metadata("scheduledevents: HTTP \(answer.status)")
        }
        var found: [AgentNotice] = []
        var listed: Set<String> = []
        for event in document[demo: "Events"]?.demoArray ?? [] {
            guard let type = event[demo: "EventType"]?.demoString, type == "Preempt" || type == "Terminate",
                let id = event[demo: "EventId"]?.demoString
            else { continue }
            let resources = (event[demo: "Resources"]?.demoArray ?? []).compactMap(\.demoString)
            guard resources.contains(nodeId) else { continue }
            let notBefore = event[demo: "NotBefore"]?.demoString.flatMap(TimeFormat.parseRFC1123)
            found.append(
                AgentNotice(kind: .termination, deadline: notBefore ?? clock.now() + 30_000, source: "azure-scheduled-events", eventId: id))
            listed.insert(id)
            // Only a scheduled event waits for approval (a started one needs none), and each is approved once.
            let scheduled = (event[demo: "EventStatus"]?.demoString ?? "Scheduled") == "Scheduled"
            if scheduled && !approvedIds.withLock({ $0.contains(id) }) {
                awaiting.withLock { if $0[id] == nil { $0[id] = resources } }
            }
        }
        // An event no longer listed (started, or cancelled) is no longer awaited.
        awaiting.withLock { pending in pending = pending.filter { listed.contains($0.key) } }
        return found
    }

    /// Approves each awaited event whose VMs `drained` says are all drained; returns the approved ids.
    func approve(drained: (String) async -> Bool) async throws -> [String] {
        var approved: [String] = []
        for (id, resources) in awaiting.withLock({ $0 }) {
            var all = true
            for vm in resources where !(await drained(vm)) {
                all = false
                break
            }
            guard all else { continue }
            let body = Data(JSONValue.object(["StartRequests": .array([.object(["EventId": .string(id)])])]).jsonText.utf8)
            // Each event on its own: one refused (it started meanwhile) does not hold up the others.
            let answer = try? await http.send(
                .POST, base + Self.path, headers: [("Metadata", "true"), ("Content-Type", "application/json")], body: body)
            guard let answer, (200..<300).contains(answer.status) else { continue }
            awaiting.withLock { _ = $0.removeValue(forKey: id) }
            approvedIds.withLock { _ = $0.insert(id) }
            approved.append(id)
        }
        return approved
    }
}

enum AgentError: Error, CustomStringConvertible {
    case metadata(String)
    case unauthorized
    case refused(Int, String)

    var description: String {
        switch self {
        case .metadata(let what): "metadata service: \(what)"
        case .unauthorized: "metadata service: the session token was refused"
        case .refused(let status, let body): "spotd refused the notice: HTTP \(status) \(body.prefix(200))"
        }
    }
}

/// The agent: a metadata loop, a poster, and the loopback hand-off.
public struct NodeAgent: Service {
    let settings: AgentSettings
    let http: AgentHTTP
    let logger: Logger
    /// This node's id: as given, or once the metadata service has told it.
    let node: NodeIdentity

    public init(settings: AgentSettings, logger: Logger) {
        self.settings = settings
        self.http = AgentHTTP(client: .shared)
        self.logger = logger
        self.node = NodeIdentity(settings.nodeId)
    }

    /// Runs the agent until SIGTERM or SIGINT.
    public static func runUntilStopped(settings: AgentSettings, logger: Logger) async throws {
        let group = ServiceGroup(
            services: [NodeAgent(settings: settings, logger: logger)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }

    var server: String {
        settings.server.absoluteString.hasSuffix("/") ? String(settings.server.absoluteString.dropLast()) : settings.server.absoluteString
    }

    func spotdHeaders(_ body: Data?) -> [(String, String)] {
        var headers: [(String, String)] = [("Content-Type", "application/json")]
        if let token = settings.token { headers.append(("Authorization", "Bearer \(token)")) }
        if let secret = settings.webhookSecret, let body {
            let timestamp = String(Int64(Date().timeIntervalSince1970))
            headers.append(("X-Spotd-Timestamp", timestamp))
            headers.append(("X-Spotd-Signature", "sha256=" + Signature.hex(secret: secret, timestamp: timestamp, body: body)))
        }
        return headers
    }

    /// Posts one notice until spotd records it (2xx); a refusal (4xx other than 429) is logged and dropped. Backoff
    /// 1 s doubling to 30 s while spotd is away.
    func post(_ notice: AgentNotice, nodeId: String) async {
        var fields: [String: JSONValue] = [
            "node_id": .string(nodeId), "kind": .string(notice.kind.rawValue), "source": .string(notice.source),
            "event_id": .string(notice.eventId),
        ]
        if let deadline = notice.deadline { fields["deadline"] = .string(TimeFormat.rfc3339(deadline)) }
        let body = Data(JSONValue.object(fields).jsonText.utf8)
        var failures = 0
        while !Task.isCancelled {
            do {
                let answer = try await http.send(.POST, server + "/v1/interruptions", headers: spotdHeaders(body), body: body)
                if (200..<300).contains(answer.status) {
                    logger.info("notice recorded", metadata: ["event_id": "\(notice.eventId)", "status": "\(answer.status)"])
                    return
                }
                // A refusal that a retry cannot change (the notice itself is wrong) ends it; an authentication or
                // signature failure (a token being rotated, a clock off), a timeout, 429 and 5xx are retried.
                if [400, 404, 409, 413, 422].contains(answer.status) {
                    logger.error(
                        "notice refused",
                        metadata: ["event_id": "\(notice.eventId)", "error": "\(AgentError.refused(answer.status, answer.body))"])
                    return
                }
            } catch {
                logger.warning("spotd unreachable; retrying", metadata: ["event_id": "\(notice.eventId)", "error": "\(error)"])
            }
            failures += 1
            try? await Task.sleep(for: .seconds(min(30, 1 << min(failures - 1, 5))))
        }
    }

    public func run() async throws {
        let base =
            settings.metadataURL.absoluteString.hasSuffix("/")
            ? String(settings.metadataURL.absoluteString.dropLast()) : settings.metadataURL.absoluteString
        var cloud = settings.cloud
        while cloud == .auto {
            guard !Task.isCancelled && !Task.isShuttingDownGracefully else { return }
            if let found = await detectCloud(base) {
                cloud = found
                logger.info("cloud detected", metadata: ["cloud": "\(found.rawValue)"])
            } else {
                logger.warning("no metadata service answers yet (AWS, GCP, Azure); asking again in 5 s")
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(5)) }
            }
        }
        let source: any MetadataSource =
            switch cloud {
            case .aws, .auto: AWSMetadata(base: base, http: http)
            case .gcp: GCPMetadata(base: base, http: http)
            case .azure: AzureMetadata(base: base, http: http)
            }
        let local = localServer()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await local.runService() }
            group.addTask { await watch(source) }
            try await group.next()
            group.cancelAll()
        }
    }

    /// Asks the metadata service about once per `pollInterval` (or long-polls it); posts each notice not posted before
    /// (in this run; across runs spotd's idempotency on the event id makes a second post a no-op). Never a busy loop:
    /// a failing metadata service is asked again after a growing pause (up to ten intervals).
    func watch(_ source: any MetadataSource) async {
        var nodeId = node.id
        var posted: Set<String> = []
        var failures = 0
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                if nodeId == nil {
                    nodeId = try await source.nodeId()
                    node.set(nodeId)
                }
                for notice in try await source.notices(nodeId: nodeId!) where !posted.contains(notice.eventId) {
                    logger.info("notice seen", metadata: ["event_id": "\(notice.eventId)", "kind": "\(notice.kind.rawValue)"])
                    await post(notice, nodeId: nodeId!)
                    posted.insert(notice.eventId)
                }
                if let azure = source as? AzureMetadata {
                    for id in try await azure.approve(drained: isDrained) {
                        logger.info("scheduled event approved", metadata: ["event_id": "\(id)"])
                    }
                }
                failures = 0
            } catch AgentError.unauthorized {
                failures = 0
            } catch {
                failures += 1
                if failures == 1 || failures % 60 == 0 { logger.warning("metadata service unreachable", metadata: ["error": "\(error)"]) }
            }
            try? await Task.sleep(for: settings.pollInterval * Double(min(failures + 1, 10)))
        }
    }

    /// Which cloud's metadata service answers at `base`, if any.
    func detectCloud(_ base: String) async -> AgentSettings.Cloud? {
        if let answer = try? await AWSMetadata(base: base, http: http).token(), !answer.isEmpty { return .aws }
        if (try? await GCPMetadata(base: base, http: http).nodeId()) != nil { return .gcp }
        if (try? await AzureMetadata(base: base, http: http).nodeId()) != nil { return .azure }
        return nil
    }

    /// Whether spotd says the node is drained (or already gone).
    func isDrained(_ nodeId: String) async -> Bool {
        guard let answer = try? await http.send(.GET, server + "/v1/nodes/\(SigV4.encode(nodeId))", headers: spotdHeaders(nil)),
            answer.status == 200, let node = try? JSONDecoder().decode(JSONValue.self, from: Data(answer.body.utf8))
        else { return false }
        let state = node[demo: "state"]?.demoString
        return state == "drained" || state == "terminated"
    }

    // MARK: - The loopback hand-off

    func localServer() -> some ApplicationProtocol {
        let router = Router()
        let agent = self
        router.get("/v1/local/checkpoint-request") { _, _ -> Response in try await agent.checkpointRequest() }
        router.post("/v1/local/checkpoints") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 1 << 16)
            return try await agent.forwardCheckpoint(Data(buffer: body))
        }
        return Application(
            router: router, configuration: .init(address: .hostname(settings.listenHost, port: settings.listenPort)), logger: logger)
    }

    /// Long poll (up to 30 s): the job on this node that spotd asks to checkpoint, `{job_id, attempt, deadline}`;
    /// 204 when none was asked within the wait.
    func checkpointRequest() async throws -> Response {
        let until = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < until && !Task.isCancelled {
            if let nodeId = node.id,
                let answer = try? await http.send(
                    .GET, server + "/v1/jobs?state=checkpointing&node=\(SigV4.encode(nodeId))", headers: spotdHeaders(nil)),
                answer.status == 200, let page = try? JSONDecoder().decode(JSONValue.self, from: Data(answer.body.utf8)),
                let job = page[demo: "items"]?.demoArray?.first
            {
                let out = JSONValue.object([
                    "job_id": job[demo: "id"] ?? .null, "attempt": job[demo: "attempt"] ?? .null,
                    "deadline": job[demo: "checkpoint_deadline"] ?? .null,
                ])
                return out.response()
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
        return Response(status: .noContent)
    }

    /// `{job_id, attempt, uri, step}` forwarded to spotd's `POST /v1/jobs/{id}/checkpoints`; spotd's answer is passed back.
    func forwardCheckpoint(_ body: Data) async throws -> Response {
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: body), let jobId = value[demo: "job_id"]?.demoString,
            NamePattern.identifier.matches(jobId)
        else {
            throw Problem.invalidField("job_id", "is required: the job's id")
        }
        var report: [String: JSONValue] = [:]
        for key in ["attempt", "uri", "step"] { if let field = value[demo: key] { report[key] = field } }
        let forwarded = Data(JSONValue.object(report).jsonText.utf8)
        let answer = try await http.send(.POST, server + "/v1/jobs/\(jobId)/checkpoints", headers: spotdHeaders(nil), body: forwarded)
        return Response(
            status: .init(code: answer.status), headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: answer.body)))
    }
}

/// The node's id, shared between the metadata loop (which may learn it) and the hand-off.
final class NodeIdentity: Sendable {
    private let value: Mutex<String?>

    init(_ id: String?) { value = Mutex(id) }

    var id: String? { value.withLock { $0 } }
    func set(_ id: String?) { value.withLock { $0 = id } }
}
