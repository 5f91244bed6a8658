struct JobFilter: Sendable {
    var state: JobState?
    var tier: Tier?
    var node: String?
}

/// What a job is asked to be when submitted.
struct JobSubmission: Sendable {
    var id: String
    var tier: Tier
    var gpus: Int
    var gpuType: String?
    var checkpointable: Bool
    var expectedDurationSeconds: Int64?
    var priority: Int64
    /// Nodes the job spans, with `gpus` on each.
    var nodes: Int = 1

    /// The job as it will be stored (queued).
    func job(at now: Millis) -> Job {
        Job(
            id: id, seq: 0, tier: tier, gpus: gpus, gpuType: gpuType, checkpointable: checkpointable,
            expectedDurationSeconds: expectedDurationSeconds, priority: priority, state: .queued, attempt: 0, requeueCount: 0,
            submittedAt: now, updatedAt: now, nodes: nodes)
    }
}

/// How a running job ended.
enum JobOutcome: String, Sendable {
    case completed, failed, cancelled
}

extension SpotStore {
    func submitJob(_ submission: JobSubmission, actor: String) async throws -> Job {
        try await write { [self] db in
            let now = clock.now()
            if try db.fetchJob(submission.id) != nil { throw StoreError.conflict("job '\(submission.id)' already exists") }
            if submission.nodes > 1,
                let policy = try Self.policies(db, defaults: admissionLimit, now: now).first(where: { $0.tier == submission.tier }),
                let refusal = Placement.gangRefusal(submission.job(at: now), policy: policy, pools: try catalog.current(db).pools)
            {
                throw StoreError.unprocessable(field: "nodes", refusal)
            }
            try db.cachedStatement(
                sql: """
                    INSERT INTO jobs (id, tier, gpus, gpu_type, checkpointable, expected_duration_seconds, priority, state,
                        attempt, requeue_count, submitted_at, updated_at, nodes)
                    VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', 0, 0, ?, ?, ?)
                    """
            ).execute(arguments: [
                submission.id, submission.tier.rawValue, submission.gpus, submission.gpuType, submission.checkpointable,
                submission.expectedDurationSeconds, submission.priority, now, now, submission.nodes,
            ])
            var data: [String: JSONValue] = ["tier": .string(submission.tier.rawValue), "gpus": .int(Int64(submission.gpus))]
            if submission.nodes > 1 { data["nodes"] = .int(Int64(submission.nodes)) }
            try db.appendEvent("job.submitted", subject: "jobs/\(submission.id)", actor: actor, at: now, data: data)
            return try db.fetchJob(submission.id)!
        }
    }

    func listJobs(_ filter: JobFilter, _ page: PageRequest) async throws -> Page<Job> {
        try await read { db in
            var query = ListQuery("SELECT \(Job.columns) FROM jobs", after: page)
            query.equals("state", filter.state?.rawValue)
            query.equals("tier", filter.tier?.rawValue)
            query.condition(Database.onNode, filter.node.map { [$0, $0] })
            return Self.page(try query.fetch(db, limit: page.limit), limit: page.limit, map: Job.init(row:))
        }
    }

    func job(_ id: String) async throws -> (Job, [Event])? {
        try await read { db in
            guard let job = try db.fetchJob(id) else { return nil }
            let history = try Row.fetchAll(
                db.cachedStatement(sql: "SELECT * FROM events WHERE subject = ? ORDER BY id LIMIT 200"), arguments: ["jobs/\(id)"]
            ).map(Event.init(row:))
            return (job, history)
        }
    }

    /// Loads a job that a report is about, fencing out stale attempts.
    private static func reportable(_ db: Database, id: String, attempt: Int64?, action: String) throws -> Job {
        guard let job = try db.fetchJob(id) else { throw StoreError.notFound(what: "job", id: id) }
        if let attempt, attempt != job.attempt {
            throw StoreError.staleAttempt(
                "job '\(id)' is on attempt \(job.attempt); a report for attempt \(attempt) is stale and was refused")
        }
        guard job.state.onNode else {
            throw StoreError.conflict("job '\(id)' is \(job.state.rawValue); only a running job can be \(action)")
        }
        return job
    }

