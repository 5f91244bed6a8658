import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Synchronization
import Testing

@testable import SpotCore

/// A fake AWS instance metadata service, written from AWS's IMDSv2 documentation: a session token is required
/// (`PUT /latest/api/token` with a TTL header; any other call without the token is 401); `spot/instance-action` is
/// 404 until a notice, then `{"action":"terminate","time":"…"}`.
final class FakeIMDS: Sendable {
    let instanceId: String
    private let notice = Mutex<String?>(nil)
    private let unauthorized = Mutex(0)
    private let polls = Mutex(0)
    var pollCount: Int { polls.withLock { $0 } }
    /// While set, the token call fails (500), as a metadata service that is down.
    let failing = Mutex(false)
    private let tokenCalls = Mutex(0)
    var tokenCallCount: Int { tokenCalls.withLock { $0 } }
    static let token = "AQAEAFakeSessionToken=="

    init(instanceId: String) { self.instanceId = instanceId }

    func announce(terminateAt time: Millis) { notice.withLock { $0 = TimeFormat.rfc3339(time) } }
    var unauthorizedCalls: Int { unauthorized.withLock { $0 } }

    var router: Router<BasicRequestContext> {
        let router = Router()
        router.put("/latest/api/token") { request, _ -> Response in
            self.tokenCalls.withLock { $0 += 1 }
            if self.failing.withLock({ $0 }) { return Response(status: .internalServerError) }
            guard request.headers[HTTPField.Name("X-aws-ec2-metadata-token-ttl-seconds")!] != nil else {
                return Response(status: .badRequest)
            }
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: FakeIMDS.token)))
        }
        router.get("/latest/meta-data/**") { request, _ -> Response in
            guard request.headers[HTTPField.Name("X-aws-ec2-metadata-token")!] == FakeIMDS.token else {
                self.unauthorized.withLock { $0 += 1 }
                return Response(status: .unauthorized)
            }
            switch request.uri.path {
            case "/latest/meta-data/instance-id":
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: self.instanceId)))
            case "/latest/meta-data/spot/instance-action":
                self.polls.withLock { $0 += 1 }
                guard let time = self.notice.withLock({ $0 }) else { return Response(status: .notFound) }
                return Response(
                    status: .ok, body: .init(byteBuffer: ByteBuffer(string: #"{"action":"terminate","time":"\#(time)"}"#)))
            default:
                return Response(status: .notFound)
            }
        }
        return router
    }
}

/// A fake GCP metadata server, from Google's documentation: `Metadata-Flavor: Google` is required (else 403);
/// `instance/preempted` is `FALSE` until preemption; `wait_for_change=true` with the last `ETag` holds the request until
/// the value changes (or `timeout_sec`).
final class FakeGCPMetadata: Sendable {
    let name: String
    private let preempted = Mutex(false)
    private let holds = Mutex(0)

    init(name: String) { self.name = name }

    func preempt() { preempted.withLock { $0 = true } }
    var heldRequests: Int { holds.withLock { $0 } }

    var router: Router<BasicRequestContext> {
        let router = Router()
        router.get("/computeMetadata/v1/instance/**") { request, _ -> Response in
            guard request.headers[HTTPField.Name("Metadata-Flavor")!] == "Google" else { return Response(status: .forbidden) }
            switch request.uri.path {
            case "/computeMetadata/v1/instance/name":
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: self.name)))
            case "/computeMetadata/v1/instance/preempted":
                let etag = { self.preempted.withLock { $0 } ? "etag-true" : "etag-false" }
                let query = request.uri.queryParameters
                if query["wait_for_change"] == "true", let last = query["last_etag"], String(last) == etag() {
                    self.holds.withLock { $0 += 1 }
                    // At most 3 s here (GCP: up to timeout_sec), so that the test's server stops soon after the agent.
                    let until = Date().addingTimeInterval(min(3, Double(query["timeout_sec"].flatMap { Int(String($0)) } ?? 30)))
                    while String(last) == etag() && Date() < until { try await Task.sleep(for: .milliseconds(50)) }
                }
                let value = self.preempted.withLock { $0 } ? "TRUE" : "FALSE"
                return Response(status: .ok, headers: [HTTPField.Name("ETag")!: etag()], body: .init(byteBuffer: ByteBuffer(string: value)))
            default:
                return Response(status: .notFound)
            }
        }
        return router
    }
}

