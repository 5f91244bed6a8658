/// The outcome of one placement call.
struct PlacementResult: Sendable, Equatable {
    var jobId: String
    var nodeId: String
    var pool: String
    var capacityType: CapacityType
    var attempt: Int64
    var reasons: [String]
    /// Every node, `nodeId` first (one for a single-node job).
    var nodeIds: [String]
}

extension SpotStore {
    // MARK: - Policies

    func policies() async throws -> [Policy] {
        try await read { [self] db in try Self.policies(db, defaults: admissionLimit, now: 0) }
    }

    static func policies(_ db: Database, defaults admissionLimit: Int64, now: Millis) throws -> [Policy] {
        let stored = try Row.fetchAll(db.cachedStatement(sql: "SELECT * FROM policies")).map(Policy.init(row:))
        return withDefaults(stored, admissionLimit: admissionLimit, now: now)
    }

    /// The stored policies, with the default for any tier that has none.
    static func withDefaults(_ stored: [Policy], admissionLimit: Int64, now: Millis) -> [Policy] {
        Policy.defaults(admissionLimit: admissionLimit, at: now).map { policy in
            stored.first { $0.tier == policy.tier } ?? policy
        }
    }

    /// Seeds the default policies once, with the configured admission limit.
    func seedPolicies(admissionLimit: Int64) throws {
        try blockingWrite { [self] db in
            for policy in Policy.defaults(admissionLimit: admissionLimit, at: clock.now()) {
                try db.cachedStatement(
                    sql: """
                        INSERT INTO policies (tier, capacity_types, max_uncheckpointable_spot_seconds,
                            spot_requires_checkpointable, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING
                        """
                ).execute(arguments: [
                    policy.tier.rawValue, policy.capacityTypes.map(\.rawValue).joined(separator: ","),
                    policy.maxUncheckpointableSpotSeconds, policy.spotRequiresCheckpointable, policy.updatedAt,
                ])
            }
        }
    }

    func putPolicy(_ policy: Policy, actor: String) async throws -> Policy {
        try await write { db in
            try db.cachedStatement(
                sql: """
                    INSERT INTO policies (tier, capacity_types, max_uncheckpointable_spot_seconds, spot_requires_checkpointable, updated_at)
                    VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT(tier) DO UPDATE SET capacity_types = excluded.capacity_types,
                        max_uncheckpointable_spot_seconds = excluded.max_uncheckpointable_spot_seconds,
                        spot_requires_checkpointable = excluded.spot_requires_checkpointable, updated_at = excluded.updated_at
                    """
            ).execute(arguments: [
                policy.tier.rawValue, policy.capacityTypes.map(\.rawValue).joined(separator: ","),
                policy.maxUncheckpointableSpotSeconds, policy.spotRequiresCheckpointable, policy.updatedAt,
            ])
            try db.appendEvent(
                "policy.updated", subject: "policies/\(policy.tier.rawValue)", actor: actor, at: policy.updatedAt,
                data: ["capacity_types": .array(policy.capacityTypes.map { .string($0.rawValue) })])
            return policy
        }
    }

    // MARK: - One placement

