// MARK: - Row decoding

// Rows are decoded by position (GRDB's lookup by name lowercases the name on every read, which the profile showed):
// every SELECT of a model names its `columns` first, in that order. RowLayoutTests checks the order.

extension Pool: ColumnDecodable {
    static let columns =
        "seq, name, capacity_type, gpu_type, gpus_per_node, zone, instance_type, hourly_price, min_nodes, max_nodes, stockout, created_at, updated_at"

    init(columns row: some ColumnSource) {
        name = row.text(1)
        capacityType = CapacityType(rawValue: row.text(2)) ?? .spot
        gpuType = row.text(3)
        gpusPerNode = row.int(4)
        zone = row.text(5)
        instanceType = row.text(6)
        hourlyPrice = row.double(7)
        minNodes = row.int(8)
        maxNodes = row.int(9)
        stockout = row.bool(10)
        createdAt = row.int(11)
        updatedAt = row.int(12)
    }
}

extension Node: ColumnDecodable {
    static let columns =
        "seq, id, pool, gpus, gpus_allocated, state, provisioning_request_id, created_at, updated_at, idle_since, terminated_at"

    init(columns row: some ColumnSource) {
        id = row.text(1)
        pool = row.text(2)
        gpus = row.int(3)
        gpusAllocated = row.int(4)
        state = NodeState(rawValue: row.text(5)) ?? .terminated
        provisioningRequestId = row.optionalText(6)
        createdAt = row.int(7)
        updatedAt = row.int(8)
        idleSince = row.optionalInt(9)
        terminatedAt = row.optionalInt(10)
    }
}

extension Job: ColumnDecodable {
    static let columns = """
        seq, id, tier, gpus, gpu_type, checkpointable, expected_duration_seconds, priority, state, node_id, attempt, \
        requeue_count, last_checkpoint_uri, last_checkpoint_step, last_checkpoint_at, resume_from_uri, resume_from_step, \
        resume_from_at, checkpoint_deadline, preempted_for, submitted_at, updated_at, started_at, finished_at, nodes, node_ids, \
        pending_reason
        """

    init(columns row: some ColumnSource) {
        id = row.text(1)
        seq = row.int(0)
        tier = Tier(rawValue: row.text(2)) ?? .bestEffort
        gpus = row.int(3)
        gpuType = row.optionalText(4)
        checkpointable = row.bool(5)
        expectedDurationSeconds = row.optionalInt(6)
        priority = row.int(7)
        state = JobState(rawValue: row.text(8)) ?? .failed
        nodeId = row.optionalText(9)
        attempt = row.int(10)
        requeueCount = row.int(11)
        if let uri = row.optionalText(12) {
            lastCheckpoint = Checkpoint(uri: uri, step: row.int(13), at: row.int(14))
        }
        if let uri = row.optionalText(15) {
            resumeFrom = Checkpoint(uri: uri, step: row.int(16), at: row.int(17))
        }
        checkpointDeadline = row.optionalInt(18)
        preemptedFor = row.optionalText(19)
        submittedAt = row.int(20)
        updatedAt = row.int(21)
        startedAt = row.optionalInt(22)
        finishedAt = row.optionalInt(23)
        nodes = row.int(24)
        if let members = row.optionalText(25) {
            nodeIds = members.split(separator: ",").map(String.init)
        } else if let nodeId {
            nodeIds = [nodeId]
        }
        pendingReason = row.optionalText(26)
    }
}

extension Interruption: ColumnDecodable {
    static let columns = "seq, id, node_id, pool, kind, source, event_id, state, deadline, received_at, completed_at, node_was_live"

    init(columns row: some ColumnSource) {
        id = row.text(1)
        seq = row.int(0)
        nodeId = row.text(2)
        pool = row.optionalText(3)
        kind = InterruptionKind(rawValue: row.text(4)) ?? .termination
        source = row.text(5)
        eventId = row.text(6)
        state = InterruptionState(rawValue: row.text(7)) ?? .unmatched
        deadline = row.optionalInt(8)
        receivedAt = row.int(9)
        completedAt = row.optionalInt(10)
        nodeWasLive = row.bool(11)
    }
}

extension ProvisioningRequest: ColumnDecodable {
    static let columns = """
        seq, id, pool, reason, interruption_id, replaces_node_id, attempt_number, state, node_id, error, created_at, \
        submitted_at, resolved_at, attempts, next_attempt_at, last_error
        """