/// `spotd agent` as a process.
final class AgentProcess {
    /// Resident memory, from /proc (KiB).
    var residentKiB: Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8) else { return nil }
        return status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }.flatMap {
            Int($0.split(separator: " ").dropFirst().first ?? "")
        }
    }

    let process = Process()
    let logPath: String

    init(server: Int, metadata: Int, listen: Int, directory: URL, extra: [String] = []) throws {
        logPath = directory.appendingPathComponent("agent-\(listen).log").path
        process.executableURL = SpotdProcess.binary
        process.arguments =
            [
                "agent", "--server", "http://127.0.0.1:\(server)", "--metadata-url", "http://127.0.0.1:\(metadata)", "--listen",
                "127.0.0.1:\(listen)", "--poll-seconds", "0.1",
            ] + extra
        FileManager.default.createFile(atPath: logPath, contents: nil)
        process.standardOutput = FileHandle(forWritingAtPath: logPath)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        try process.run()
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
    }
}

/// The workload's side of the hand-off: it long-polls the agent for its checkpoint request, reports its checkpoint
/// through the agent, and the job is requeued from it.
func checkpointThroughTheAgent(_ server: SpotdProcess, listen: Int, job: String, sourceLocation: SourceLocation = #_sourceLocation)
    async throws
{
    let local = DemoClient(base: "http://127.0.0.1:\(listen)")
    let (status, request) = try await local.call("GET", "/v1/local/checkpoint-request")
    #expect(status == 200, sourceLocation: sourceLocation)
    #expect(request["job_id"] == .string(job), sourceLocation: sourceLocation)
    let attempt = try #require(request["attempt"]?.int, sourceLocation: sourceLocation)
    let (reported, _) = try await local.call(
        "POST", "/v1/local/checkpoints", #"{"job_id":"\#(job)","attempt":\#(attempt),"uri":"s3://ckpt/\#(job)/900","step":900}"#)
    #expect((200..<300).contains(reported), sourceLocation: sourceLocation)
    #expect(
        try await server.eventually { try await server.request("GET", "/v1/jobs/\(job)").1["requeue_count"] == .int(1) },
        sourceLocation: sourceLocation)
    #expect(
        try await server.request("GET", "/v1/jobs/\(job)").1["resume_from"]?["uri"] == .string("s3://ckpt/\(job)/900"),
        sourceLocation: sourceLocation)
}

@Suite("spotd agent against fake metadata services", .serialized)
struct AgentTests {
    func directory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-agent-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// AWS end to end: fake IMDSv2 → `spotd agent` → a real `spotd serve` → the node cordoned → the job's checkpoint
    /// request through the agent's loopback → the checkpoint report through the agent → the job requeued from it.
    @Test func awsNoticeToRequeueThroughTheAgent() async throws {
        let imds = FakeIMDS(instanceId: "i-0agent000000001")
        try await withLoopbackProvisioner(imds.router) { metadataPort in
            let folder = try directory()
            // Notices must be signed here: the agent signs with the same secret.
            let server = SpotdProcess(
                directory: folder, port: freePort(), extra: ["--drain-margin-seconds", "1", "--webhook-secret", "agent-secret"])
            try await server.start()
            try await server.request("POST", "/v1/pools", Seed.pool("spot-a", "spot"))
            try await server.request("POST", "/v1/nodes", Seed.node(imds.instanceId, pool: "spot-a"))
            try await server.request("POST", "/v1/jobs", Seed.job("train", tier: "best_effort", gpus: 8, checkpointable: true))
            #expect(try await server.eventually { try await server.request("GET", "/v1/jobs/train").1["state"] == .string("running") })
            let listen = freePort()
            // No --cloud: the agent finds AWS's metadata service by itself (auto).
            let agent = try AgentProcess(
                server: server.port, metadata: metadataPort, listen: listen, directory: folder, extra: ["--webhook-secret", "agent-secret"])
            defer { agent.stop() }
            let local = DemoClient(base: "http://127.0.0.1:\(listen)")
            #expect(try await server.eventually { (try? await local.call("GET", "/nope").0) != nil }, "the agent listens on loopback")

            let deadline = SystemClock().now() + 120_000
            imds.announce(terminateAt: deadline)
            #expect(
                try await server.eventually {
                    try await server.request("GET", "/v1/nodes/\(imds.instanceId)").1["state"] != .string("ready")
                })
            let interruptions = try await server.request("GET", "/v1/interruptions").1["items"]?.array ?? []
            #expect(interruptions.count == 1)
            #expect(interruptions.first?["source"] == .string("aws-imds"))
            #expect(interruptions.first?["event_id"] == .string("\(imds.instanceId):\(TimeFormat.rfc3339(deadline))"))

            // The workload long-polls the agent for its checkpoint request, then reports its checkpoint through it.
            let (status, request) = try await local.call("GET", "/v1/local/checkpoint-request")
            #expect(status == 200)
            #expect(request["job_id"] == .string("train"))
            let attempt = try #require(request["attempt"]?.int)
            let (reported, _) = try await local.call(
                "POST", "/v1/local/checkpoints", #"{"job_id":"train","attempt":\#(attempt),"uri":"s3://ckpt/train/900","step":900}"#)
            #expect((200..<300).contains(reported))
            #expect(try await server.eventually { try await server.request("GET", "/v1/jobs/train").1["requeue_count"] == .int(1) })
            let job = try await server.request("GET", "/v1/jobs/train").1
            #expect(job["resume_from"]?["uri"] == .string("s3://ckpt/train/900"))
            #expect(imds.unauthorizedCalls == 0, "every metadata call carried the session token")
            server.kill(SIGTERM)
        }
    }

