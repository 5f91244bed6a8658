import ArgumentParser
import Foundation
import SpotCore

// MARK: - spotd status

/// `spotd status`: the fleet at a glance, from `GET /v1/summary`.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show pools, jobs by tier, services, interruptions and provisioning of a running spotd.",
        discussion: CLIFailure.exitCodes)

    @OptionGroup var client: ClientOptions

    func run() async throws {
        try await client.run { server in
            let answer = try await server.send(.GET, "/v1/summary", Target(verb: "read", subject: "the summary"))
            CLIOutput.print(client.output == .json ? [CLIOutput.raw(answer.bytes)] : StatusView.lines(answer.json))
        }
    }
}

/// The text of `spotd status`.
enum StatusView {
    static let tiers = ["premium", "standard", "best_effort"]
    static let jobStates = ["queued", "running", "checkpointing", "completed", "failed", "cancelled"]

    static func lines(_ summary: JSONValue) -> [String] {
        var lines: [String] = []
        if case .array(let pools)? = summary.field("pools"), !pools.isEmpty {
            lines += Render.table(
                ["POOL", "TYPE", "GPU", "READY", "CORDONED", "DRAINING", "DRAINED", "GPUS FREE/TOTAL"],
                pools.map { pool in
                    ["name", "capacity_type", "gpu_type", "nodes.ready", "nodes.cordoned", "nodes.draining", "nodes.drained"]
                        .map { Render.cell(Column.lookup(pool, $0)) }
                        + ["\(Render.cell(pool.field("gpus_free")))/\(Render.cell(pool.field("gpus_total")))"]
                })
        } else {
            lines.append("no pools yet (create one: POST /v1/pools)")
        }
        lines.append("")
        lines += jobs(summary.field("jobs"))
        lines.append("")
        if let gangs = counts(summary.field("gangs")) { lines.append("gangs: \(gangs)") }
        let services = summary.field("services")
        if let count = services?.field("count"), count != .int(0) {
            lines.append(
                "services: \(Render.cell(count)), replicas ready \(Render.cell(services?.field("ready_replicas")))/"
                    + Render.cell(services?.field("replicas")))
        } else {
            lines.append("services: none")
        }
        lines.append("active interruptions: \(Render.cell(summary.field("active_interruptions")))")
        lines.append("pending provisioning requests: \(Render.cell(summary.field("pending_provisioning_requests")))")
        let provider = summary.field("provider")
        var parts: [String] = []
        if let live = provider?.field("live_instances"), live != .null { parts.append("live instances \(Render.cell(live))") }
        parts.append("pending releases \(Render.cell(provider?.field("pending_releases")))")
        lines.append("provider: \(Render.cell(provider?.field("kind"))) (\(parts.joined(separator: ", ")))")
        return lines
    }

    /// Jobs by tier and state; known tiers and states first, in their order, then any others the server has.
    static func jobs(_ value: JSONValue?) -> [String] {
        guard case .object(let byTier)? = value, byTier.values.contains(where: { counts($0) != nil }) else {
            return ["no jobs yet"]
        }
        var states = jobStates
        for case .object(let fields) in byTier.values { states += fields.keys.filter { !states.contains($0) }.sorted() }
        let tierNames = tiers.filter { byTier[$0] != nil } + byTier.keys.filter { !tiers.contains($0) }.sorted()
        return Render.table(
            ["TIER"] + states.map { Render.clean($0).uppercased() },
            tierNames.map { tier in [Render.clean(tier)] + states.map { Render.cell(byTier[tier]?.field($0)) } })
    }

    /// `2 queued, 1 running` of the non-zero counts of an object; nil when all are zero.
    static func counts(_ value: JSONValue?) -> String? {
        guard case .object(let fields)? = value else { return nil }
        let names = jobStates.filter { fields[$0] != nil } + fields.keys.filter { !jobStates.contains($0) }.sorted()
        let parts = names.compactMap { name in fields[name] == .int(0) ? nil : "\(Render.cell(fields[name])) \(Render.clean(name))" }
        return parts.isEmpty ? nil : parts.joined(separator: ", ")
    }
}

// MARK: - spotd get