    /// Places one queued job (or answers what would happen, for a dry run), in one transaction.
    func place(jobId: String, dryRun: Bool, actor: String) async throws -> PlacementResult {
        let hints = try await placementHints.current(self, now: clock.now())
        let outcome: Result<PlacementResult, StoreError> = try await write { [self] db in
            let now = clock.now()
            guard let job = try db.fetchJob(jobId) else { throw StoreError.notFound(what: "job", id: jobId) }
            guard job.state == .queued else {
                throw StoreError.conflict("job '\(jobId)' is \(job.state.rawValue); only a queued job can be placed")
            }
            let catalog = try catalog.current(db)
            let policy = Self.withDefaults(catalog.policies, admissionLimit: admissionLimit, now: now).first { $0.tier == job.tier }!
            let pools = catalog.pools
            var candidates = pools.map { pool in
                PoolCandidate(
                    pool: pool, stats: hints.stats[pool.name] ?? PoolStats(), bestEffortJobs: hints.bestEffortJobs[pool.name] ?? 0)
            }
            if job.isGang {
                return try placeGang(db, job: job, policy: policy, candidates: candidates, dryRun: dryRun, now: now, actor: actor)
            }
            // Look up nodes only as far as the ranking needs: a fitting node in a better-ranked pool settles it.
            for group in Placement.searchGroups(job: job, policy: policy, candidates: candidates) {
                for index in group {
                    candidates[index].bestNode = try Node.fetchOne(
                        db.cachedStatement(
                            sql: """
                                SELECT \(Node.columns) FROM nodes INDEXED BY nodes_free
                                WHERE pool = ? AND state = 'ready' AND gpus - gpus_allocated >= ?
                                ORDER BY gpus - gpus_allocated, seq LIMIT 1
                                """), arguments: [candidates[index].pool.name, job.gpus])
                }
                if group.contains(where: { candidates[$0].bestNode != nil }) { break }
            }
            var decision = Placement.decide(job: job, policy: policy, candidates: candidates)
            if case .refuse = decision {
                // Refusals explain themselves pool by pool: use fresh node counts, not the cached hints.
                let fresh = try Self.poolStats(db, now: now)
                for index in candidates.indices { candidates[index].stats = fresh[candidates[index].pool.name] ?? PoolStats() }
                decision = Placement.decide(job: job, policy: policy, candidates: candidates)
            }
            return try finishPlacement(db, job: job, policy: policy, decision: decision, dryRun: dryRun, now: now, actor: actor)
        }
        return try outcome.get()
    }