    /// Memory stays flat over 100,000 polls of the metadata service (a day at one a second; here one a millisecond):
    /// resident memory after 100,000 polls is within 4 MiB of what it was after 10,000. It takes a few minutes, so it
    /// runs when `SPOTD_SLOW_TESTS` is set (`.ci/run` runs it as a step of its own).
    @Test(.enabled(if: ProcessInfo.processInfo.environment["SPOTD_SLOW_TESTS"] != nil))
    func memoryStaysFlatOverAHundredThousandPolls() async throws {
        let imds = FakeIMDS(instanceId: "i-0agent000000009")
        try await withLoopbackProvisioner(imds.router) { metadataPort in
            let folder = try directory()
            let agent = try AgentProcess(
                server: freePort(), metadata: metadataPort, listen: freePort(), directory: folder, extra: ["--poll-seconds", "0.001"])
            defer { agent.stop() }
            let started = Date()
            while imds.pollCount < 10_000 && Date().timeIntervalSince(started) < 120 { try await Task.sleep(for: .milliseconds(100)) }
            let early = try #require(agent.residentKiB)
            while imds.pollCount < 100_000 && Date().timeIntervalSince(started) < 300 { try await Task.sleep(for: .milliseconds(200)) }
            #expect(imds.pollCount >= 100_000, "only \(imds.pollCount) polls")
            let late = try #require(agent.residentKiB)
            print(
                "[memoryStaysFlat] \(imds.pollCount) polls in \(Int(Date().timeIntervalSince(started))) s; RSS \(early) KiB -> \(late) KiB")
            #expect(late - early < 4096, "resident memory grew from \(early) KiB to \(late) KiB")
        }
    }

    /// A metadata service that fails: the agent asks again after a growing pause (up to ten intervals), never in a
    /// busy loop.
    @Test func aFailingMetadataServiceIsNotHammered() async throws {
        let imds = FakeIMDS(instanceId: "i-0agent000000003")
        imds.failing.withLock { $0 = true }
        try await withLoopbackProvisioner(imds.router) { metadataPort in
            let agent = try AgentProcess(
                server: freePort(), metadata: metadataPort, listen: freePort(), directory: try directory(),
                extra: ["--cloud", "aws", "--poll-seconds", "0.1"])
            defer { agent.stop() }
            #expect(try await pollUntil(10) { imds.tokenCallCount >= 1 })
            try await Task.sleep(for: .seconds(4))
            // 0.1 s at first, then 0.2, 0.3, ... 1 s between tries: about a dozen in 4 s; a busy loop would make thousands.
            #expect(imds.tokenCallCount <= 20, "\(imds.tokenCallCount) calls in 4 s")
            #expect(imds.tokenCallCount >= 3, "it keeps asking")
        }
    }

