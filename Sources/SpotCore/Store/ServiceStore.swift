/// What a service is asked to be when created.
struct ServiceSubmission: Sendable {
    var id: String
    var tier: Tier
    var replicas: Int
    var gpusPerReplica: Int
    var gpuType: String?
    var minAvailable: Int?
    var baseOnDemand: Int
}

/// A change to a service; nil fields stay.
struct ServicePatch: Sendable {
    var replicas: Int?
    var minAvailable: Int?
    var baseOnDemand: Int?
}

/// A service with its replicas (those not gone, and those gone in the last `ServiceDetail.goneShownMillis`).
struct ServiceDetail: Sendable {
    var service: InferenceService
    var members: [ServiceReplica]

    /// Gone replicas stay in a service's `members` this long, so that an operator sees what just happened.
    static let goneShownMillis: Millis = 600_000
    /// At most this many gone replicas are shown.
    static let goneShown = 100

    var readyReplicas: Int { members.filter { $0.state == .ready }.count }
}

/// What one pass of the service reconciler did.
struct ServiceReport: Sendable, Equatable {
    var placed = 0
    var surged = 0
    var gone = 0
    /// The earliest drain end still ahead, when the next pass must run even if nothing else changes.
    var nextDue: Millis?
}

extension InferenceService: ColumnDecodable {
    static let columns =
        "seq, id, tier, replicas, gpus_per_replica, gpu_type, min_available, base_on_demand, next_replica, created_at, updated_at"

    init(columns row: some ColumnSource) {
        seq = row.int(0)
        id = row.text(1)
        tier = Tier(rawValue: row.text(2)) ?? .bestEffort
        replicas = row.int(3)
        gpusPerReplica = row.int(4)
        gpuType = row.optionalText(5)
        minAvailableSetting = row.optionalInt(6).map { Int($0 as Int64) }
        baseOnDemand = row.int(7)
        nextReplica = row.int(8)
        createdAt = row.int(9)
        updatedAt = row.int(10)
    }
}

extension ServiceReplica: ColumnDecodable {
    static let columns = """
        seq, service_id, id, node_id, pool, capacity_type, state, replaces, doomed_at, doomed_reason, drain_until, created_at, \
        updated_at, ready_at, gone_at
        """

    init(columns row: some ColumnSource) {
        seq = row.int(0)
        serviceId = row.text(1)
        id = row.text(2)
        nodeId = row.optionalText(3)
        pool = row.optionalText(4)
        capacityType = row.optionalText(5).flatMap(CapacityType.init(rawValue:))
        state = ReplicaState(rawValue: row.text(6)) ?? .gone
        replaces = row.optionalText(7)
        doomedAt = row.optionalInt(8)
        doomedReason = row.optionalText(9)
        drainUntil = row.optionalInt(10)
        createdAt = row.int(11)
        updatedAt = row.int(12)
        readyAt = row.optionalInt(13)
        goneAt = row.optionalInt(14)
    }
}

extension Database {
    func fetchService(_ id: String) throws -> InferenceService? {
        try InferenceService.fetchOne(
            self.cachedStatement(sql: "SELECT \(InferenceService.columns) FROM services WHERE id = ?"), arguments: [id])
    }

    func fetchReplica(service: String, id: String) throws -> ServiceReplica? {
        try ServiceReplica.fetchOne(
            self.cachedStatement(sql: "SELECT \(ServiceReplica.columns) FROM service_replicas WHERE service_id = ? AND id = ?"),
            arguments: [service, id])
    }

    /// The node facts a replica's drain needs.
    func replicaHost(_ nodeId: String?) throws -> ReplicaHost? {
        guard let nodeId, let node = try fetchNode(nodeId) else { return nil }
        let termination = try activeTermination(nodeId: nodeId)
        return ReplicaHost(state: node.state, terminationDeadline: termination?.deadline, hasTermination: termination != nil)
    }