/// `spotd get RESOURCE [ID]`: a list (every page, up to `--limit`) or one resource.
struct GetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get", abstract: "List pools, nodes, jobs, services, interruptions, subscriptions or drills, or show one.",
        discussion: "With -o json a list is one JSON array of all its items.\n\n" + CLIFailure.exitCodes)

    @Argument(help: "What to get.") var resource: Resource
    @Argument(help: "The one to show (an id, or a pool's name); without it, the list.") var id: String?
    @Option(help: "Most items of a list to show.") var limit = 500
    @Option(help: "Only those in this state (nodes, jobs and interruptions).") var state: String?
    /// Items asked for per page (the server's most is 1000); tests make it small to follow many pages.
    @Option(help: .hidden) var pageSize = 1000
    @OptionGroup var client: ClientOptions

    func validate() throws {
        if let id { try requireNonEmpty(id, "<id>") }
        guard (1...1_000_000).contains(limit) else { throw ValidationError("--limit must be 1 to 1000000") }
        guard (1...1000).contains(pageSize) else { throw ValidationError("--page-size must be 1 to 1000") }
        if state != nil && !resource.filtersByState { throw ValidationError("--state is for nodes, jobs and interruptions") }
        if state != nil && id != nil { throw ValidationError("--state is for a list; leave it out with an id") }
    }

    func run() async throws {
        try await client.run { server in
            if let id {
                let target = Target(verb: "get", subject: "\(resource.noun) \(Render.clean(id))")
                let answer = try await server.send(.GET, "\(resource.path)/\(SpotdClient.segment(id))", target)
                CLIOutput.print(
                    client.output == .json ? [CLIOutput.raw(answer.bytes)] : Render.details(answer.json, first: resource.firstKeys))
                return
            }
            let query = state.map { ["state": $0] } ?? [:]
            let (items, more) = try await server.list(
                resource.path, query: query, limit: limit, pageSize: pageSize, Target(verb: "list", subject: resource.rawValue))
            if client.output == .json {
                CLIOutput.print([JSONValue.array(items).serialized])
            } else if items.isEmpty {
                CLIOutput.print(["no \(resource.rawValue)\(state.map { " in state \(Render.clean($0))" } ?? "")"])
            } else {
                CLIOutput.print(resource.table(items))
            }
            if more { CLIOutput.note("showing the first \(items.count) \(resource.rawValue); there are more (raise --limit)") }
        }
    }
}

// MARK: - spotd cordon | uncordon | drain

/// `spotd cordon NODE`.
struct CordonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cordon", abstract: "Stop placing work on a node (what runs on it keeps running).",
        discussion: CLIFailure.exitCodes)

    @Argument(help: "The node's id.") var node: String
    @OptionGroup var client: ClientOptions

    func validate() throws { try requireNonEmpty(node, "<node>") }

    func run() async throws {
        try await NodeAction.run("cordon", node: node, client: client) { answer in
            let json = answer.json
            let jobs = Render.cell(json.field("jobs"))
            return "node \(Render.cell(json.field("id"))) is \(Render.cell(json.field("state"))): it takes no new work ("
                + (jobs == "-" ? "no jobs on it)" : "still running: \(jobs))")
        }
    }
}

/// `spotd uncordon NODE`.
struct UncordonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uncordon", abstract: "Let a cordoned node take work again.", discussion: CLIFailure.exitCodes)

    @Argument(help: "The node's id.") var node: String
    @OptionGroup var client: ClientOptions

    func validate() throws { try requireNonEmpty(node, "<node>") }

    func run() async throws {
        try await NodeAction.run("uncordon", node: node, client: client) { answer in
            "node \(Render.cell(answer.json.field("id"))) is \(Render.cell(answer.json.field("state"))): it takes work again"
        }
    }
}

/// `spotd drain NODE [--deadline-seconds N]`.
struct DrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Reclaim a node by hand: cordon it, checkpoint and requeue its work, and replace it, before a deadline.",
        discussion: CLIFailure.exitCodes)

    @Argument(help: "The node's id.") var node: String
    @Option(help: "Seconds from now to the deadline, 0 to 86400 (default: the server's, 120).") var deadlineSeconds: Int?
    @OptionGroup var client: ClientOptions

    func validate() throws {
        try requireNonEmpty(node, "<node>")
        if let deadlineSeconds, !(0...86_400).contains(deadlineSeconds) {
            throw ValidationError("--deadline-seconds must be 0 to 86400")
        }
    }

    func run() async throws {
        let body = deadlineSeconds.map { JSONValue.object(["notice_seconds": .int(Int64($0))]) }
        try await NodeAction.run("drain", node: node, body: body, client: client) { answer in
            let json = answer.json
            let interruption =
                "interruption \(Render.cell(json.field("id"))) (source \(Render.cell(json.field("source")))), "
                + "deadline \(Render.cell(json.field("deadline")))"
            // 202: a new interruption; 200: the node already had one, which is returned as it stands.
            return answer.status == 202
                ? "node \(Render.clean(node)) is being drained: \(interruption); its work checkpoints and requeues"
                : "node \(Render.clean(node)) was already being reclaimed: \(interruption), now \(Render.cell(json.field("state")))"
        }
    }
}

/// A POST to `/v1/nodes/{id}/{action}`, printed as one line (or the server's JSON).
enum NodeAction {
    static func run(
        _ action: String, node: String, body: JSONValue? = nil, client: ClientOptions,
        line: @escaping (SpotdClient.Answer) -> String
    ) async throws {
        try await client.run { server in
            let answer = try await server.send(
                .POST, "/v1/nodes/\(SpotdClient.segment(node))/\(action)", body: body,
                Target(verb: action, subject: "node \(Render.clean(node))"))
            CLIOutput.print(client.output == .json ? [CLIOutput.raw(answer.bytes)] : [line(answer)])
        }
    }
}