    /// spotd is down for 10 s while the notice appears: the agent posts it once spotd is back, exactly once; a
    /// restarted agent posts it again, and spotd records nothing new (the event id is stable).
    @Test func aNoticeWhileSpotdIsDownIsPostedOnceItIsBack() async throws {
        let imds = FakeIMDS(instanceId: "i-0agent000000002")
        try await withLoopbackProvisioner(imds.router) { metadataPort in
            let folder = try directory()
            let server = SpotdProcess(directory: folder, port: freePort())
            try await server.start()
            try await server.request("POST", "/v1/pools", Seed.pool("spot-a", "spot"))
            try await server.request("POST", "/v1/nodes", Seed.node(imds.instanceId, pool: "spot-a"))
            server.kill(SIGTERM)
            imds.announce(terminateAt: SystemClock().now() + 120_000)
            var agent = try AgentProcess(server: server.port, metadata: metadataPort, listen: freePort(), directory: folder)
            try await Task.sleep(for: .seconds(10))
            try await server.start()
            func received() async throws -> Int {
                try await server.request("GET", "/v1/events?type=interruption.received").1["items"]?.array.count ?? -1
            }
            #expect(try await server.eventually(40) { try await received() == 1 })
            agent.stop()
            // The agent itself posted it once (spotd would also drop a second post of the same event).
            let firstLog = (try? String(contentsOfFile: agent.logPath, encoding: .utf8)) ?? ""
            #expect(firstLog.components(separatedBy: "notice recorded").count - 1 == 1, "\(firstLog.suffix(800))")
            agent = try AgentProcess(server: server.port, metadata: metadataPort, listen: freePort(), directory: folder)
            try await Task.sleep(for: .seconds(2))
            agent.stop()
            #expect(try await received() == 1)
            #expect(try await server.request("GET", "/v1/interruptions").1["items"]?.array.count == 1)
            let log = (try? String(contentsOfFile: agent.logPath, encoding: .utf8)) ?? ""
            #expect(log.contains("notice recorded"), "\(log.suffix(500))")
            server.kill(SIGTERM)
        }
    }

