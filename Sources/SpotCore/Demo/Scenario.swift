import Foundation
import Synchronization

/// The reference scenario, step by step, told as it happens.
struct Scenario {
    let client: DemoClient
    let write: @Sendable (String) -> Void
    let options: Demo.Options

    static let spotNodes = 20
    static let reclaimed = 5
    /// With `--workloads`: the gang, the service, and their sizes.
    static let gang = "train-gang"
    static let gangNodes = 4
    static let service = "chat"
    static let serviceReplicas = 6

    func expect(_ status: Int, _ method: String, _ path: String, _ body: String? = nil) async throws {
        let (got, json) = try await client.call(method, path, body)
        guard got == status else { throw DemoError.setupFailed("\(method) \(path) answered \(got): \(json.jsonText)") }
    }

    func play() async throws -> Bool {
        write("spotd demo: the reference scenario on a throwaway store\n")
        try await setUp()
        let premiumBefore = try await client.items("/v1/jobs?tier=premium&state=running")
        let bestEffortRunning = try await client.items("/v1/jobs?tier=best_effort&state=running").count
        if options.workloads {
            write(
                "ready: \(Self.spotNodes) spot nodes run a \(Self.gangNodes)-node best-effort gang, \(Self.serviceReplicas - 2) of the "
                    + "\(Self.serviceReplicas) replicas of a standard service (the other 2 on on-demand: base_on_demand 2) and "
                    + "\(bestEffortRunning - 1) more best-effort jobs; \(premiumBefore.count) premium jobs run on on-demand")
            write("(service replicas drain \(options.replicaDrainSeconds) s in this demo; --replica-drain-seconds is 30 by default)")
        } else {
            write(
                "ready: \(Self.spotNodes) spot nodes run \(bestEffortRunning) best-effort jobs; \(premiumBefore.count) premium jobs run on on-demand"
            )
        }
        if options.stockout { write("spot-b is in stockout: replacements will fall back to on-demand") }
        let since = try await client.items("/v1/events?limit=1000").compactMap { $0[demo: "id"]?.demoInt }.max() ?? 0
        let victims = try await chooseVictims()
        // The service's ready replicas, sampled every 100 ms from the notices to the end.
        let samples = ReadySamples()
        let sampler = Task { [client] in
            guard options.workloads else { return }
            while !Task.isCancelled {
                if let ready = try? await client.call("GET", "/v1/services/\(Self.service)").1[demo: "ready_replicas"]?.demoInt {
                    samples.add(ready)
                }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        defer { sampler.cancel() }

        // The cloud reclaims 5 spot nodes at once: AWS EventBridge warnings, fired together.
        let noticeAt = Date()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for node in victims {
                group.addTask {
                    let event = """
                        {"version":"0","id":"demo-\(node)","detail-type":"EC2 Spot Instance Interruption Warning","source":"aws.ec2",\
                        "account":"123456789012","time":"\(TimeFormat.rfc3339(SystemClock().now()))","region":"us-east-1",\
                        "resources":["arn:aws:ec2:us-east-1a:instance/\(node)"],"detail":{"instance-id":"\(node)","instance-action":"terminate"}}
                        """
                    try await expect(202, "POST", "/v1/interruptions/aws", event)
                }
            }
            try await group.waitForAll()
        }
        write(
            "t+\(Self.seconds(since: noticeAt))s  \(victims.count) AWS interruption warnings answered 202; every node cordoned before its answer\n"
        )

        // Node agents checkpoint when asked; replicas report ready once loaded; the cloud takes each node once it is
        // drained.
        var requeueTimes: [String: Date] = [:]
        var startingSince: [String: Date] = [:]
        let deadline = Date().addingTimeInterval(55)
        var done = false
        while Date() < deadline && !done {
            if options.workloads { try await reportLoadedReplicas(&startingSince) }
            for job in try await client.items("/v1/jobs?state=checkpointing") {
                guard let id = job[demo: "id"]?.demoString, let attempt = job[demo: "attempt"]?.demoInt else { continue }
                try? await Task.sleep(for: .milliseconds(300))
                _ = try await client.call(
                    "POST", "/v1/jobs/\(id)/checkpoints", #"{"uri":"s3://checkpoints/\#(id)/step-1200","step":1200,"attempt":\#(attempt)}"#)
            }
            for node in try await client.items("/v1/nodes?state=drained") {
                if let id = node[demo: "id"]?.demoString { _ = try await client.call("DELETE", "/v1/nodes/\(id)") }
            }
            let interruptions = try await client.items("/v1/interruptions")
            let queued = try await client.items("/v1/jobs?state=queued").count
            let checkpointing = try await client.items("/v1/jobs?state=checkpointing").count
            done = interruptions.allSatisfy { $0[demo: "state"]?.demoString == "completed" } && queued == 0 && checkpointing == 0
            if done && options.workloads { done = try await serviceSettled() }
            if !done { try await Task.sleep(for: .milliseconds(200)) }
        }
        let fullAt = Date()
        sampler.cancel()
        _ = await sampler.result

        // The timeline, from the audit log.
        write("timeline (seconds after the notices):")
        let events = try await client.items("/v1/events?since=\(since)&limit=1000")
        let start = Millis(noticeAt.timeIntervalSince1970 * 1000)
        var lines = 0
        for event in events {
            guard let type = event[demo: "type"]?.demoString, let at = event[demo: "at"]?.demoString.flatMap(TimeFormat.parseRFC3339),
                let subject = event[demo: "subject"]?.demoString
            else { continue }
            let offset = String(format: "%6.2f", Double(at - start) / 1000)
            let data = event[demo: "data"]
            switch type {
            case "interruption.received", "node.cordoned", "node.drained", "node.terminated", "provisioning.requested",
                "provisioning.fulfilled", "provisioning.failed", "interruption.completed", "job.checkpoint_requested", "job.checkpointed",
                "service.replica_surged", "service.replica_placed", "service.replica_ready", "service.replica_draining",
                "service.replica_gone":
                write("  t+\(offset)s  \(type.padding(toLength: 26, withPad: " ", startingAt: 0)) \(subject)\(Self.note(type, data))")
                lines += 1
            case "job.requeued":
                requeueTimes[subject] = Date(timeIntervalSince1970: Double(at) / 1000)
                write("  t+\(offset)s  \(type.padding(toLength: 26, withPad: " ", startingAt: 0)) \(subject)\(Self.note(type, data))")
                lines += 1
            case "job.placed" where data?[demo: "attempt"]?.demoInt ?? 1 > 1:
                let nodes = data?[demo: "node_ids"]?.demoArray?.compactMap(\.demoString).joined(separator: ",")
                write(
                    "  t+\(offset)s  \(type.padding(toLength: 26, withPad: " ", startingAt: 0)) \(subject) -> \(nodes ?? data?[demo: "node_id"]?.demoString ?? "?")"
                )
                lines += 1
            default:
                continue
            }
        }

        // The closing summary.
        let jobs = try await client.items("/v1/jobs?limit=1000")
        var lostGPUMinutes = 0.0
        for job in jobs where (job[demo: "requeue_count"]?.demoInt ?? 0) > 0 {
            let gpus = Double((job[demo: "gpus"]?.demoInt ?? 0) * (job[demo: "nodes"]?.demoInt ?? 1))
            let started = job[demo: "started_at"]?.demoString.flatMap(TimeFormat.parseRFC3339) ?? start
            let checkpoint = job[demo: "resume_from"]?[demo: "at"]?.demoString.flatMap(TimeFormat.parseRFC3339)
            let requeuedAt =
                requeueTimes["jobs/\(job[demo: "id"]?.demoString ?? "")"].map { Millis($0.timeIntervalSince1970 * 1000) } ?? start
            // Work since the last checkpoint (or since the job started, with none) is lost.
            let from = checkpoint ?? started
            lostGPUMinutes += gpus * Double(max(0, requeuedAt - from)) / 60_000
        }
        let requeued = jobs.filter { ($0[demo: "requeue_count"]?.demoInt ?? 0) > 0 }.count
        let premiumAfter = try await client.items("/v1/jobs?tier=premium")
        let touched = premiumAfter.filter { job in
            let before = premiumBefore.first { $0[demo: "id"] == job[demo: "id"] }
            return job[demo: "attempt"]?.demoInt != 1 || job[demo: "node_id"] != before?[demo: "node_id"]
                || job[demo: "state"]?.demoString != "running"
        }.count
        let requests = try await client.items("/v1/provisioning-requests")
        let fulfilledBy = Dictionary(grouping: requests.filter { $0[demo: "state"]?.demoString == "fulfilled" }) {
            $0[demo: "pool"]?.demoString ?? "?"
        }.mapValues(\.count)
        write("")
        write("summary:")
        write("  nodes reclaimed:          \(victims.count)")
        write("  jobs requeued:            \(requeued) (checkpointed ones resume from their checkpoint)")
        write("  GPU-minutes lost:         \(String(format: "%.1f", lostGPUMinutes)) (work since the last checkpoint, or since the start)")
        write(
            "  replacements fulfilled:   \(fulfilledBy.sorted { $0.key < $1.key }.map { "\($0.value) in \($0.key)" }.joined(separator: ", "))"
        )
        write("  time to full capacity:    \(Self.seconds(since: noticeAt, until: fullAt)) s")
        write("  premium jobs touched:     \(touched)")
        var workloadsOK = true
        if options.workloads {
            let gangEvents = events.filter { $0[demo: "subject"]?.demoString == "jobs/\(Self.gang)" }.compactMap {
                $0[demo: "type"]?.demoString
            }
            let checkpoints = gangEvents.filter { $0 == "job.checkpoint_requested" }.count
            let requeues = gangEvents.filter { $0 == "job.requeued" }.count
            let gang = try await client.call("GET", "/v1/jobs/\(Self.gang)").1
            let gangNodes = gang[demo: "node_ids"]?.demoArray?.compactMap(\.demoString) ?? []
            let service = try await client.call("GET", "/v1/services/\(Self.service)").1
            let minAvailable = service[demo: "min_available"]?.demoInt ?? 0
            let seen = samples.all
            let lowest = seen.min() ?? 0
            write(
                "  \("gang \(Self.gang):".padding(toLength: 26, withPad: " ", startingAt: 0))checkpoint requested \(checkpoints)x, requeued \(requeues)x, "
                    + "\(gang[demo: "state"]?.demoString ?? "?") on \(gangNodes.joined(separator: ", "))")
            write(
                "  \("service \(Self.service):".padding(toLength: 26, withPad: " ", startingAt: 0))ready_replicas never below \(lowest) (min_available \(minAvailable); \(seen.count) samples, "
                    + "every 100 ms); now \(service[demo: "ready_replicas"]?.demoInt ?? 0) of \(Self.serviceReplicas)")
            workloadsOK =
                checkpoints == 1 && requeues == 1 && gang[demo: "state"]?.demoString == "running" && !seen.isEmpty && lowest >= minAvailable
        }
        try await writeCost()
        let passed = done && touched == 0 && lines > 0 && workloadsOK
        if options.workloads {
            write(
                passed
                    ? "\nresult: OK, gang checkpointed and requeued once, ready_replicas never below min_available, premium untouched"
                    : "\nresult: NOT OK")
        } else {
            write(passed ? "\nresult: OK, nothing lost and no premium job touched" : "\nresult: NOT OK")
        }
        return passed
    }

    /// The cost lines (`GET /v1/reports/cost`): per pool, then the total.
    func writeCost() async throws {
        let report = try await client.call("GET", "/v1/reports/cost").1
        func number(_ value: JSONValue?) -> Double {
            switch value {
            case .double(let number)?: number
            case .int(let number)?: Double(number)
            default: 0
            }
        }
        func line(_ name: String, _ fields: JSONValue?) -> String {
            let saving = fields?[demo: "saving"].flatMap { $0 == .null ? nil : number($0) }
            return "  \(name.padding(toLength: 12, withPad: " ", startingAt: 0)) "
                + String(
                    format: "%7.2f node-h  $%9.2f  %2lld notices  %6.2f GPU-h lost  saving %@", number(fields?[demo: "node_hours"]),
                    number(fields?[demo: "cost"]), Int64(number(fields?[demo: "interruptions"])), number(fields?[demo: "gpu_hours_lost"]),
                    saving.map { String(format: "$%.2f", $0) } ?? "n/a")
        }
        write("")
        write("cost so far (GET /v1/reports/cost):")
        for pool in report[demo: "pools"]?.demoArray ?? [] { write(line(pool[demo: "pool"]?.demoString ?? "?", pool)) }
        write(line("total", report[demo: "total"]))
    }

    /// The 5 nodes the cloud takes: the first of spot-a; with `--workloads`, one gang member, two replica hosts and
    /// two nodes of single-node jobs.
    func chooseVictims() async throws -> [String] {
        guard options.workloads else {
            return try await client.items("/v1/nodes?pool=spot-a&limit=\(Self.reclaimed)").compactMap { $0[demo: "id"]?.demoString }
        }
        let gangNodes = try await client.call("GET", "/v1/jobs/\(Self.gang)").1[demo: "node_ids"]?.demoArray?.compactMap(\.demoString) ?? []
        let members = try await client.call("GET", "/v1/services/\(Self.service)").1[demo: "members"]?.demoArray ?? []
        let replicaHosts = members.filter { $0[demo: "capacity_type"]?.demoString == "spot" }.compactMap { $0[demo: "node_id"]?.demoString }
        let others = try await client.items("/v1/nodes?pool=spot-a&limit=100").compactMap { $0[demo: "id"]?.demoString }.filter {
            !gangNodes.contains($0) && !replicaHosts.contains($0)
        }
        let victims = Array(gangNodes.prefix(1)) + Array(replicaHosts.prefix(2)) + Array(others.prefix(2))
        guard victims.count == Self.reclaimed else { throw DemoError.setupFailed("could not pick the victims: \(victims)") }
        return victims
    }

    /// The service's replicas load in half a second: each starting replica reports ready once it has been seen
    /// starting that long.
    func reportLoadedReplicas(_ startingSince: inout [String: Date]) async throws {
        let members = try await client.call("GET", "/v1/services/\(Self.service)").1[demo: "members"]?.demoArray ?? []
        for member in members where member[demo: "state"]?.demoString == "starting" {
            guard let id = member[demo: "id"]?.demoString else { continue }
            let since = startingSince[id] ?? Date()
            startingSince[id] = since
            if Date().timeIntervalSince(since) >= 0.5 {
                _ = try await client.call("POST", "/v1/services/\(Self.service)/replicas/\(id)/ready")
            }
        }
    }

    /// Every replica serves and none is on its way in or out.
    func serviceSettled() async throws -> Bool {
        let service = try await client.call("GET", "/v1/services/\(Self.service)").1
        let states = (service[demo: "members"]?.demoArray ?? []).compactMap { $0[demo: "state"]?.demoString }
        return service[demo: "ready_replicas"]?.demoInt == Int64(Self.serviceReplicas)
            && states.allSatisfy { $0 == "ready" || $0 == "gone" }
    }

    func setUp() async throws {
        try await expect(201, "POST", "/v1/pools", Self.pool("spot-a", "spot", zone: "us-east-1a", price: 12.0))
        try await expect(201, "POST", "/v1/pools", Self.pool("spot-b", "spot", zone: "us-east-1b", price: 12.5))
        try await expect(201, "POST", "/v1/pools", Self.pool("on-demand", "on_demand", zone: "us-east-1a", price: 98.0))
        if options.stockout { try await expect(200, "PATCH", "/v1/pools/spot-b", #"{"stockout":true}"#) }
        for index in 0..<Self.spotNodes {
            try await expect(201, "POST", "/v1/nodes", #"{"id":"i-spot\#(String(format: "%02d", index))","pool":"spot-a"}"#)
        }
        // With the service, two more on-demand nodes hold its base_on_demand replicas.
        for index in 0..<(options.workloads ? 6 : 4) {
            try await expect(201, "POST", "/v1/nodes", #"{"id":"i-od\#(index)","pool":"on-demand"}"#)
        }
        var singleJobs = Self.spotNodes * 2
        if options.workloads {
            // The gang and the service go first, so that each finds whole nodes; the single-node jobs fill the rest.
            try await expect(
                201, "POST", "/v1/jobs",
                #"{"id":"\#(Self.gang)","tier":"best_effort","nodes":\#(Self.gangNodes),"gpus":8,"checkpointable":true,"expected_duration_seconds":7200}"#
            )
            try await waitFor("the gang to run") {
                try await client.call("GET", "/v1/jobs/\(Self.gang)").1[demo: "state"]?.demoString == "running"
            }
            try await expect(
                201, "POST", "/v1/services",
                #"{"id":"\#(Self.service)","tier":"standard","replicas":\#(Self.serviceReplicas),"gpus_per_replica":8,"base_on_demand":2}"#)
            var startingSince: [String: Date] = [:]
            try await waitFor("the service's replicas to serve") {
                try await reportLoadedReplicas(&startingSince)
                return try await serviceSettled()
            }
            singleJobs -= (Self.gangNodes + Self.serviceReplicas - 2) * 2
        }
        for index in 0..<singleJobs {
            let checkpointable = index % 2 == 0
            try await expect(
                201, "POST", "/v1/jobs",
                #"{"id":"train-\#(String(format: "%02d", index))","tier":"best_effort","gpus":4,"checkpointable":\#(checkpointable),"expected_duration_seconds":1800}"#
            )
        }
        for index in 0..<6 {
            try await expect(201, "POST", "/v1/jobs", #"{"id":"premium-\#(index)","tier":"premium","gpus":4}"#)
        }
        for _ in 0..<100 {
            if try await client.items("/v1/jobs?state=queued").isEmpty { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        let queued = try await client.items("/v1/jobs?state=queued").compactMap { $0[demo: "id"]?.demoString }
        let ready = try await client.items("/v1/nodes?state=ready&limit=1000").count
        throw DemoError.setupFailed("jobs were not all placed: still queued \(queued), \(ready) ready nodes")
    }

    func waitFor(_ what: String, _ check: () async throws -> Bool) async throws {
        for _ in 0..<100 {
            if try await check() { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw DemoError.setupFailed("waited 10 s for \(what)")
    }

    static func pool(_ name: String, _ type: String, zone: String, price: Double) -> String {
        #"{"name":"\#(name)","capacity_type":"\#(type)","gpu_type":"H100","gpus_per_node":8,"zone":"\#(zone)","instance_type":"p5.48xlarge","hourly_price":\#(price)}"#
    }

    static func seconds(since start: Date, until end: Date = Date()) -> String {
        String(format: "%.1f", end.timeIntervalSince(start))
    }

    static func note(_ type: String, _ data: JSONValue?) -> String {
        switch type {
        case "job.requeued":
            let resume = data?[demo: "resume_from"]?[demo: "step"]?.demoInt.map { "resumes from step \($0)" } ?? "starts over"
            return " (\(data?[demo: "reason"]?.demoString ?? ""); \(resume))"
        case "provisioning.requested":
            return " -> \(data?[demo: "pool"]?.demoString ?? "?") (\(data?[demo: "reason"]?.demoString ?? ""))"
        case "provisioning.fulfilled":
            return " -> node \(data?[demo: "node_id"]?.demoString ?? "?")"
        case "provisioning.failed":
            return " (\(data?[demo: "error"]?.demoString ?? ""))"
        case "service.replica_surged":
            return " \(data?[demo: "replica"]?.demoString ?? "?"): \(data?[demo: "reason"]?.demoString ?? "")"
        case "service.replica_placed":
            return
                " \(data?[demo: "replica"]?.demoString ?? "?") -> \(data?[demo: "node_id"]?.demoString ?? "?") (\(data?[demo: "pool"]?.demoString ?? "?"))"
        case "service.replica_ready":
            return " \(data?[demo: "replica"]?.demoString ?? "?") on \(data?[demo: "node_id"]?.demoString ?? "?")"
        case "service.replica_draining":
            return " \(data?[demo: "replica"]?.demoString ?? "?") (its surge serves)"
        case "service.replica_gone":
            return " \(data?[demo: "replica"]?.demoString ?? "?") (\(data?[demo: "reason"]?.demoString ?? ""))"
        default:
            return ""
        }
    }
}

/// What the demo's sampler has seen.
final class ReadySamples: Sendable {
    private let values = Mutex<[Int64]>([])
    func add(_ value: Int64) { values.withLock { $0.append(value) } }
    var all: [Int64] { values.withLock { $0 } }
}
