import GRDB

// MARK: - Row decoding

// Rows are decoded by position (GRDB's lookup by name lowercases the name on every read, which the profile showed):
// every SELECT of a model names its `columns` first, in that order. RowLayoutTests checks the order.

extension Pool {
    static let columns =
        "seq, name, capacity_type, gpu_type, gpus_per_node, zone, instance_type, hourly_price, min_nodes, max_nodes, stockout, created_at, updated_at"

    init(row: Row) {
        name = row[1]
        capacityType = CapacityType(rawValue: row[2]) ?? .spot
        gpuType = row[3]
        gpusPerNode = row[4]
        zone = row[5]
        instanceType = row[6]
        hourlyPrice = row[7]
        minNodes = row[8]
        maxNodes = row[9]
        stockout = row[10]
        createdAt = row[11]
        updatedAt = row[12]
    }
}

extension Node {
    static let columns =
        "seq, id, pool, gpus, gpus_allocated, state, provisioning_request_id, created_at, updated_at, idle_since, terminated_at"

    init(row: Row) {
        id = row[1]
        pool = row[2]
        gpus = row[3]
        gpusAllocated = row[4]
        state = NodeState(rawValue: row[5]) ?? .terminated
        provisioningRequestId = row[6]
        createdAt = row[7]
        updatedAt = row[8]
        idleSince = row[9]
        terminatedAt = row[10]
    }
}

extension Job {
    static let columns = """
        seq, id, tier, gpus, gpu_type, checkpointable, expected_duration_seconds, priority, state, node_id, attempt, \
        requeue_count, last_checkpoint_uri, last_checkpoint_step, last_checkpoint_at, resume_from_uri, resume_from_step, \
        resume_from_at, checkpoint_deadline, preempted_for, submitted_at, updated_at, started_at, finished_at
        """

    init(row: Row) {
        id = row[1]
        seq = row[0]
        tier = Tier(rawValue: row[2]) ?? .bestEffort
        gpus = row[3]
        gpuType = row[4]
        checkpointable = row[5]
        expectedDurationSeconds = row[6]
        priority = row[7]
        state = JobState(rawValue: row[8]) ?? .failed
        nodeId = row[9]
        attempt = row[10]
        requeueCount = row[11]
        if let uri: String = row[12] {
            lastCheckpoint = Checkpoint(uri: uri, step: row[13], at: row[14])
        }
        if let uri: String = row[15] {
            resumeFrom = Checkpoint(uri: uri, step: row[16], at: row[17])
        }
        checkpointDeadline = row[18]
        preemptedFor = row[19]
        submittedAt = row[20]
        updatedAt = row[21]
        startedAt = row[22]
        finishedAt = row[23]
    }
}

extension Interruption {
    static let columns = "seq, id, node_id, pool, kind, source, event_id, state, deadline, received_at, completed_at, node_was_live"

    init(row: Row) {
        id = row[1]
        seq = row[0]
        nodeId = row[2]
        pool = row[3]
        kind = InterruptionKind(rawValue: row[4]) ?? .termination
        source = row[5]
        eventId = row[6]
        state = InterruptionState(rawValue: row[7]) ?? .unmatched
        deadline = row[8]
        receivedAt = row[9]
        completedAt = row[10]
        nodeWasLive = row[11]
    }
}

extension ProvisioningRequest {
    static let columns = """
        seq, id, pool, reason, interruption_id, replaces_node_id, attempt_number, state, node_id, error, created_at, \
        submitted_at, resolved_at
        """

    init(row: Row) {
        id = row[1]
        seq = row[0]
        pool = row[2]
        reason = row[3]
        interruptionId = row[4]
        replacesNodeId = row[5]
        attemptNumber = row[6]
        state = ProvisioningState(rawValue: row[7]) ?? .failed
        nodeId = row[8]
        error = row[9]
        createdAt = row[10]
        submittedAt = row[11]
        resolvedAt = row[12]
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
    }

    /// Appends a step to an interruption's timeline.
    func appendStep(_ interruptionId: String, _ step: String, at: Millis, jobId: String? = nil, detail: String? = nil) throws {
        try self.cachedStatement(sql: "INSERT INTO interruption_steps (interruption_id, step, at, job_id, detail) VALUES (?, ?, ?, ?, ?)")
            .execute(arguments: [interruptionId, step, at, jobId, detail])
    }

    func fetchNode(_ id: String) throws -> Node? {
        try Row.fetchOne(self.cachedStatement(sql: "SELECT \(Node.columns) FROM nodes WHERE id = ?"), arguments: [id]).map(Node.init(row:))
    }

    func fetchJob(_ id: String) throws -> Job? {
        try Row.fetchOne(self.cachedStatement(sql: "SELECT \(Job.columns) FROM jobs WHERE id = ?"), arguments: [id]).map(Job.init(row:))
    }

    func fetchPool(_ name: String) throws -> Pool? {
        try Row.fetchOne(self.cachedStatement(sql: "SELECT \(Pool.columns) FROM pools WHERE name = ?"), arguments: [name]).map(
            Pool.init(row:))
    }

    func fetchInterruption(_ id: String) throws -> Interruption? {
        try Row.fetchOne(self.cachedStatement(sql: "SELECT \(Interruption.columns) FROM interruptions WHERE id = ?"), arguments: [id])
            .map(Interruption.init(row:))
    }

    /// The active (not completed, not unmatched) termination of a node, if any.
    func activeTermination(nodeId: String) throws -> Interruption? {
        try Row.fetchOne(
            self.cachedStatement(
                sql: """
                    SELECT \(Interruption.columns) FROM interruptions
                    WHERE node_id = ? AND kind = 'termination' AND state IN ('received', 'draining', 'drained')
                    """), arguments: [nodeId]
        ).map(Interruption.init(row:))
    }

    func jobsOnNode(_ nodeId: String) throws -> [Job] {
        try Row.fetchAll(
            self.cachedStatement(
                sql: "SELECT \(Job.columns) FROM jobs WHERE node_id = ? AND state IN ('running', 'checkpointing') ORDER BY seq"),
            arguments: [nodeId]
        ).map(Job.init(row:))
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
        if let nodeId = job.nodeId { try releaseGPUs(nodeId: nodeId, gpus: job.gpus, at: now) }
        try self.cachedStatement(
            sql: """
                UPDATE jobs SET state = 'queued', node_id = NULL, attempt = attempt + 1, requeue_count = requeue_count + 1,
                    resume_from_uri = last_checkpoint_uri, resume_from_step = last_checkpoint_step,
                    resume_from_at = last_checkpoint_at, checkpoint_deadline = NULL, preempted_for = NULL, updated_at = ?
                WHERE id = ?
                """
        ).execute(arguments: [now, job.id])
        var data: [String: JSONValue] = [
            "node_id": job.nodeId.map(JSONValue.string) ?? .null, "reason": .string(reason),
            "attempt": .int(job.attempt + 1),
        ]
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
