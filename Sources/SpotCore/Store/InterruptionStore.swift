/// An interruption with its timeline.
public struct InterruptionDetail: Sendable, Equatable {
    public var interruption: Interruption
    public var timeline: [TimelineStep]
}

/// What recording a request's notices did.
struct NoticeOutcome: Sendable {
    /// Each notice's record, and whether this request created it.
    var results: [(InterruptionDetail, Bool)]
    /// The request was a replay of an earlier signed one: nothing was recorded.
    var replayed: Bool
}

struct InterruptionFilter: Sendable {
    var state: InterruptionState?
    var node: String?
}

extension SpotStore {
    /// Records notices and cordons their nodes, all in one transaction, before anything is answered.
    /// With a `replayKey` (a verified signature), a second request with the same key records nothing and gets the
    /// first request's records back. Returns each notice's record and whether it is new.
    func recordNotices(_ notices: [Notice], ignored: [IgnoredNotice] = [], replayKey: String? = nil, actor: String) async throws
        -> NoticeOutcome
    {
        try await write { [self] db in
            let now = clock.now()
            if let replayKey,
                let ids = try String.fetchOne(
                    db.cachedStatement(sql: "SELECT interruption_ids FROM notice_replays WHERE signature = ?"), arguments: [replayKey])
            {
                let details = try ids.split(separator: ",").compactMap { try Self.interruptionDetail(db, id: String($0)) }
                return NoticeOutcome(results: details.map { ($0, false) }, replayed: true)
            }
            var results: [(InterruptionDetail, Bool)] = []
            for notice in notices {
                let (id, created) = try Self.record(db, notice, at: now, actor: actor)
                results.append((try Self.interruptionDetail(db, id: id)!, created))
            }
            for event in ignored {
                try db.appendEvent(
                    "interruption.ignored", subject: "azure-events/\(event.eventId)", actor: actor, at: now,
                    data: ["event_type": .string(event.eventType), "resources": .array(event.resources.map(JSONValue.string))])
            }
            if let replayKey {
                try db.cachedStatement(sql: "INSERT INTO notice_replays (signature, interruption_ids, received_at) VALUES (?, ?, ?)")
                    .execute(arguments: [replayKey, results.map(\.0.interruption.id).joined(separator: ","), now])
            }
            return NoticeOutcome(results: results, replayed: false)
        }
    }

    static func record(_ db: Database, _ notice: Notice, at now: Millis, actor: String) throws -> (String, Bool) {
        var node: Node?
        for candidate in [notice.nodeId] + notice.aliases where node == nil {
            node = try db.fetchNode(candidate)
        }
        let nodeId = node?.id ?? notice.nodeId
        if let existing = try String.fetchOne(
            db.cachedStatement(sql: "SELECT id FROM interruptions WHERE source = ? AND event_id = ? AND node_id = ?"),
            arguments: [notice.source, notice.eventId, nodeId])
        {
            return (existing, false)
        }
        if node != nil {
            let sameKind = try String.fetchOne(
                db.cachedStatement(
                    sql: notice.kind == .termination
                        ? "SELECT id FROM interruptions WHERE node_id = ? AND kind = 'termination' AND state <> 'unmatched'"
                        : "SELECT id FROM interruptions WHERE node_id = ? AND kind = 'rebalance' AND state = 'received'"),
                arguments: [nodeId])
            if let sameKind { return (sameKind, false) }
        }
        let id = Ids.new("int")
        let state: InterruptionState = node == nil ? .unmatched : .received
        try db.cachedStatement(
            sql: """
                INSERT INTO interruptions (id, node_id, pool, kind, source, event_id, state, deadline, received_at, node_was_live)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """
        ).execute(arguments: [
            id, nodeId, node?.pool, notice.kind.rawValue, notice.source, notice.eventId, state.rawValue, notice.deadline, now,
            node.map { $0.state.live } ?? false,
        ])
        try db.appendStep(id, "received", at: now, detail: "\(notice.source) \(notice.kind.rawValue)")
        var data: [String: JSONValue] = [
            "interruption_id": .string(id), "kind": .string(notice.kind.rawValue), "source": .string(notice.source),
            "event_id": .string(notice.eventId),
        ]
        if let deadline = notice.deadline { data["deadline"] = .string(TimeFormat.rfc3339(deadline)) }
        guard let node else {
            try db.appendEvent("interruption.unmatched", subject: "nodes/\(nodeId)", actor: actor, at: now, data: data)
            return (id, true)
        }
        try db.appendEvent("interruption.received", subject: "nodes/\(nodeId)", actor: actor, at: now, data: data)
        if notice.kind == .termination { try db.addUsage(hour: Usage.hourStart(now), pool: node.pool, tier: "", interruptions: 1) }
        switch node.state {
        case .ready, .provisioning:
            try SpotStore.cordon(db, node: node, at: now, actor: actor, reason: "\(notice.kind.rawValue) notice \(id)")
            try db.appendStep(id, "cordoned", at: now)
        case .cordoned, .draining, .drained:
            try db.appendStep(id, "cordoned", at: now, detail: "already \(node.state.rawValue)")
        case .terminated:
            try db.appendStep(id, "node_terminated", at: now, detail: "already terminated")
        }
        return (id, true)
    }

