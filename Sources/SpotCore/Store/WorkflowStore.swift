import GRDB

/// Settings the workflows read.
struct WorkflowSettings: Sendable {
    var drainMarginSeconds: Int64 = 10
    var scaleDownIdleSeconds: Int64 = 600
    var actor = "worker"
}

/// What one reconcile pass did; used by metrics and tests.
struct ReconcileReport: Sendable, Equatable {
    var drainsStarted = 0
    var checkpointsRequested = 0
    var requeued = 0
    var checkpointsExpired = 0
    var nodesDrained = 0
    var nodesTerminated = 0
    var interruptionsCompleted = 0
    var provisioningRequested = 0
    var drainDurations: [Double] = []
    /// More drains were waiting than one pass takes: run the next pass at once.
    var moreWaiting = false

    var didWork: Bool {
        drainsStarted + requeued + checkpointsExpired + nodesDrained + nodesTerminated + interruptionsCompleted
            + provisioningRequested > 0
    }
}

extension SQLiteStore {
    /// How many new terminations one pass starts draining.
    static let drainsPerPass = 100

    /// Runs every interruption-workflow step that is due, each step exactly once; one transaction.
    /// Idempotent: it reads the state it needs, decides, writes. Safe to run after a crash at any point.
    func reconcileInterruptions(_ settings: WorkflowSettings) async throws -> ReconcileReport {
        try await write { [self] db in
            let now = clock.now()
            var report = ReconcileReport()
            try startDrains(db, now: now, settings: settings, report: &report)
            try expireCheckpoints(db, now: now, settings: settings, report: &report)
            try terminateDue(db, now: now, settings: settings, report: &report)
            try finishDrains(db, now: now, settings: settings, report: &report)
            try completeInterruptions(db, now: now, settings: settings, report: &report)
            return report
        }
    }