    init(columns row: some ColumnSource) {
        id = row.text(1)
        seq = row.int(0)
        pool = row.text(2)
        reason = row.text(3)
        interruptionId = row.optionalText(4)
        replacesNodeId = row.optionalText(5)
        attemptNumber = row.int(6)
        state = ProvisioningState(rawValue: row.text(7)) ?? .failed
        nodeId = row.optionalText(8)
        error = row.optionalText(9)
        createdAt = row.int(10)
        submittedAt = row.optionalInt(11)
        resolvedAt = row.optionalInt(12)
        attempts = row.int(13)
        nextAttemptAt = row.optionalInt(14)
        lastError = row.optionalText(15)
    }
}

extension NodeRelease: ColumnDecodable {
    static let columns = """
        node_id, pool, reason, idempotency_key, state, attempts, next_attempt_at, last_error, created_at, acknowledged_at
        """

    init(columns row: some ColumnSource) {
        nodeId = row.text(0)
        pool = row.text(1)
        reason = row.text(2)
        idempotencyKey = row.text(3)
        acknowledged = row.text(4) == "acknowledged"
        attempts = row.int(5)
        nextAttemptAt = row.int(6)
        lastError = row.optionalText(7)
        createdAt = row.int(8)
        acknowledgedAt = row.optionalInt(9)
    }
}

extension Policy {
    init(row: Row) {
        tier = Tier(rawValue: row["tier"]) ?? .bestEffort
        let text: String = row["capacity_types"]
        capacityTypes = text.split(separator: ",").compactMap { CapacityType(rawValue: String($0)) }
        maxUncheckpointableSpotSeconds = row["max_uncheckpointable_spot_seconds"]
        spotRequiresCheckpointable = row["spot_requires_checkpointable"]
        updatedAt = row["updated_at"]
    }
}

extension Event {
    init(row: Row) {
        id = row["id"]
        at = row["at"]
        type = row["type"]
        subject = row["subject"]
        actor = row["actor"]
        data = JSONValue.fromText(row["data"])
    }
}

// MARK: - Shared writes

extension Database {
    /// Appends an audit event; called inside the transaction that makes the change.
    func appendEvent(_ type: String, subject: String, actor: String, at: Millis, data: [String: JSONValue] = [:]) throws {
        try self.cachedStatement(sql: "INSERT INTO events (at, type, subject, actor, data) VALUES (?, ?, ?, ?, ?)").execute(arguments: [
            at, type, subject, actor, JSONValue.object(data).jsonText,
        ])
        if case .postgres(let session) = backend { session.appendedEvents[type, default: 0] += 1 }
    }

    /// Appends a step to an interruption's timeline.
    func appendStep(_ interruptionId: String, _ step: String, at: Millis, jobId: String? = nil, detail: String? = nil) throws {
        try self.cachedStatement(sql: "INSERT INTO interruption_steps (interruption_id, step, at, job_id, detail) VALUES (?, ?, ?, ?, ?)")
            .execute(arguments: [interruptionId, step, at, jobId, detail])
    }

    func fetchNode(_ id: String) throws -> Node? {
        try Node.fetchOne(self.cachedStatement(sql: "SELECT \(Node.columns) FROM nodes WHERE id = ?"), arguments: [id])
    }

    func fetchJob(_ id: String) throws -> Job? {
        try Job.fetchOne(self.cachedStatement(sql: "SELECT \(Job.columns) FROM jobs WHERE id = ?"), arguments: [id])
    }

    func fetchPool(_ name: String) throws -> Pool? {
        try Pool.fetchOne(self.cachedStatement(sql: "SELECT \(Pool.columns) FROM pools WHERE name = ?"), arguments: [name])
    }

    func fetchInterruption(_ id: String) throws -> Interruption? {
        try Interruption.fetchOne(
            self.cachedStatement(sql: "SELECT \(Interruption.columns) FROM interruptions WHERE id = ?"), arguments: [id])
    }

    /// The active (not completed, not unmatched) termination of a node, if any.
    func activeTermination(nodeId: String) throws -> Interruption? {
        try Interruption.fetchOne(
            self.cachedStatement(
                sql: """
                    SELECT \(Interruption.columns) FROM interruptions
                    WHERE node_id = ? AND kind = 'termination' AND state IN ('received', 'draining', 'drained')
                    """), arguments: [nodeId]
        )
    }