    /// GCP end to end: the agent long-polls `preempted` with `wait_for_change`; when it turns `TRUE` the node is
    /// cordoned at once with a 30 s deadline, the notice posted once.
    /// With auth on, an `agent` token is all the agent needs: its notice cordons the node, and the checkpoint
    /// hand-off (reading the node's jobs, reporting the checkpoint) goes through; the same token may not read tokens
    /// or the event log.
    @Test func anAgentTokenIsEnoughForTheAgent() async throws {
        let metadata = FakeGCPMetadata(name: "gpu-node-9")
        try await withLoopbackProvisioner(metadata.router) { metadataPort in
            let folder = try directory()
            let admin = "admin-token-for-the-agent-role-test"
            let server = SpotdProcess(directory: folder, port: freePort(), extra: ["--admin-token", admin])
            server.token = admin
            try await server.start()
            try await server.request("POST", "/v1/pools", Seed.pool("spot-a", "spot"))
            try await server.request("POST", "/v1/nodes", Seed.node(metadata.name, pool: "spot-a"))
            try await server.request("POST", "/v1/jobs", Seed.job("agent-train", tier: "best_effort", gpus: 8, checkpointable: true))
            let (status, created) = try await server.request("POST", "/v1/tokens", #"{"name":"agent-gpu-node-9","role":"agent"}"#)
            #expect(status == 201)
            let token = try #require(created["token"]?.string)
            let asAgent = DemoClient(base: "http://127.0.0.1:\(server.port)", token: token)
            #expect(try await asAgent.call("GET", "/v1/tokens").0 == 403)
            #expect(try await asAgent.call("GET", "/v1/events").0 == 403)
            #expect(try await asAgent.call("POST", "/v1/pools", Seed.pool("spot-z", "spot")).0 == 403)
            #expect(
                try await server.eventually { try await server.request("GET", "/v1/jobs/agent-train").1["state"] == .string("running") })
            let listen = freePort()
            let agent = try AgentProcess(
                server: server.port, metadata: metadataPort, listen: listen, directory: folder, extra: ["--cloud", "gcp", "--token", token])
            defer { agent.stop() }
            #expect(try await server.eventually { metadata.heldRequests > 0 })
            metadata.preempt()
            #expect(
                try await server.eventually { try await server.request("GET", "/v1/nodes/\(metadata.name)").1["state"] != .string("ready") }
            )
            try await checkpointThroughTheAgent(server, listen: listen, job: "agent-train")
            server.kill(SIGTERM)
        }
    }

    @Test func gcpPreemptionThroughTheAgent() async throws {
        let metadata = FakeGCPMetadata(name: "gpu-node-7")
        try await withLoopbackProvisioner(metadata.router) { metadataPort in
            let folder = try directory()
            let server = SpotdProcess(directory: folder, port: freePort())
            try await server.start()
            try await server.request("POST", "/v1/pools", Seed.pool("spot-a", "spot"))
            try await server.request("POST", "/v1/nodes", Seed.node(metadata.name, pool: "spot-a"))
            try await server.request("POST", "/v1/jobs", Seed.job("gcp-train", tier: "best_effort", gpus: 8, checkpointable: true))
            #expect(try await server.eventually { try await server.request("GET", "/v1/jobs/gcp-train").1["state"] == .string("running") })
            let listen = freePort()
            let agent = try AgentProcess(
                server: server.port, metadata: metadataPort, listen: listen, directory: folder, extra: ["--cloud", "gcp"])
            defer { agent.stop() }
            #expect(try await server.eventually { metadata.heldRequests > 0 }, "the agent waits for a change")
            let preemptedAt = SystemClock().now()
            metadata.preempt()
            #expect(
                try await server.eventually { try await server.request("GET", "/v1/nodes/\(metadata.name)").1["state"] != .string("ready") }
            )
            let cordonedAt = SystemClock().now()
            let interruptions = try await server.request("GET", "/v1/interruptions").1["items"]?.array ?? []
            #expect(interruptions.count == 1)
            #expect(interruptions.first?["source"] == .string("gcp-metadata"))
            #expect(interruptions.first?["event_id"] == .string("\(metadata.name):preempted"))
            let deadline = try #require(interruptions.first?["deadline"]?.string.flatMap(TimeFormat.parseRFC3339))
            #expect(deadline >= preemptedAt + 29_000 && deadline <= cordonedAt + 31_000, "now + 30 s")
            try await checkpointThroughTheAgent(server, listen: listen, job: "gcp-train")
            server.kill(SIGTERM)
        }
    }
}

/// A fake Azure Scheduled Events endpoint, from Azure's documentation: `Metadata: true` is required (else 400);
/// `DocumentIncarnation` changes with every change; `POST` with `StartRequests` approves (and removes) an event, and
/// is recorded.
final class FakeScheduledEvents: Sendable {
    let name: String
    private let events = Mutex<[JSONValue]>([])
    private let incarnation = Mutex(1)
    private let approvals = Mutex<[String]>([])

    init(name: String) { self.name = name }

    var approved: [String] { approvals.withLock { $0 } }

    func schedule(id: String, resources: [String], notBefore: Millis) {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        let event = JSONValue.object([
            "EventId": .string(id), "EventType": .string("Preempt"), "ResourceType": .string("VirtualMachine"),
            "Resources": .array(resources.map(JSONValue.string)), "EventStatus": .string("Scheduled"),
            "NotBefore": .string(formatter.string(from: Date(timeIntervalSince1970: Double(notBefore) / 1000))),
            "Description": .string(""), "EventSource": .string("Platform"), "DurationInSeconds": .int(-1),
        ])
        events.withLock { $0.append(event) }
        incarnation.withLock { $0 += 1 }
    }

    var router: Router<BasicRequestContext> {
        let router = Router()
        router.get("/metadata/instance/compute/name") { request, _ -> Response in
            guard request.headers[HTTPField.Name("Metadata")!] == "true" else { return Response(status: .badRequest) }
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: self.name)))
        }
        router.get("/metadata/scheduledevents") { request, _ -> Response in
            guard request.headers[HTTPField.Name("Metadata")!] == "true" else { return Response(status: .badRequest) }
            let document = JSONValue.object([
                "DocumentIncarnation": .int(Int64(self.incarnation.withLock { $0 })), "Events": .array(self.events.withLock { $0 }),
            ])
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: document.jsonText)))
        }
        router.post("/metadata/scheduledevents") { request, _ -> Response in
            guard request.headers[HTTPField.Name("Metadata")!] == "true" else { return Response(status: .badRequest) }
            let body = try await request.body.collect(upTo: 1 << 16)
            let value = (try? JSONDecoder().decode(JSONValue.self, from: Data(buffer: body))) ?? .null
            let ids = (value["StartRequests"]?.array ?? []).compactMap { $0["EventId"]?.string }
            self.approvals.withLock { $0 += ids }
            // As Azure does: an approved event is listed as Started for a while.
            self.events.withLock { list in
                list = list.map { event in
                    guard ids.contains(event["EventId"]?.string ?? ""), case .object(var fields) = event else { return event }
                    fields["EventStatus"] = .string("Started")
                    return .object(fields)
                }
            }
            self.incarnation.withLock { $0 += 1 }
            return Response(status: .ok)
        }
        return router
    }
}

