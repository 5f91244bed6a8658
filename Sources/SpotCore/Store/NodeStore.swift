/// A node with what hangs off it.
public struct NodeDetail: Sendable, Equatable {
    public var node: Node
    public var capacityType: CapacityType?
    public var gpuType: String?
    public var zone: String?
    public var jobIds: [String]
    public var interruptionId: String?
}

struct NodeFilter: Sendable {
    var pool: String?
    var state: NodeState?
    var capacityType: CapacityType?
}

extension SpotStore {
    func registerNode(id: String, pool poolName: String, gpus: Int?, provisioningRequestId: String?, actor: String) async throws
        -> NodeDetail
    {
        try await write { [self] db in
            let now = clock.now()
            guard let pool = try db.fetchPool(poolName) else {
                throw StoreError.unknownReference(field: "pool", what: "pool", id: poolName)
            }
            if try db.fetchNode(id) != nil { throw StoreError.conflict("node '\(id)' is already registered") }
            let gpuCount = gpus ?? pool.gpusPerNode
            // A node for a request that failed (it timed out) or was cancelled (its demand went away) came late: it
            // is registered, so that it can be given back at once, and nothing is left running.
            var late = false
            if let requestId = provisioningRequestId {
                guard
                    let request = try ProvisioningRequest.fetchOne(
                        db.cachedStatement(sql: "SELECT \(ProvisioningRequest.columns) FROM provisioning_requests WHERE id = ?"),
                        arguments: [requestId]
                    )
                else {
                    throw StoreError.unknownReference(field: "provisioning_request_id", what: "provisioning request", id: requestId)
                }
                guard request.state != .fulfilled else {
                    throw StoreError.conflict("provisioning request '\(requestId)' is already \(request.state.rawValue)")
                }
                late = request.state != .pending
                guard request.pool == poolName else {
                    throw StoreError.conflict("provisioning request '\(requestId)' asked for pool '\(request.pool)', not '\(poolName)'")
                }
            }
            try db.cachedStatement(
                sql: """
                    INSERT INTO nodes (id, pool, gpus, gpus_allocated, state, provisioning_request_id, created_at, updated_at, idle_since)
                    VALUES (?, ?, ?, 0, 'ready', ?, ?, ?, ?)
                    """
            ).execute(arguments: [id, poolName, gpuCount, provisioningRequestId, now, now, now])
            try db.appendEvent(
                "node.registered", subject: "nodes/\(id)", actor: actor, at: now,
                data: ["pool": .string(poolName), "gpus": .int(Int64(gpuCount))])
            if simulatedCloud {
                try db.cachedStatement(sql: "INSERT INTO sim_instances (id, pool, launched_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
                    .execute(arguments: [id, poolName, now])
            }
            if let requestId = provisioningRequestId {
                if late {
                    try Self.requestRelease(
                        db, node: try db.fetchNode(id)!, reason: "late: its provisioning request \(requestId) was no longer pending",
                        at: now, actor: actor)
                } else {
                    try Self.fulfill(db, requestId: requestId, nodeId: id, at: now, actor: actor)
                }
            }
            return try Self.nodeDetail(db, id: id)!
        }
    }

    /// Marks a provisioning request fulfilled by a node.
    static func fulfill(_ db: Database, requestId: String, nodeId: String, at now: Millis, actor: String) throws {
        try db.cachedStatement(
            sql: "UPDATE provisioning_requests SET state = 'fulfilled', node_id = ?, resolved_at = ? WHERE id = ? AND state = 'pending'"
        ).execute(arguments: [nodeId, now, requestId])
        let interruptionId = try String.fetchOne(
            db.cachedStatement(sql: "SELECT interruption_id FROM provisioning_requests WHERE id = ?"), arguments: [requestId])
        if let interruptionId {
            try db.appendStep(interruptionId, "replacement_ready", at: now, detail: nodeId)
        }
        try db.appendEvent(
            "provisioning.fulfilled", subject: "provisioning-requests/\(requestId)", actor: actor, at: now,
            data: ["node_id": .string(nodeId)])
    }

    func listNodes(_ filter: NodeFilter, _ page: PageRequest) async throws -> Page<NodeDetail> {
        try await read { db in
            var query = ListQuery(
                "SELECT n.id AS id, n.seq AS seq FROM nodes n LEFT JOIN pools p ON p.name = n.pool", seqColumn: "n.seq", after: page)
            query.equals("n.pool", filter.pool)
            query.equals("n.state", filter.state?.rawValue)
            query.equals("p.capacity_type", filter.capacityType?.rawValue)
            let rows = try query.fetch(db, limit: page.limit)
            let page = Self.page(rows, limit: page.limit) { $0["id"] as String }
            return Page(items: try page.items.compactMap { try Self.nodeDetail(db, id: $0) }, nextCursor: page.nextCursor)
        }
    }

    func node(_ id: String) async throws -> NodeDetail? {
        try await read { db in try Self.nodeDetail(db, id: id) }
    }

    static func nodeDetail(_ db: Database, id: String) throws -> NodeDetail? {
        guard let node = try db.fetchNode(id) else { return nil }
        let pool = try db.fetchPool(node.pool)
        let jobs = try String.fetchAll(
            db.cachedStatement(
                sql: "SELECT id FROM jobs WHERE \(Database.onNode) AND \(Database.holdsGPUs) ORDER BY seq"),
            arguments: [id, id])
        let interruption = try String.fetchOne(
            db.cachedStatement(
                sql: """
                    SELECT id FROM interruptions WHERE node_id = ? AND state IN ('received', 'draining', 'drained')
                    ORDER BY CASE kind WHEN 'termination' THEN 0 ELSE 1 END, seq DESC LIMIT 1
                    """), arguments: [id])
        return NodeDetail(
            node: node, capacityType: pool?.capacityType, gpuType: pool?.gpuType, zone: pool?.zone, jobIds: jobs,
            interruptionId: interruption)
    }

    func cordon(_ id: String, actor: String) async throws -> NodeDetail {
        try await write { [self] db in
            guard let node = try db.fetchNode(id) else { throw StoreError.notFound(what: "node", id: id) }
            switch node.state {
            case .terminated:
                throw StoreError.conflict("node '\(id)' is terminated")
            case .ready, .provisioning:
                try Self.cordon(db, node: node, at: clock.now(), actor: actor, reason: "operator")
            case .cordoned, .draining, .drained:
                break
            }
            return try Self.nodeDetail(db, id: id)!
        }
    }

    /// Cordons a node inside the caller's transaction.
    static func cordon(_ db: Database, node: Node, at now: Millis, actor: String, reason: String) throws {
        try db.cachedStatement(sql: "UPDATE nodes SET state = 'cordoned', updated_at = ? WHERE id = ?").execute(arguments: [now, node.id])
        try db.appendEvent(
            "node.cordoned", subject: "nodes/\(node.id)", actor: actor, at: now, data: ["reason": .string(reason)])
    }

    func uncordon(_ id: String, actor: String) async throws -> NodeDetail {
        try await write { [self] db in
            guard let node = try db.fetchNode(id) else { throw StoreError.notFound(what: "node", id: id) }
            switch node.state {
            case .ready:
                break
            case .cordoned:
                if let active = try db.activeTermination(nodeId: id) {
                    throw StoreError.conflict("node '\(id)' has an active termination notice '\(active.id)'; it cannot be uncordoned")
                }
                let now = clock.now()
                try db.cachedStatement(sql: "UPDATE nodes SET state = 'ready', updated_at = ? WHERE id = ?").execute(arguments: [now, id])
                try db.cachedStatement(
                    sql: """
                        UPDATE interruptions SET state = 'completed', completed_at = ?
                        WHERE node_id = ? AND kind = 'rebalance' AND state = 'received'
                        """
                ).execute(arguments: [now, id])
                try db.appendEvent("node.uncordoned", subject: "nodes/\(id)", actor: actor, at: now)
            case .provisioning, .draining, .drained, .terminated:
                throw StoreError.conflict("node '\(id)' is \(node.state.rawValue); only a cordoned node can be uncordoned")
            }
            return try Self.nodeDetail(db, id: id)!
        }
    }

    /// The node is gone: requeue its jobs and mark it terminated.
    func deleteNode(_ id: String, actor: String) async throws -> NodeDetail {
        try await write { [self] db in
            guard let node = try db.fetchNode(id) else { throw StoreError.notFound(what: "node", id: id) }
            if node.state != .terminated {
                let now = clock.now()
                // A node under a termination notice that goes away was taken by the cloud: its release is sent too (a
                // node deregistered by hand is the operator's to stop).
                let reclaimed = try db.activeTermination(nodeId: id) != nil
                try Self.terminate(db, node: node, at: now, actor: actor, reason: "deleted")
                if reclaimed { try Self.requestRelease(db, node: node, reason: Self.reclaimedRelease, at: now, actor: actor) }
            }
            return try Self.nodeDetail(db, id: id)!
        }
    }

    /// Terminates a node inside the caller's transaction: every job still on it is requeued.
    static func terminate(_ db: Database, node: Node, at now: Millis, actor: String, reason: String) throws {
        let interruption = try db.activeTermination(nodeId: node.id)
        for job in try db.jobsOnNode(node.id) {
            try db.requeue(job, at: now, actor: actor, interruptionId: interruption?.id, reason: "node \(reason)")
        }
        try db.replicasGoWithNode(node.id, at: now, actor: actor)
        try db.rollUpNode(node, until: now)
        try db.cachedStatement(
            sql: "UPDATE nodes SET state = 'terminated', gpus_allocated = 0, terminated_at = ?, updated_at = ? WHERE id = ?"
        ).execute(arguments: [now, now, node.id])
        if let interruption { try db.appendStep(interruption.id, "node_terminated", at: now, detail: reason) }
        try db.cachedStatement(
            sql:
                "UPDATE interruptions SET state = 'completed', completed_at = ? WHERE node_id = ? AND kind = 'rebalance' AND state = 'received'"
        ).execute(arguments: [now, node.id])
        try db.appendEvent(
            "node.terminated", subject: "nodes/\(node.id)", actor: actor, at: now, data: ["reason": .string(reason)])
    }
}