    /// The jobs running or checkpointing on a node: those it is the first node of, and the gangs it is a member of.
    func jobsOnNode(_ nodeId: String) throws -> [Job] {
        try Job.fetchAll(
            self.cachedStatement(
                sql: "SELECT \(Job.columns) FROM jobs WHERE \(Self.onNode) AND \(Self.holdsGPUs) ORDER BY seq"),
            arguments: [nodeId, nodeId]
        )
    }

    /// The condition "the job is on node ?" (bind the node id twice): its first node, or a member of its gang.
    static let onNode = "(node_id = ? OR id IN (SELECT job_id FROM job_nodes WHERE node_id = ?))"
    /// The condition "the job holds GPUs", to go with `onNode`. The unary `+` keeps SQLite from reading every running
    /// job through `jobs_state_order` instead of the two node lookups (a multi-index OR): 2 ms against 0.01 ms per
    /// node at 20,000 running jobs.
    static let holdsGPUs = "+state IN ('running', 'checkpointing')"

    /// The active termination of any node the job is on (its first member's, when several have one).
    func activeTermination(job: Job) throws -> Interruption? {
        for nodeId in job.members {
            if let interruption = try activeTermination(nodeId: nodeId) { return interruption }
        }
        return nil
    }

    /// Takes a job off its nodes: every member's GPUs are given back and the gang's membership rows removed.
    /// The caller updates the job row itself (`node_id` and `node_ids` to NULL).
    func releaseJob(_ job: Job, at now: Millis) throws {
        try rollUpWork(tier: job.tier, gpus: job.gpus, nodeIds: job.members, from: job.startedAt, until: now)
        for nodeId in job.members { try releaseGPUs(nodeId: nodeId, gpus: job.gpus, at: now) }
        if job.isGang {
            try self.cachedStatement(sql: "DELETE FROM job_nodes WHERE job_id = ?").execute(arguments: [job.id])
        }
    }

    /// Gives a job's GPUs back to its node.
    func releaseGPUs(nodeId: String, gpus: Int, at now: Millis) throws {
        try self.cachedStatement(
            sql: """
                UPDATE nodes SET gpus_allocated = MAX(0, gpus_allocated - ?), updated_at = ?,
                    idle_since = CASE WHEN gpus_allocated - ? <= 0 THEN ? ELSE idle_since END
                WHERE id = ?
                """
        ).execute(arguments: [gpus, now, gpus, now, nodeId])
    }

    /// Puts a job back in the queue, resuming from its newest checkpoint; one step of the workflow.
    func requeue(_ job: Job, at now: Millis, actor: String, interruptionId: String?, reason: String) throws {
        let lost = try rollUpLoss(job, at: now, interrupted: interruptionId != nil)
        try releaseJob(job, at: now)
        try self.cachedStatement(
            sql: """
                UPDATE jobs SET state = 'queued', node_id = NULL, node_ids = NULL, attempt = attempt + 1, requeue_count = requeue_count + 1,
                    resume_from_uri = last_checkpoint_uri, resume_from_step = last_checkpoint_step,
                    resume_from_at = last_checkpoint_at, checkpoint_deadline = NULL, preempted_for = NULL, pending_reason = NULL,
                    updated_at = ?
                WHERE id = ?
                """
        ).execute(arguments: [now, job.id])
        var data: [String: JSONValue] = [
            "node_id": job.nodeId.map(JSONValue.string) ?? .null, "reason": .string(reason),
            "attempt": .int(job.attempt + 1), "lost_gpu_ms": .int(lost),
        ]
        if job.isGang { data["node_ids"] = .array(job.members.map(JSONValue.string)) }
        if let checkpoint = job.lastCheckpoint {
            data["resume_from"] = .object(["uri": .string(checkpoint.uri), "step": .int(checkpoint.step)])
        }
        if let interruptionId {
            data["interruption_id"] = .string(interruptionId)
            try appendStep(interruptionId, "requeued", at: now, jobId: job.id, detail: reason)
        }
        try appendEvent("job.requeued", subject: "jobs/\(job.id)", actor: actor, at: now, data: data)
    }
}