    /// Applies one service action inside the caller's transaction; `nextReplica` is the service's counter after
    /// the pass (for `create`).
    func apply(_ action: ServiceAction, at now: Millis, actor: String, gpus: (String) throws -> Int) throws {
        switch action {
        case .create(let service, let replica, let replaces, let reason):
            try self.cachedStatement(
                sql: """
                    INSERT INTO service_replicas (service_id, id, state, replaces, created_at, updated_at)
                    VALUES (?, ?, 'pending', ?, ?, ?)
                    """
            ).execute(arguments: [service, replica, replaces, now, now])
            if let replaces {
                try appendEvent(
                    "service.replica_surged", subject: "services/\(service)", actor: actor, at: now,
                    data: ["replica": .string(replica), "replaces": .string(replaces), "reason": .string(reason)])
            }
        case .place(let service, let replica, let nodeId, let pool, let capacityType, let reasons):
            let need = try gpus(service)
            try self.cachedStatement(
                sql: """
                    UPDATE nodes SET gpus_allocated = gpus_allocated + ?, idle_since = NULL, updated_at = ?
                    WHERE id = ? AND state = 'ready' AND gpus - gpus_allocated >= ?
                    """
            ).execute(arguments: [need, now, nodeId, need])
            guard changesCount == 1 else { throw StoreError.conflict("node '\(nodeId)' no longer has room for replica \(replica)") }
            try self.cachedStatement(
                sql: """
                    UPDATE service_replicas SET state = 'starting', node_id = ?, pool = ?, capacity_type = ?, updated_at = ?, started_at = ?
                    WHERE service_id = ? AND id = ? AND state = 'pending'
                    """
            ).execute(arguments: [nodeId, pool, capacityType.rawValue, now, now, service, replica])
            guard changesCount == 1 else { throw StoreError.conflict("replica \(replica) of '\(service)' is no longer pending") }
            try appendEvent(
                "service.replica_placed", subject: "services/\(service)", actor: actor, at: now,
                data: [
                    "replica": .string(replica), "node_id": .string(nodeId), "pool": .string(pool),
                    "capacity_type": .string(capacityType.rawValue), "reasons": .array(reasons.map(JSONValue.string)),
                ])
        case .doom(let service, let replica, let reason):
            try self.cachedStatement(
                sql: "UPDATE service_replicas SET doomed_at = ?, doomed_reason = ?, updated_at = ? WHERE service_id = ? AND id = ?"
            ).execute(arguments: [now, reason, now, service, replica])
        case .spare(let service, let replica):
            try self.cachedStatement(
                sql: "UPDATE service_replicas SET doomed_at = NULL, doomed_reason = NULL, updated_at = ? WHERE service_id = ? AND id = ?"
            ).execute(arguments: [now, service, replica])
        case .drain(let service, let replica, let until):
            try self.cachedStatement(
                sql: """
                    UPDATE service_replicas SET state = 'draining', drain_until = ?, updated_at = ?
                    WHERE service_id = ? AND id = ? AND state = 'ready'
                    """
            ).execute(arguments: [until, now, service, replica])
            if changesCount == 1 {
                try appendEvent(
                    "service.replica_draining", subject: "services/\(service)", actor: actor, at: now,
                    data: ["replica": .string(replica), "until": .string(TimeFormat.rfc3339(until))])
            }
        case .gone(let service, let replica, let reason):
            guard let current = try fetchReplica(service: service, id: replica), current.state != .gone else { return }
            if current.state.onNode, let nodeId = current.nodeId {
                let started = try Int64.fetchOne(
                    cachedStatement(sql: "SELECT started_at FROM service_replicas WHERE service_id = ? AND id = ?"),
                    arguments: [service, replica])
                if let tier = try String.fetchOne(cachedStatement(sql: "SELECT tier FROM services WHERE id = ?"), arguments: [service])
                    .flatMap(Tier.init(rawValue:))
                {
                    try rollUpWork(tier: tier, gpus: try gpus(service), nodeIds: [nodeId], from: started, until: now)
                }
                try releaseGPUs(nodeId: nodeId, gpus: try gpus(service), at: now)
            }
            // A replica that goes gives up its claim as a surge: the replica it surged for may get another.
            try self.cachedStatement(
                sql: """
                    UPDATE service_replicas SET state = 'gone', replaces = NULL, gone_at = ?, updated_at = ?
                    WHERE service_id = ? AND id = ?
                    """
            ).execute(arguments: [now, now, service, replica])
            var data: [String: JSONValue] = ["replica": .string(replica), "reason": .string(reason)]
            if let nodeId = current.nodeId { data["node_id"] = .string(nodeId) }
            try appendEvent("service.replica_gone", subject: "services/\(service)", actor: actor, at: now, data: data)
        }
    }