    /// Step 2: checkpoint or requeue every job on a newly reclaimed node; ask for its replacement.
    private func startDrains(_ db: Database, now: Millis, settings: WorkflowSettings, report: inout ReconcileReport) throws {
        let received = try Interruption.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT \(Interruption.columns) FROM interruptions WHERE state = 'received' AND kind = 'termination'
                    ORDER BY seq LIMIT \(Self.drainsPerPass + 1)
                    """)
        )
        // Pools and their counts are read once per pass and kept current as requests are made: a mass reclaim
        // of a thousand nodes must not recount every pool a thousand times.
        var capacity: CapacitySnapshot?
        // A pass takes a bounded slice, so that notices arriving meanwhile are not held behind a mass reclaim.
        report.moreWaiting = received.count > Self.drainsPerPass
        for interruption in received.prefix(Self.drainsPerPass) {
            guard let node = try db.fetchNode(interruption.nodeId) else { continue }
            for job in try db.jobsOnNode(node.id) where job.state == .running {
                switch Drain.plan(job: job, nodeDeadline: interruption.deadline, now: now, marginSeconds: settings.drainMarginSeconds) {
                case .checkpoint(let deadline):
                    try db.cachedStatement(
                        sql: "UPDATE jobs SET state = 'checkpointing', checkpoint_deadline = ?, updated_at = ? WHERE id = ?"
                    ).execute(arguments: [deadline, now, job.id])
                    try db.appendStep(interruption.id, "checkpoint_requested", at: now, jobId: job.id, detail: TimeFormat.rfc3339(deadline))
                    try db.appendEvent(
                        "job.checkpoint_requested", subject: "jobs/\(job.id)", actor: settings.actor, at: now,
                        data: [
                            "node_id": .string(node.id), "interruption_id": .string(interruption.id),
                            "deadline": .string(TimeFormat.rfc3339(deadline)), "attempt": .int(job.attempt),
                        ])
                    report.checkpointsRequested += 1
                case .requeue:
                    try db.requeue(
                        job, at: now, actor: settings.actor, interruptionId: interruption.id, reason: "node reclaimed; not checkpointable")
                    report.requeued += 1
                }
            }
            if node.state.live {
                try db.cachedStatement(sql: "UPDATE nodes SET state = 'draining', updated_at = ? WHERE id = ?").execute(arguments: [
                    now, node.id,
                ])
                try db.appendEvent(
                    "node.draining", subject: "nodes/\(node.id)", actor: settings.actor, at: now,
                    data: ["interruption_id": .string(interruption.id)])
            }
            try db.cachedStatement(sql: "UPDATE interruptions SET state = 'draining' WHERE id = ?").execute(arguments: [interruption.id])
            try db.appendStep(interruption.id, "drain_started", at: now)
            if interruption.nodeWasLive {
                report.provisioningRequested += try requestReplacement(
                    db, for: node, interruption: interruption, attemptNumber: 1, now: now, actor: settings.actor,
                    capacity: &capacity)
            }
            report.drainsStarted += 1
        }
    }

    /// Asks for one replacement of a lost node; the unique index makes a second ask for the same node impossible.
    func requestReplacement(
        _ db: Database, for node: Node, interruption: Interruption?, attemptNumber: Int, now: Millis, actor: String,
        excluding: Set<String> = [], onDemandOnly: Bool = false, capacity: inout CapacitySnapshot?
    ) throws -> Int {
        if capacity == nil { capacity = try CapacitySnapshot(db, now: now) }
        let pools = capacity!.pools
        let stats = capacity!.stats
        guard let lostPool = pools.first(where: { $0.name == node.pool }) else { return 0 }
        guard
            let target = Autoscaler.replacementPool(
                lost: lostPool, pools: pools, stats: stats, excluding: excluding, onDemandOnly: onDemandOnly)
        else {
            if let interruption {
                try db.appendStep(interruption.id, "replacement_unavailable", at: now, detail: "no pool with room for \(lostPool.gpuType)")
            }
            try db.appendEvent(
                "provisioning.unavailable", subject: "nodes/\(node.id)", actor: actor, at: now,
                data: ["gpu_type": .string(lostPool.gpuType)])
            return 0
        }
        let id = Ids.new("prov")
        let reason = attemptNumber == 1 ? "replacement" : "fallback"
        try db.cachedStatement(
            sql: """
                INSERT INTO provisioning_requests (id, pool, reason, interruption_id, replaces_node_id, attempt_number, state, created_at)
                VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)
                ON CONFLICT DO NOTHING
                """
        ).execute(arguments: [id, target.name, reason, interruption?.id, node.id, attemptNumber, now])
        guard db.changesCount == 1 else { return 0 }
        capacity!.stats[target.name, default: PoolStats()].committedNodes += 1
        if let interruption {
            try db.appendStep(interruption.id, "replacement_requested", at: now, detail: "\(id) in \(target.name)")
        }
        try db.appendEvent(
            "provisioning.requested", subject: "provisioning-requests/\(id)", actor: actor, at: now,
            data: [
                "pool": .string(target.name), "reason": .string(reason), "replaces_node_id": .string(node.id),
                "capacity_type": .string(target.capacityType.rawValue),
            ])
        return 1
    }

    /// Step 3: a checkpoint deadline that passed requeues the job from its newest checkpoint.
    private func expireCheckpoints(_ db: Database, now: Millis, settings: WorkflowSettings, report: inout ReconcileReport) throws {
        let due = try Job.fetchAll(
            db.cachedStatement(
                sql: "SELECT \(Job.columns) FROM jobs WHERE state = 'checkpointing' AND checkpoint_deadline <= ? ORDER BY seq"),
            arguments: [now]
        )
        for job in due {
            let interruption = try job.nodeId.flatMap { try db.activeTermination(nodeId: $0) }
            if let interruption { try db.appendStep(interruption.id, "checkpoint_timeout", at: now, jobId: job.id) }
            let reason =
                job.preemptedFor.map { "preempted for premium job \($0); checkpoint deadline passed" }
                ?? "checkpoint deadline passed"
            try db.requeue(job, at: now, actor: settings.actor, interruptionId: interruption?.id, reason: reason)
            report.checkpointsExpired += 1
        }
    }

    /// Step 6: at the deadline the node is gone; whatever is still on it is requeued.
    private func terminateDue(_ db: Database, now: Millis, settings: WorkflowSettings, report: inout ReconcileReport) throws {
        let due = try Interruption.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT \(Interruption.columns) FROM interruptions
                    WHERE state IN ('draining', 'drained') AND kind = 'termination' AND deadline <= ?
                    """), arguments: [now]
        )
        for interruption in due {
            guard let node = try db.fetchNode(interruption.nodeId), node.state != .terminated else { continue }
            try Self.terminate(db, node: node, at: now, actor: settings.actor, reason: "reclaimed at deadline")
            report.nodesTerminated += 1
        }
    }

    /// A draining node with no jobs left is drained.
    private func finishDrains(_ db: Database, now: Millis, settings: WorkflowSettings, report: inout ReconcileReport) throws {
        let draining = try Interruption.fetchAll(
            db.cachedStatement(sql: "SELECT \(Interruption.columns) FROM interruptions WHERE state = 'draining' AND kind = 'termination'")
        )
        for interruption in draining where try db.jobsOnNode(interruption.nodeId).isEmpty {
            try db.cachedStatement(sql: "UPDATE nodes SET state = 'drained', updated_at = ? WHERE id = ? AND state = 'draining'").execute(
                arguments: [now, interruption.nodeId])
            if db.changesCount == 1 {
                try db.appendEvent(
                    "node.drained", subject: "nodes/\(interruption.nodeId)", actor: settings.actor, at: now,
                    data: ["interruption_id": .string(interruption.id)])
            }
            try db.cachedStatement(sql: "UPDATE interruptions SET state = 'drained' WHERE id = ?").execute(arguments: [interruption.id])
            try db.appendStep(interruption.id, "node_drained", at: now)
            report.nodesDrained += 1
            report.drainDurations.append(Double(now - interruption.receivedAt) / 1000)
        }
    }

    /// Completed: node terminated, every job requeued, replacement requests resolved.
    private func completeInterruptions(_ db: Database, now: Millis, settings: WorkflowSettings, report: inout ReconcileReport) throws {
        let open = try Interruption.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT \(Interruption.columns) FROM interruptions i
                    WHERE i.state IN ('draining', 'drained') AND i.kind = 'termination'
                      AND EXISTS (SELECT 1 FROM nodes n WHERE n.id = i.node_id AND n.state = 'terminated')
                      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.node_id = i.node_id AND j.state IN ('running', 'checkpointing'))
                      AND NOT EXISTS (SELECT 1 FROM provisioning_requests p WHERE p.interruption_id = i.id AND p.state = 'pending')
                    """)
        )
        for interruption in open {
            try db.cachedStatement(sql: "UPDATE interruptions SET state = 'completed', completed_at = ? WHERE id = ?").execute(arguments: [
                now, interruption.id,
            ])
            try db.appendStep(interruption.id, "completed", at: now)
            try db.appendEvent(
                "interruption.completed", subject: "nodes/\(interruption.nodeId)", actor: settings.actor, at: now,
                data: ["interruption_id": .string(interruption.id), "seconds": .double(Double(now - interruption.receivedAt) / 1000)])
            report.interruptionsCompleted += 1
        }
    }
}