@Suite("spotd agent against a fake Azure Scheduled Events endpoint", .serialized)
struct AzureAgentTests {
    /// A Preempt event naming this VM and another: posted once (deadline NotBefore, event id EventId), the node
    /// drains, and the event is approved only once spotd says both VMs are drained.
    @Test func azurePreemptIsPostedAndApprovedOnceEveryVMIsDrained() async throws {
        let events = FakeScheduledEvents(name: "vm-gpu-1")
        try await withLoopbackProvisioner(events.router) { metadataPort in
            let folder = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-azure-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            let server = SpotdProcess(directory: folder, port: freePort(), extra: ["--drain-margin-seconds", "1"])
            try await server.start()
            try await server.request("POST", "/v1/pools", Seed.pool("spot-a", "spot"))
            try await server.request("POST", "/v1/nodes", Seed.node("vm-gpu-1", pool: "spot-a"))
            try await server.request("POST", "/v1/jobs", Seed.job("azure-train", tier: "best_effort", gpus: 8, checkpointable: true))
            #expect(
                try await server.eventually { try await server.request("GET", "/v1/jobs/azure-train").1["state"] == .string("running") })
            #expect(try await server.request("GET", "/v1/jobs/azure-train").1["node_id"] == .string("vm-gpu-1"))
            // The other VM the event names is a 4-GPU node: the 8-GPU job, requeued, cannot land there.
            try await server.request("POST", "/v1/pools", Seed.pool("small", "spot", gpus: 4, zone: "us-east-1b"))
            try await server.request("POST", "/v1/nodes", Seed.node("vm-gpu-2", pool: "small"))
            let listen = freePort()
            let agent = try AgentProcess(
                server: server.port, metadata: metadataPort, listen: listen, directory: folder, extra: ["--cloud", "azure"])
            defer { agent.stop() }
            let notBefore = (SystemClock().now() / 1000 + 60) * 1000
            events.schedule(id: "602d9444-d2cd-49c7-8624-8643e7171297", resources: ["vm-gpu-1", "vm-gpu-2"], notBefore: notBefore)
            #expect(try await server.eventually { try await server.request("GET", "/v1/nodes/vm-gpu-1").1["state"] != .string("ready") })
            try await checkpointThroughTheAgent(server, listen: listen, job: "azure-train")
            #expect(try await server.eventually { try await server.request("GET", "/v1/nodes/vm-gpu-1").1["state"] == .string("drained") })
            let interruptions = try await server.request("GET", "/v1/interruptions").1["items"]?.array ?? []
            #expect(interruptions.count == 1)
            #expect(interruptions.first?["source"] == .string("azure-scheduled-events"))
            #expect(interruptions.first?["event_id"] == .string("602d9444-d2cd-49c7-8624-8643e7171297"))
            #expect(interruptions.first?["deadline"]?.string.flatMap(TimeFormat.parseRFC3339) == notBefore)
            // vm-gpu-2 is still up: no approval yet.
            try await Task.sleep(for: .seconds(1))
            #expect(events.approved.isEmpty)
            try await server.request("POST", "/v1/nodes/vm-gpu-2/drain")
            #expect(try await server.eventually { events.approved == ["602d9444-d2cd-49c7-8624-8643e7171297"] })
            // Listed as Started afterwards, it is not approved again.
            try await Task.sleep(for: .seconds(1))
            #expect(events.approved == ["602d9444-d2cd-49c7-8624-8643e7171297"])
            server.kill(SIGTERM)
        }
    }
}