    /// Every replica on a node that is gone (terminated or deleted) goes with it; inside the caller's transaction.
    func replicasGoWithNode(_ nodeId: String, at now: Millis, actor: String) throws {
        let replicas = try ServiceReplica.fetchAll(
            self.cachedStatement(
                sql: """
                    SELECT \(ServiceReplica.columns) FROM service_replicas
                    WHERE node_id = ? AND state IN ('starting', 'ready', 'draining') ORDER BY seq
                    """), arguments: [nodeId])
        for replica in replicas {
            let gpus =
                try Int.fetchOne(
                    self.cachedStatement(sql: "SELECT gpus_per_replica FROM services WHERE id = ?"), arguments: [replica.serviceId]) ?? 0
            try apply(
                .gone(service: replica.serviceId, replica: replica.id, reason: "node \(nodeId) terminated"), at: now, actor: actor,
                gpus: { _ in gpus })
        }
    }
}

extension SpotStore {
    // MARK: - The API

    func createService(_ submission: ServiceSubmission, actor: String) async throws -> ServiceDetail {
        try await write { [self] db in
            let now = clock.now()
            if try db.fetchService(submission.id) != nil { throw StoreError.conflict("service '\(submission.id)' already exists") }
            try db.cachedStatement(
                sql: """
                    INSERT INTO services (id, tier, replicas, gpus_per_replica, gpu_type, min_available, base_on_demand,
                        created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """
            ).execute(arguments: [
                submission.id, submission.tier.rawValue, submission.replicas, submission.gpusPerReplica, submission.gpuType,
                submission.minAvailable, submission.baseOnDemand, now, now,
            ])
            let service = try db.fetchService(submission.id)!
            try db.appendEvent(
                "service.created", subject: "services/\(service.id)", actor: actor, at: now,
                data: [
                    "tier": .string(service.tier.rawValue), "replicas": .int(Int64(service.replicas)),
                    "gpus_per_replica": .int(Int64(service.gpusPerReplica)), "min_available": .int(Int64(service.minAvailable)),
                    "base_on_demand": .int(Int64(service.baseOnDemand)),
                ])
            return try Self.serviceDetail(db, service, now: now)
        }
    }

    func listServices(_ page: PageRequest) async throws -> Page<ServiceDetail> {
        try await read { [self] db in
            let now = clock.now()
            let rows = try ListQuery("SELECT \(InferenceService.columns) FROM services", after: page).fetch(db, limit: page.limit)
            let services = Self.page(rows, limit: page.limit, map: InferenceService.init(row:))
            return Page(items: try services.items.map { try Self.serviceDetail(db, $0, now: now) }, nextCursor: services.nextCursor)
        }
    }

    func service(_ id: String) async throws -> ServiceDetail? {
        try await read { [self] db in
            try db.fetchService(id).map { try Self.serviceDetail(db, $0, now: clock.now()) }
        }
    }