    func listInterruptions(_ filter: InterruptionFilter, _ page: PageRequest) async throws -> Page<InterruptionDetail> {
        try await read { db in
            var query = ListQuery("SELECT id, seq FROM interruptions", after: page)
            query.equals("state", filter.state?.rawValue)
            query.equals("node_id", filter.node)
            let ids = Self.page(try query.fetch(db, limit: page.limit), limit: page.limit) { $0["id"] as String }
            return Page(items: try ids.items.compactMap { try Self.interruptionDetail(db, id: $0) }, nextCursor: ids.nextCursor)
        }
    }

    /// The newest active interruptions (received, draining or drained), newest first, each with the last `steps` steps
    /// of its timeline; and whether there are more.
    func activeInterruptions(limit: Int, steps: Int) async throws -> (items: [InterruptionDetail], more: Bool) {
        try await read { db in
            let ids = try String.fetchAll(
                db,
                sql: "SELECT id FROM interruptions WHERE state IN ('received', 'draining', 'drained') ORDER BY seq DESC LIMIT ?",
                arguments: [limit + 1])
            let items = try ids.prefix(limit).compactMap { id -> InterruptionDetail? in
                guard let interruption = try db.fetchInterruption(id) else { return nil }
                let timeline = try Row.fetchAll(
                    db,
                    sql: """
                        SELECT step, at, job_id, detail FROM (
                            SELECT seq, step, at, job_id, detail FROM interruption_steps WHERE interruption_id = ? ORDER BY seq DESC LIMIT ?) AS newest
                        ORDER BY seq
                        """, arguments: [id, steps]
                ).map { TimelineStep(step: $0["step"], at: $0["at"], jobId: $0["job_id"], detail: $0["detail"]) }
                return InterruptionDetail(interruption: interruption, timeline: timeline)
            }
            return (items, ids.count > limit)
        }
    }

    func interruption(_ id: String) async throws -> InterruptionDetail? {
        try await read { db in try Self.interruptionDetail(db, id: id) }
    }

    static func interruptionDetail(_ db: Database, id: String) throws -> InterruptionDetail? {
        guard let interruption = try db.fetchInterruption(id) else { return nil }
        let steps = try Row.fetchAll(
            db.cachedStatement(sql: "SELECT step, at, job_id, detail FROM interruption_steps WHERE interruption_id = ? ORDER BY seq"),
            arguments: [id]
        ).map { TimelineStep(step: $0["step"], at: $0["at"], jobId: $0["job_id"], detail: $0["detail"]) }
        return InterruptionDetail(interruption: interruption, timeline: steps)
    }

    /// An operator's drain: the interruption workflow with an operator-given deadline.
    func drain(nodeId: String, deadline: Millis, actor: String) async throws -> (InterruptionDetail, Bool) {
        guard let node = try await node(nodeId) else { throw StoreError.notFound(what: "node", id: nodeId) }
        guard node.node.state != .terminated else { throw StoreError.conflict("node '\(nodeId)' is terminated") }
        let notice = Notice(nodeId: nodeId, kind: .termination, deadline: deadline, source: "operator", eventId: Ids.new("drain"))
        return try await recordNotices([notice], actor: actor).results[0]
    }
}