    /// A gang's placement: every eligible pool's fitting nodes (as many as the gang has members), then the decision.
    private func placeGang(
        _ db: Database, job: Job, policy: Policy, candidates: [PoolCandidate], dryRun: Bool, now: Millis, actor: String
    ) throws -> Result<PlacementResult, StoreError> {
        var candidates = candidates
        for index in candidates.indices where Placement.poolRefusal(job: job, policy: policy, pool: candidates[index].pool) == nil {
            candidates[index].fittingNodes = try Node.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT \(Node.columns) FROM nodes INDEXED BY nodes_free
                        WHERE pool = ? AND state = 'ready' AND gpus - gpus_allocated >= ?
                        ORDER BY gpus - gpus_allocated, seq LIMIT ?
                        """), arguments: [candidates[index].pool.name, job.gpus, job.nodes])
        }
        var decision = Placement.decideGang(job: job, policy: policy, candidates: candidates)
        if case .refuse = decision {
            let fresh = try Self.poolStats(db, now: now)
            for index in candidates.indices { candidates[index].stats = fresh[candidates[index].pool.name] ?? PoolStats() }
            decision = Placement.decideGang(job: job, policy: policy, candidates: candidates)
        }
        return try finishPlacement(db, job: job, policy: policy, decision: decision, dryRun: dryRun, now: now, actor: actor)
    }

    /// Binds what a placement decided (unless a dry run) or explains the refusal, starting premium protection.
    private func finishPlacement(
        _ db: Database, job: Job, policy: Policy, decision: PlacementDecision, dryRun: Bool, now: Millis, actor: String
    ) throws -> Result<PlacementResult, StoreError> {
        let attempt = max(job.attempt, 1)
        switch decision {
        case .refuse(let reasons):
            var detail =
                "no eligible capacity for job '\(job.id)': "
                + reasons.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "; ")
            if !dryRun, job.tier == .premium,
                let note = try Self.preemptFor(db, job: job, policy: policy, now: now, actor: actor, choose: PremiumProtection.choose)
            {
                detail += "; \(note)"
            }
            return .failure(.noCapacity(detail, reasons: reasons))
        case .place(let nodeId, let pool, let capacityType, let reasons):
            if !dryRun {
                try Self.bind(db, job: job, nodeId: nodeId, pool: pool, attempt: attempt, at: now, actor: actor, reasons: reasons)
                if job.tier == .bestEffort { placementHints.placedBestEffort(pool: pool) }
            }
            return .success(
                PlacementResult(
                    jobId: job.id, nodeId: nodeId, pool: pool, capacityType: capacityType, attempt: attempt, reasons: reasons,
                    nodeIds: [nodeId]))
        case .placeGang(let members, let reasons):
            if !dryRun {
                try Self.bindGang(db, job: job, members: members, attempt: attempt, at: now, actor: actor, reasons: reasons)
                if job.tier == .bestEffort { for member in members { placementHints.placedBestEffort(pool: member.pool) } }
            }
            return .success(
                PlacementResult(
                    jobId: job.id, nodeId: members[0].nodeId, pool: members[0].pool, capacityType: members[0].capacityType,
                    attempt: attempt, reasons: reasons, nodeIds: members.map(\.nodeId)))
        }
    }

    /// Binds a gang to all its nodes or none: each member's GPUs are allocated in the caller's transaction (a
    /// savepoint of its own), and a member without room any more throws, which rolls back the members before it.
    static func bindGang(
        _ db: Database, job: Job, members: [GangMember], attempt: Int64, at now: Millis, actor: String, reasons: [String]
    ) throws {
        guard members.count == job.nodes, Set(members.map(\.nodeId)).count == members.count else {
            throw StoreError.conflict("a gang of \(job.nodes) needs as many distinct nodes; \(members.count) were chosen")
        }
        for (index, member) in members.enumerated() {
            try db.cachedStatement(
                sql: """
                    UPDATE nodes SET gpus_allocated = gpus_allocated + ?, idle_since = NULL, updated_at = ?
                    WHERE id = ? AND state = 'ready' AND gpus - gpus_allocated >= ?
                    """
            ).execute(arguments: [job.gpus, now, member.nodeId, job.gpus])
            guard db.changesCount == 1 else {
                throw StoreError.conflict("node '\(member.nodeId)' no longer has room for a member of gang '\(job.id)'")
            }
            try db.cachedStatement(sql: "INSERT INTO job_nodes (job_id, node_id, member) VALUES (?, ?, ?)").execute(arguments: [
                job.id, member.nodeId, index,
            ])
        }
        let nodeIds = members.map(\.nodeId)
        try db.cachedStatement(
            sql: """
                UPDATE jobs SET state = 'running', node_id = ?, node_ids = ?, attempt = ?, started_at = ?, updated_at = ?
                WHERE id = ? AND state = 'queued'
                """
        ).execute(arguments: [nodeIds[0], nodeIds.joined(separator: ","), attempt, now, now, job.id])
        guard db.changesCount == 1 else { throw StoreError.conflict("job '\(job.id)' is no longer queued") }
        try db.appendEvent(
            "job.placed", subject: "jobs/\(job.id)", actor: actor, at: now,
            data: [
                "node_id": .string(nodeIds[0]), "node_ids": .array(nodeIds.map(JSONValue.string)), "pool": .string(members[0].pool),
                "pools": .array(members.map { .string($0.pool) }), "attempt": .int(attempt),
                "reasons": .array(reasons.map(JSONValue.string)),
            ])
    }

    /// Binds a job to a node: GPUs allocated, job running; inside the caller's transaction.
    static func bind(
        _ db: Database, job: Job, nodeId: String, pool: String, attempt: Int64, at now: Millis, actor: String, reasons: [String]
    ) throws {
        try db.cachedStatement(
            sql: """
                UPDATE nodes SET gpus_allocated = gpus_allocated + ?, idle_since = NULL, updated_at = ?
                WHERE id = ? AND state = 'ready' AND gpus - gpus_allocated >= ?
                """
        ).execute(arguments: [job.gpus, now, nodeId, job.gpus])
        guard db.changesCount == 1 else { throw StoreError.conflict("node '\(nodeId)' no longer has room for job '\(job.id)'") }
        try db.cachedStatement(
            sql:
                "UPDATE jobs SET state = 'running', node_id = ?, attempt = ?, started_at = ?, updated_at = ? WHERE id = ? AND state = 'queued'"
        ).execute(arguments: [nodeId, attempt, now, now, job.id])
        guard db.changesCount == 1 else { throw StoreError.conflict("job '\(job.id)' is no longer queued") }
        try db.appendEvent(
            "job.placed", subject: "jobs/\(job.id)", actor: actor, at: now,
            data: [
                "node_id": .string(nodeId), "pool": .string(pool), "attempt": .int(attempt),
                "reasons": .array(reasons.map(JSONValue.string)),
            ])
    }

    // MARK: - Premium protection

    /// Asks best-effort jobs on stable capacity to yield to a premium job, those `choose` (from `Domain/`) picks;
    /// returns a note, or nil when nothing can yield.
    static func preemptFor(
        _ db: Database, job: Job, policy: Policy, now: Millis, actor: String,
        choose: (Job, Policy, [Placement.PreemptionSite], Millis) -> Placement.PreemptionChoice?
    ) throws -> String? {
        let pending =
            try Int.fetchOne(
                db.cachedStatement(sql: "SELECT COALESCE(SUM(gpus), 0) FROM jobs WHERE preempted_for = ? AND state = 'checkpointing'"),
                arguments: [job.id]
            ) ?? 0
        if pending > 0 { return "best-effort jobs are already yielding \(pending) GPU(s) to it" }
        // Stable ready nodes where best-effort work runs (its first node or a gang member's); for a gang also those
        // with room for a member already, so that its members can be found in one zone.
        let freeNodes =
            job.isGang
            ? " UNION SELECT n.id FROM nodes n JOIN pools p ON p.name = n.pool WHERE n.state = 'ready' AND p.capacity_type <> 'spot' AND n.gpus - n.gpus_allocated >= ?"
            : ""
        let ids = try String.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT n.id FROM nodes n JOIN pools p ON p.name = n.pool
                    JOIN jobs j ON j.node_id = n.id AND j.tier = 'best_effort' AND j.state = 'running'
                    WHERE n.state = 'ready' AND p.capacity_type <> 'spot'
                    UNION SELECT n.id FROM nodes n JOIN pools p ON p.name = n.pool
                    JOIN job_nodes g ON g.node_id = n.id JOIN jobs j ON j.id = g.job_id AND j.tier = 'best_effort' AND j.state = 'running'
                    WHERE n.state = 'ready' AND p.capacity_type <> 'spot'\(freeNodes)
                    ORDER BY 1
                    """), arguments: job.isGang ? [job.gpus] : [])
        var sites: [Placement.PreemptionSite] = []
        for id in ids {
            guard let node = try db.fetchNode(id), let pool = try db.fetchPool(node.pool) else { continue }
            sites.append(
                Placement.PreemptionSite(
                    node: node, pool: pool, bestEffortJobs: try db.jobsOnNode(node.id).filter { $0.tier == .bestEffort }))
        }
        guard let choice = choose(job, policy, sites, now) else { return nil }
        let victims = try choice.jobIds.compactMap { try db.fetchJob($0) }
        for (victim, action) in Placement.yieldActions(victims, now: now) {
            switch action {
            case .checkpoint(let deadline):
                try db.cachedStatement(
                    sql: "UPDATE jobs SET state = 'checkpointing', checkpoint_deadline = ?, preempted_for = ?, updated_at = ? WHERE id = ?"
                ).execute(arguments: [deadline, job.id, now, victim.id])
                try db.appendEvent(
                    "job.checkpoint_requested", subject: "jobs/\(victim.id)", actor: actor, at: now,
                    data: ["reason": .string("preempted for premium job \(job.id)"), "deadline": .string(TimeFormat.rfc3339(deadline))])
            case .requeue:
                try db.requeue(victim, at: now, actor: actor, interruptionId: nil, reason: "preempted for premium job \(job.id)")
            }
        }
        try db.appendEvent(
            "job.preemption_started", subject: "jobs/\(job.id)", actor: actor, at: now,
            data: [
                "node_id": .string(choice.nodeIds[0]), "node_ids": .array(choice.nodeIds.map(JSONValue.string)),
                "jobs": .array(choice.jobIds.map(JSONValue.string)),
            ])
        return "preempting \(choice.jobIds.count) best-effort job(s) on node(s) \(choice.nodeIds.joined(separator: ", ")) to make room"
    }
}