    static func serviceDetail(_ db: Database, _ service: InferenceService, now: Millis) throws -> ServiceDetail {
        // Every replica not gone, and the newest gone ones of the last 10 minutes (at most `goneShown`: a service
        // that churned must not answer with megabytes).
        let live = try ServiceReplica.fetchAll(
            db.cachedStatement(
                sql: "SELECT \(ServiceReplica.columns) FROM service_replicas WHERE service_id = ? AND state <> 'gone' ORDER BY seq"),
            arguments: [service.id])
        let gone = try ServiceReplica.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT \(ServiceReplica.columns) FROM service_replicas
                    WHERE service_id = ? AND state = 'gone' AND gone_at >= ? ORDER BY gone_at DESC, seq DESC LIMIT ?
                    """), arguments: [service.id, now - ServiceDetail.goneShownMillis, ServiceDetail.goneShown])
        return ServiceDetail(service: service, members: (live + gone).sorted { $0.seq < $1.seq })
    }

    func updateService(_ id: String, _ patch: ServicePatch, actor: String) async throws -> ServiceDetail {
        try await write { [self] db in
            let now = clock.now()
            guard var service = try db.fetchService(id) else { throw StoreError.notFound(what: "service", id: id) }
            if let replicas = patch.replicas { service.replicas = replicas }
            if let minAvailable = patch.minAvailable { service.minAvailableSetting = minAvailable }
            if let base = patch.baseOnDemand { service.baseOnDemand = base }
            if let refusal = Self.serviceRefusal(replicas: service.replicas, minAvailable: service.minAvailable, base: service.baseOnDemand)
            {
                throw StoreError.unprocessable(field: refusal.field, refusal.detail)
            }
            try db.cachedStatement(
                sql: "UPDATE services SET replicas = ?, min_available = ?, base_on_demand = ?, updated_at = ? WHERE id = ?"
            ).execute(arguments: [service.replicas, service.minAvailableSetting, service.baseOnDemand, now, id])
            try db.appendEvent(
                "service.updated", subject: "services/\(id)", actor: actor, at: now,
                data: [
                    "replicas": .int(Int64(service.replicas)), "min_available": .int(Int64(service.minAvailable)),
                    "base_on_demand": .int(Int64(service.baseOnDemand)),
                ])
            service.updatedAt = now
            return try Self.serviceDetail(db, service, now: now)
        }
    }

    /// Why a service's counts do not agree, or nil when they do.
    static func serviceRefusal(replicas: Int, minAvailable: Int, base: Int) -> (field: String, detail: String)? {
        if minAvailable > replicas {
            return ("min_available", "(\(minAvailable)) must not exceed replicas (\(replicas))")
        }
        if base > replicas { return ("base_on_demand", "(\(base)) must not exceed replicas (\(replicas))") }
        return nil
    }

    /// Deletes a service: every replica goes at once (its GPUs are given back), then the service and its replicas'
    /// rows; the events stay.
    func deleteService(_ id: String, actor: String) async throws {
        try await write { [self] db in
            let now = clock.now()
            guard let service = try db.fetchService(id) else { throw StoreError.notFound(what: "service", id: id) }
            let live = try ServiceReplica.fetchAll(
                db.cachedStatement(
                    sql: "SELECT \(ServiceReplica.columns) FROM service_replicas WHERE service_id = ? AND state <> 'gone' ORDER BY seq"),
                arguments: [id])
            for replica in live {
                try db.apply(
                    .gone(service: id, replica: replica.id, reason: "service deleted"), at: now, actor: actor,
                    gpus: { _ in service.gpusPerReplica })
            }
            try db.cachedStatement(sql: "DELETE FROM service_replicas WHERE service_id = ?").execute(arguments: [id])
            try db.cachedStatement(sql: "DELETE FROM services WHERE id = ?").execute(arguments: [id])
            try db.appendEvent("service.deleted", subject: "services/\(id)", actor: actor, at: now)
        }
    }

    /// A replica reports that it serves: `starting` → `ready`; the replica it surged for, if any, leaves in the same
    /// transaction (make-before-break). Ready again is answered as is.
    func replicaReady(service serviceId: String, replica replicaId: String, actor: String) async throws -> ServiceDetail {
        try await write { [self] db in
            let now = clock.now()
            guard let service = try db.fetchService(serviceId) else { throw StoreError.notFound(what: "service", id: serviceId) }
            guard let replica = try db.fetchReplica(service: serviceId, id: replicaId) else {
                throw StoreError.notFound(what: "replica", id: "\(serviceId)/\(replicaId)")
            }
            switch replica.state {
            case .ready:
                return try Self.serviceDetail(db, service, now: now)
            case .starting:
                break
            case .pending, .draining, .gone:
                throw StoreError.conflict(
                    "replica \(replicaId) of service '\(serviceId)' is \(replica.state.rawValue); only a starting replica can become ready")
            }
            try db.cachedStatement(
                sql: "UPDATE service_replicas SET state = 'ready', ready_at = ?, updated_at = ? WHERE service_id = ? AND id = ?"
            ).execute(arguments: [now, now, serviceId, replicaId])
            try db.appendEvent(
                "service.replica_ready", subject: "services/\(serviceId)", actor: actor, at: now,
                data: ["replica": .string(replicaId), "node_id": replica.nodeId.map(JSONValue.string) ?? .null])
            let predecessor = try replica.replaces.flatMap { try db.fetchReplica(service: serviceId, id: $0) }
            for action in ServicePlanner.afterReady(
                replica, predecessor: predecessor, host: try db.replicaHost(predecessor?.nodeId), drainSeconds: replicaDrainSeconds,
                now: now)
            {
                try db.apply(action, at: now, actor: actor, gpus: { _ in service.gpusPerReplica })
            }
            return try Self.serviceDetail(db, service, now: now)
        }
    }

    // MARK: - The reconciler

    /// Everything a service pass weighs, read in `db`.
    func serviceInput(_ db: Database, now: Millis, stats: [String: PoolStats]) throws -> ServiceInput {
        let services = try InferenceService.fetchAll(
            db.cachedStatement(sql: "SELECT \(InferenceService.columns) FROM services ORDER BY seq"))
        let replicas = try ServiceReplica.fetchAll(
            db.cachedStatement(sql: "SELECT \(ServiceReplica.columns) FROM service_replicas WHERE state <> 'gone' ORDER BY seq"))
        var hosts: [String: ReplicaHost] = [:]
        for nodeId in Set(replicas.compactMap(\.nodeId)) { hosts[nodeId] = try db.replicaHost(nodeId) }
        let nodes = try Node.fetchAll(
            db.cachedStatement(sql: "SELECT \(Node.columns) FROM nodes WHERE state = 'ready' AND gpus_allocated < gpus ORDER BY seq"))
        let catalog = try catalog.current(db)
        return ServiceInput(
            services: services, replicas: replicas, nodes: nodes, pools: catalog.pools,
            policies: Self.withDefaults(catalog.policies, admissionLimit: admissionLimit, now: now), stats: stats, hosts: hosts,
            drainSeconds: replicaDrainSeconds)
    }

    /// When the next drain ends (a pass is due then), if any replica drains.
    static func nextServiceDue(_ db: Database) throws -> Millis? {
        try Int64.fetchOne(db.cachedStatement(sql: "SELECT MIN(drain_until) FROM service_replicas WHERE state = 'draining'"))
    }

    /// One pass of the service reconciler, in one transaction: `plan` (from `Domain/`) decides from every service,
    /// its replicas, the free capacity and the replicas' nodes; this writes its actions in order.
    func reconcileServices(
        lease: Lease, actor: String, plan: @escaping @Sendable (ServiceInput, Millis) -> ServicePlanner
    ) async throws -> ServiceReport {
        guard try await anyRow("SELECT 1 FROM services") else { return ServiceReport() }
        let hints = try await placementHints.current(self, now: clock.now())
        // Decided on a read first: a pass with nothing to do (replicas that cannot be placed yet, say) never takes
        // the writer.
        let idle = try await read { [self] db in
            let now = clock.now()
            let input = try serviceInput(db, now: now, stats: hints.stats)
            let planner = plan(input, now)
            return (planner.actions.isEmpty, try Self.nextServiceDue(db))
        }
        if idle.0 { return ServiceReport(nextDue: idle.1) }
        return try await write { [self] db in
            let now = clock.now()
            try Self.checkFence(db, lease, now: now)
            let input = try serviceInput(db, now: now, stats: hints.stats)
            let services = input.services
            let planner = plan(input, now)
            let gpus = Dictionary(services.map { ($0.id, $0.gpusPerReplica) }, uniquingKeysWith: { first, _ in first })
            var report = ServiceReport()
            for action in planner.actions {
                try db.apply(action, at: now, actor: actor, gpus: { gpus[$0] ?? 0 })
                switch action {
                case .place: report.placed += 1
                case .create(_, _, let replaces, _) where replaces != nil: report.surged += 1
                case .gone: report.gone += 1
                default: break
                }
            }
            let counters = Dictionary(services.map { ($0.id, $0.nextReplica) }, uniquingKeysWith: { first, _ in first })
            for (service, next) in planner.nextReplica where next != counters[service] {
                try db.cachedStatement(sql: "UPDATE services SET next_replica = MAX(next_replica, ?) WHERE id = ?").execute(arguments: [
                    next, service,
                ])
            }
            report.nextDue = try Self.nextServiceDue(db)
            return report
        }
    }
}