// MARK: - spotd drill

/// `spotd drill POOL (--count N | --fraction F)`: a rehearsed reclaim, or its plan.
struct DrillCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drill",
        abstract: "Rehearse a reclaim: send termination notices (source drill) to some of a pool's nodes, or show the plan.",
        discussion: "The drill's report: spotd get drills ID.\n\n" + CLIFailure.exitCodes)

    @Argument(help: "The pool whose nodes get the notices.") var pool: String
    @Option(help: "How many nodes, 1 to 1000.") var count: Int?
    @Option(help: "Which fraction of the pool's nodes, more than 0 and at most 1.") var fraction: Double?
    @Option(help: "Seconds of notice, 1 to 3600 (default 120).") var noticeSeconds: Int?
    @Flag(help: "Show what would happen (jobs hit, replacements) and change nothing.") var dryRun = false
    @OptionGroup var client: ClientOptions

    func validate() throws {
        try requireNonEmpty(pool, "<pool>")
        switch (count, fraction) {
        case (nil, nil): throw ValidationError("give --count or --fraction")
        case (_?, _?): throw ValidationError("give --count or --fraction, not both")
        case (let count?, nil): guard (1...1000).contains(count) else { throw ValidationError("--count must be 1 to 1000") }
        case (nil, let fraction?):
            guard fraction.isFinite, fraction > 0, fraction <= 1 else {
                throw ValidationError("--fraction must be more than 0 and at most 1")
            }
        }
        if let noticeSeconds, !(1...3600).contains(noticeSeconds) { throw ValidationError("--notice-seconds must be 1 to 3600") }
    }

    func run() async throws {
        var body: [String: JSONValue] = ["pool": .string(pool), "dry_run": .bool(dryRun)]
        if let count { body["count"] = .int(Int64(count)) }
        if let fraction { body["fraction"] = .double(fraction) }
        if let noticeSeconds { body["notice_seconds"] = .int(Int64(noticeSeconds)) }
        try await client.run { server in
            let target = Target(verb: dryRun ? "plan a drill of" : "start a drill of", subject: "pool \(Render.clean(pool))")
            let answer = try await server.send(.POST, "/v1/drills", body: .object(body), target)
            guard client.output == .table else { return CLIOutput.print([CLIOutput.raw(answer.bytes)]) }
            CLIOutput.print(dryRun ? Self.plan(answer.json) : Self.started(answer.json))
        }
    }

    static func plan(_ plan: JSONValue) -> [String] {
        var lines = [
            "dry run: nothing was changed. A drill of pool \(Render.cell(plan.field("pool"))) would send "
                + "\(Render.cell(plan.field("notice_seconds"))) s termination notices to: \(Render.cell(plan.field("node_ids")))"
        ]
        if case .array(let jobs)? = plan.field("jobs_hit"), !jobs.isEmpty {
            lines += ["", "jobs hit:"] + Render.objectTable(jobs, indent: "  ")
        } else {
            lines += ["", "jobs hit: none"]
        }
        if case .array(let replacements)? = plan.field("replacements"), !replacements.isEmpty {
            lines += ["", "replacements (pool - means none available):"] + Render.objectTable(replacements, indent: "  ")
        }
        if let summary = plan.field("summary") { lines += ["", "summary:"] + Render.details(summary, indent: "  ") }
        return lines
    }

    static func started(_ report: JSONValue) -> [String] {
        let id = Render.cell(report.field("id"))
        return [
            "drill \(id) started on pool \(Render.cell(report.field("pool"))): \(Render.cell(report.field("notice_seconds"))) s "
                + "termination notices to \(Render.cell(report.field("node_ids")))",
            "interruptions: \(Render.cell(report.field("interruption_ids")))",
            "its report: spotd get drills \(id)",
        ]
    }
}

/// An argument that must not be empty (an empty id would name the list instead).
func requireNonEmpty(_ value: String, _ name: String) throws {
    if value.isEmpty { throw ValidationError("\(name) must not be empty") }
}

// MARK: - Output

/// Standard output and error of the CLI.
enum CLIOutput {
    static func print(_ lines: [String]) {
        guard !lines.isEmpty else { return }
        // The throwing write: a closed pipe (`spotd get jobs | head`) is not a crash.
        try? FileHandle.standardOutput.write(contentsOf: Data((lines.joined(separator: "\n") + "\n").utf8))
    }

    /// A note on standard error (it is not part of the output a script reads).
    static func note(_ message: String) {
        try? FileHandle.standardError.write(contentsOf: Data("spotd: \(message)\n".utf8))
    }

    /// The server's JSON as it sent it (it was read as JSON already, so it is valid UTF-8).
    static func raw(_ bytes: [UInt8]) -> String {
        String(decoding: bytes, as: UTF8.self)
    }
}
