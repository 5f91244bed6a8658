extension SpotStore {
    // MARK: - The lease and its fence

    /// Takes or renews the named lease for `owner`; nil while another live owner holds it. A new holder gets a new
    /// fencing token (the old one plus one); a renewal keeps it.
    func acquireLease(_ name: String, owner: String, ttlMillis: Millis) async throws -> Lease? {
        try await leaseWrite { [self] db in
            let now = clock.now()
            try db.cachedStatement(
                sql: """
                    INSERT INTO leases (name, owner, expires_at, token) VALUES (?, ?, ?, 1)
                    ON CONFLICT(name) DO UPDATE SET
                        token = CASE WHEN leases.owner = excluded.owner AND leases.expires_at >= ? THEN leases.token
                                     ELSE leases.token + 1 END,
                        owner = excluded.owner, expires_at = excluded.expires_at
                    WHERE leases.owner = excluded.owner OR leases.expires_at < ?
                    """
            ).execute(arguments: [name, owner, now + ttlMillis, now, now])
            guard
                let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT owner, token FROM leases WHERE name = ?"), arguments: [name]),
                row["owner"] as String == owner
            else { return nil }
            return Lease(name: name, owner: owner, token: row["token"])
        }
    }

    /// Gives the lease up at once (it expires now); the token stays, so the next holder's is higher.
    func releaseLease(_ lease: Lease) async throws {
        try await leaseWrite { db in
            try db.cachedStatement(sql: "UPDATE leases SET expires_at = 0 WHERE name = ? AND owner = ? AND token = ?").execute(
                arguments: [lease.name, lease.owner, lease.token])
        }
    }

    func holdsLease(_ lease: Lease) async throws -> Bool {
        let now = clock.now()
        return try await anyRow(
            "SELECT 1 FROM leases WHERE name = ? AND owner = ? AND token = ? AND expires_at >= ?",
            [lease.name, lease.owner, lease.token, now])
    }

    /// Refuses a workflow write unless `lease` is still held, unexpired, with its token: inside the write's own
    /// transaction, so a process that lost the lease (paused, partitioned) can commit nothing.
    static func checkFence(_ db: Database, _ lease: Lease, now: Millis) throws {
        let held = try Int.fetchOne(
            db.cachedStatement(sql: "SELECT 1 FROM leases WHERE name = ? AND owner = ? AND token = ? AND expires_at >= ? /*FOR SHARE*/"),
            arguments: [lease.name, lease.owner, lease.token, now])
        guard held != nil else { throw StoreError.fenced }
    }

    /// Whether a read finds any row: a workflow step with nothing to do does not take the single writer (a pass
    /// runs every 200 ms; the writer is what placements and notices wait for).
    func anyRow(_ sql: String, _ arguments: StatementArguments = []) async throws -> Bool {
        try await read { db in try Int.fetchOne(db.cachedStatement(sql: "SELECT EXISTS (\(sql))"), arguments: arguments) == 1 }
    }

    // MARK: - Drains

    /// Starts the drain of up to `limit` newly reclaimed nodes, oldest notice first, in one transaction: `decide`
    /// (from `Domain/`) says what becomes of each job and where the replacement comes from; this writes it.
    func startDrains(
        limit: Int, lease: Lease, actor: String,
        decide: @escaping @Sendable ([DrainCase], CapacityView, Millis) -> [DrainDecision]
    ) async throws -> DrainReport {
        guard try await anyRow("SELECT 1 FROM interruptions WHERE state = 'received' AND kind = 'termination'") else {
            return DrainReport()
        }
        return try await write { [self] db in
            let now = clock.now()
            try Self.checkFence(db, lease, now: now)
            let received = try Interruption.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT \(Interruption.columns) FROM interruptions WHERE state = 'received' AND kind = 'termination'
                        ORDER BY seq LIMIT ?
                        """), arguments: [limit + 1])
            var report = DrainReport(moreWaiting: received.count > limit)
            var cases: [DrainCase] = []
            for interruption in received.prefix(limit) {
                guard let node = try db.fetchNode(interruption.nodeId) else { continue }
                cases.append(
                    DrainCase(
                        interruption: interruption, node: node, jobs: try db.jobsOnNode(node.id)))
            }
            guard !cases.isEmpty else { return report }
            let capacity = CapacityView(
                pools: try Pool.fetchAll(db.cachedStatement(sql: "SELECT \(Pool.columns) FROM pools ORDER BY seq")),
                stats: try Self.poolStats(db, now: now),
                policies: Dictionary(
                    try Self.policies(db, defaults: admissionLimit, now: now).map { ($0.tier, $0) }, uniquingKeysWith: { first, _ in first }
                ))
            for decision in decide(cases, capacity, now) {
                try Self.apply(db, decision, now: now, actor: actor, report: &report)
            }
            return report
        }
    }

    private static func apply(_ db: Database, _ decision: DrainDecision, now: Millis, actor: String, report: inout DrainReport) throws {
        let interruptionId = decision.interruptionId
        for (job, action) in decision.jobs {
            switch action {
            case .checkpoint(let deadline):
                try db.cachedStatement(
                    sql: "UPDATE jobs SET state = 'checkpointing', checkpoint_deadline = ?, updated_at = ? WHERE id = ?"
                ).execute(arguments: [deadline, now, job.id])
                try db.appendStep(interruptionId, "checkpoint_requested", at: now, jobId: job.id, detail: TimeFormat.rfc3339(deadline))
                var data: [String: JSONValue] = [
                    "node_id": .string(decision.nodeId), "interruption_id": .string(interruptionId),
                    "deadline": .string(TimeFormat.rfc3339(deadline)), "attempt": .int(job.attempt),
                ]
                if job.isGang { data["node_ids"] = .array(job.members.map(JSONValue.string)) }
                try db.appendEvent("job.checkpoint_requested", subject: "jobs/\(job.id)", actor: actor, at: now, data: data)
                report.checkpointsRequested += 1
            case .requeue:
                try db.requeue(job, at: now, actor: actor, interruptionId: interruptionId, reason: Requeue.notCheckpointable)
                report.requeued += 1
            }
        }
        try db.cachedStatement(sql: "UPDATE nodes SET state = 'draining', updated_at = ? WHERE id = ? AND state <> 'terminated'")
            .execute(arguments: [now, decision.nodeId])
        if db.changesCount == 1 {
            try db.appendEvent(
                "node.draining", subject: "nodes/\(decision.nodeId)", actor: actor, at: now,
                data: ["interruption_id": .string(interruptionId)])
        }
        try db.cachedStatement(sql: "UPDATE interruptions SET state = 'draining' WHERE id = ?").execute(arguments: [interruptionId])
        try db.appendStep(interruptionId, "drain_started", at: now)
        switch decision.replacement {
        case .pool(let target):
            if try requestReplacement(
                db, nodeId: decision.nodeId, pool: target, interruptionId: interruptionId, attemptNumber: 1, now: now, actor: actor)
            {
                report.provisioningRequested += 1
            }
        case .unavailable(let gpuType):
            try db.appendStep(interruptionId, "replacement_unavailable", at: now, detail: "no pool with room for \(gpuType)")
            try db.appendEvent(
                "provisioning.unavailable", subject: "nodes/\(decision.nodeId)", actor: actor, at: now,
                data: ["gpu_type": .string(gpuType)])
        case .none:
            break
        }
        report.drainsStarted += 1
    }

    /// Writes one replacement request for a lost node; the unique index makes a second one for the same node and
    /// attempt impossible. Returns whether it was written.
    static func requestReplacement(
        _ db: Database, nodeId: String, pool target: Pool, interruptionId: String?, attemptNumber: Int, now: Millis, actor: String
    ) throws -> Bool {
        let id = Ids.new("prov")
        let reason = Autoscaler.requestReason(attempt: attemptNumber)
        try db.cachedStatement(
            sql: """
                INSERT INTO provisioning_requests (id, pool, reason, interruption_id, replaces_node_id, attempt_number, state, created_at)
                VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)
                ON CONFLICT DO NOTHING
                """
        ).execute(arguments: [id, target.name, reason, interruptionId, nodeId, attemptNumber, now])
        guard db.changesCount == 1 else { return false }
        if let interruptionId {
            try db.appendStep(interruptionId, "replacement_requested", at: now, detail: "\(id) in \(target.name)")
        }
        try db.appendEvent(
            "provisioning.requested", subject: "provisioning-requests/\(id)", actor: actor, at: now,
            data: [
                "pool": .string(target.name), "reason": .string(reason), "replaces_node_id": .string(nodeId),
                "capacity_type": .string(target.capacityType.rawValue),
            ])
        return true
    }

    /// Requeues every job whose checkpoint deadline has passed, from its newest checkpoint, with `reason` (from
    /// `Domain/`) as its reason. Returns how many.
    func expireCheckpoints(lease: Lease, actor: String, reason: @escaping @Sendable (Job) -> String) async throws -> Int {
        guard try await anyRow("SELECT 1 FROM jobs WHERE state = 'checkpointing' AND checkpoint_deadline <= ?", [clock.now()]) else {
            return 0
        }
        return try await write { [self] db in
            let now = clock.now()
            try Self.checkFence(db, lease, now: now)
            let due = try Job.fetchAll(
                db.cachedStatement(
                    sql: "SELECT \(Job.columns) FROM jobs WHERE state = 'checkpointing' AND checkpoint_deadline <= ? ORDER BY seq"),
                arguments: [now])
            for job in due {
                let interruption = try db.activeTermination(job: job)
                if let interruption { try db.appendStep(interruption.id, "checkpoint_timeout", at: now, jobId: job.id) }
                try db.requeue(job, at: now, actor: actor, interruptionId: interruption?.id, reason: reason(job))
            }
            return due.count
        }
    }

    /// The candidates of `advanceInterruptions`: what `Drain.mayClose` admits (keep the two in step).
    private static let closeCandidates = """
        FROM interruptions i LEFT JOIN nodes n ON n.id = i.node_id
        WHERE i.state IN ('draining', 'drained') AND i.kind = 'termination'
          AND (i.state = 'draining' OR i.deadline <= ? OR n.state = 'terminated')
        """

    /// Closes interruptions under way, in one transaction, by the steps `close` (from `Domain/`) names for each:
    /// terminate the node (what still runs there is requeued), mark it drained, complete the interruption. Only
    /// interruptions a step could apply to are read (still draining, at or past their deadline, or with their node
    /// gone): a drained node waiting for its deadline, as a thousand do after a mass reclaim, costs nothing.
    func advanceInterruptions(
        lease: Lease, actor: String, close: @escaping @Sendable (InterruptionFacts, Millis) -> [Drain.CloseStep]
    ) async throws -> InterruptionStepsReport {
        guard try await anyRow("SELECT 1 " + Self.closeCandidates, [clock.now()]) else { return InterruptionStepsReport() }
        return try await write { [self] db in
            let now = clock.now()
            try Self.checkFence(db, lease, now: now)
            var report = InterruptionStepsReport()
            let columns = Interruption.columns.split(separator: ", ").map { "i.\($0)" }.joined(separator: ", ")
            let facts = try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT \(columns), n.state,
                            (SELECT COUNT(*) FROM jobs j WHERE (j.node_id = i.node_id
                                OR j.id IN (SELECT job_id FROM job_nodes g WHERE g.node_id = i.node_id))
                                AND +j.state IN ('running', 'checkpointing'))
                            + (SELECT COUNT(*) FROM service_replicas r WHERE r.node_id = i.node_id
                                AND r.state IN ('starting', 'ready', 'draining')),
                            (SELECT COUNT(*) FROM provisioning_requests p WHERE p.interruption_id = i.id AND p.state = 'pending')
                        \(Self.closeCandidates) ORDER BY i.seq
                        """), arguments: [now]
            ).map { row in
                InterruptionFacts(
                    interruption: Interruption(row: row), nodeState: (row[12] as String?).flatMap(NodeState.init(rawValue:)),
                    jobsLeft: row[13], pendingRequests: row[14])
            }
            for fact in facts {
                let interruption = fact.interruption
                for step in close(fact, now) {
                    switch step {
                    case .terminate:
                        guard let node = try db.fetchNode(interruption.nodeId) else { continue }
                        try Self.terminate(db, node: node, at: now, actor: actor, reason: Requeue.atDeadline)
                        try Self.requestRelease(db, node: node, reason: Self.reclaimedRelease, at: now, actor: actor)
                        report.nodesTerminated += 1
                    case .markDrained:
                        try db.cachedStatement(
                            sql: "UPDATE nodes SET state = 'drained', updated_at = ? WHERE id = ? AND state = 'draining'"
                        )
                        .execute(arguments: [now, interruption.nodeId])
                        if db.changesCount == 1 {
                            try db.appendEvent(
                                "node.drained", subject: "nodes/\(interruption.nodeId)", actor: actor, at: now,
                                data: ["interruption_id": .string(interruption.id)])
                        }
                        try db.cachedStatement(sql: "UPDATE interruptions SET state = 'drained' WHERE id = ?").execute(arguments: [
                            interruption.id
                        ])
                        try db.appendStep(interruption.id, "node_drained", at: now)
                        report.nodesDrained += 1
                        report.drainDurations.append(Double(now - interruption.receivedAt) / 1000)
                    case .complete:
                        try db.cachedStatement(sql: "UPDATE interruptions SET state = 'completed', completed_at = ? WHERE id = ?")
                            .execute(arguments: [now, interruption.id])
                        try db.appendStep(interruption.id, "completed", at: now)
                        try db.appendEvent(
                            "interruption.completed", subject: "nodes/\(interruption.nodeId)", actor: actor, at: now,
                            data: [
                                "interruption_id": .string(interruption.id),
                                "seconds": .double(Double(now - interruption.receivedAt) / 1000),
                            ])
                        report.interruptionsCompleted += 1
                    }
                }
            }
            return report
        }
    }
}