    /// A checkpoint was saved. A job that was asked to checkpoint is requeued from it.
    func reportCheckpoint(jobId: String, uri: String, step: Int64, attempt: Int64?, actor: String) async throws -> Job {
        try await write { [self] db in
            let now = clock.now()
            var job = try Self.reportable(db, id: jobId, attempt: attempt, action: "checkpointed")
            if let last = job.lastCheckpoint, step < last.step {
                throw StoreError.conflict("job '\(jobId)' already has a checkpoint at step \(last.step); step \(step) is older")
            }
            try db.cachedStatement(
                sql:
                    "UPDATE jobs SET last_checkpoint_uri = ?, last_checkpoint_step = ?, last_checkpoint_at = ?, updated_at = ? WHERE id = ?"
            ).execute(arguments: [uri, step, now, now, jobId])
            try db.appendEvent(
                "job.checkpointed", subject: "jobs/\(jobId)", actor: actor, at: now,
                data: ["uri": .string(uri), "step": .int(step), "attempt": .int(job.attempt)])
            job.lastCheckpoint = Checkpoint(uri: uri, step: step, at: now)
            if job.state == .checkpointing {
                let interruption = try db.activeTermination(job: job)
                if let interruption {
                    try db.appendStep(interruption.id, "checkpoint_acknowledged", at: now, jobId: jobId, detail: uri)
                }
                let reason = job.preemptedFor.map { "preempted for premium job \($0)" } ?? "checkpointed before reclaim"
                try db.requeue(job, at: now, actor: actor, interruptionId: interruption?.id, reason: reason)
            }
            return try db.fetchJob(jobId)!
        }
    }

    /// Ends a job: completed or failed (reports from its attempt) or cancelled (by an operator or scheduler).
    func finishJob(_ jobId: String, outcome: JobOutcome, attempt: Int64?, reason: String?, actor: String) async throws -> Job {
        try await write { [self] db in
            let now = clock.now()
            let job: Job
            if outcome == .cancelled {
                guard let found = try db.fetchJob(jobId) else { throw StoreError.notFound(what: "job", id: jobId) }
                if let attempt, attempt != found.attempt {
                    throw StoreError.staleAttempt(
                        "job '\(jobId)' is on attempt \(found.attempt); a request for attempt \(attempt) is stale")
                }
                guard !found.state.finished else { throw StoreError.conflict("job '\(jobId)' is already \(found.state.rawValue)") }
                job = found
            } else {
                job = try Self.reportable(db, id: jobId, attempt: attempt, action: outcome.rawValue)
            }
            let interruption = job.state == .checkpointing ? try db.activeTermination(job: job) : nil
            try db.releaseJob(job, at: now)
            try db.cachedStatement(
                sql: """
                    UPDATE jobs SET state = ?, node_id = NULL, node_ids = NULL, checkpoint_deadline = NULL, preempted_for = NULL,
                        finished_at = ?, updated_at = ? WHERE id = ?
                    """
            ).execute(arguments: [outcome.rawValue, now, now, jobId])
            var data: [String: JSONValue] = ["attempt": .int(job.attempt)]
            if let nodeId = job.nodeId { data["node_id"] = .string(nodeId) }
            if job.isGang, !job.members.isEmpty { data["node_ids"] = .array(job.members.map(JSONValue.string)) }
            if let reason { data["reason"] = .string(reason) }
            try db.appendEvent("job.\(outcome.rawValue)", subject: "jobs/\(jobId)", actor: actor, at: now, data: data)
            if let interruption {
                try db.appendStep(interruption.id, "job_\(outcome.rawValue)", at: now, jobId: jobId)
            }
            return try db.fetchJob(jobId)!
        }
    }
}
