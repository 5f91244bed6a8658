/// The cost report: per pool and per tier, for whole hours.
struct CostReport: Sendable {
    var since: Millis
    var until: Millis
    var pools: [(name: String, pool: Pool?, line: CostLine)]
    var tiers: [(tier: Tier, line: CostLine)]
    var total: CostLine
}

extension Database {
    /// Adds to one hour's usage of a pool (`tier` empty: the pool's own line) or of a tier's work on it.
    func addUsage(
        hour: Millis, pool: String, tier: String, nodeMillis: Millis = 0, gpuMillis: Millis = 0, cost: Double = 0,
        interruptions: Int = 0, lostGPUMillis: Millis = 0
    ) throws {
        try cachedStatement(
            sql: """
                INSERT INTO usage_hourly (hour, pool, tier, node_ms, gpu_ms, cost, interruptions, lost_gpu_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (hour, pool, tier) DO UPDATE SET node_ms = usage_hourly.node_ms + excluded.node_ms,
                    gpu_ms = usage_hourly.gpu_ms + excluded.gpu_ms, cost = usage_hourly.cost + excluded.cost,
                    interruptions = usage_hourly.interruptions + excluded.interruptions,
                    lost_gpu_ms = usage_hourly.lost_gpu_ms + excluded.lost_gpu_ms
                """
        ).execute(arguments: [hour, pool, tier, nodeMillis, gpuMillis, cost, interruptions, lostGPUMillis])
    }

    /// A node's life, rolled up when it ends.
    func rollUpNode(_ node: Node, until now: Millis) throws {
        guard let pool = try fetchPool(node.pool) else { return }
        for piece in Usage.split(from: node.createdAt, to: now) {
            try addUsage(
                hour: piece.hour, pool: node.pool, tier: "", nodeMillis: piece.ms, gpuMillis: piece.ms * Int64(node.gpus),
                cost: Usage.nodeCost(pool, nodeMillis: piece.ms))
        }
    }

    /// Work's time on its nodes (`gpus` on each), rolled up when it leaves them.
    func rollUpWork(tier: Tier, gpus: Int, nodeIds: [String], from start: Millis?, until now: Millis) throws {
        guard let start else { return }
        for nodeId in nodeIds {
            guard let node = try fetchNode(nodeId), let pool = try fetchPool(node.pool) else { continue }
            for piece in Usage.split(from: start, to: now) {
                let gpuMillis = piece.ms * Int64(gpus)
                try addUsage(
                    hour: piece.hour, pool: pool.name, tier: tier.rawValue, gpuMillis: gpuMillis,
                    cost: Usage.gpuCost(pool, gpuMillis: gpuMillis))
            }
        }
    }

    /// Work lost at a requeue: GPUs × time since the last checkpoint of this attempt (or since it started), on the
    /// job's first node's pool; `interrupted` counts it as an interruption of its tier.
    @discardableResult
    func rollUpLoss(_ job: Job, at now: Millis, interrupted: Bool) throws -> Millis {
        guard let nodeId = job.nodeId, let node = try fetchNode(nodeId), let started = job.startedAt else { return 0 }
        let since = max(started, job.lastCheckpoint?.at ?? started)
        let lost = max(0, now - since) * Int64(job.gpus) * Int64(max(1, job.nodes))
        try addUsage(
            hour: Usage.hourStart(now), pool: node.pool, tier: job.tier.rawValue, interruptions: interrupted ? 1 : 0, lostGPUMillis: lost)
        return lost
    }
}

extension SpotStore {
    /// The cost report for `[since, until)`, widened to whole hours: the hourly rollup, plus what is still open
    /// (live nodes, work on nodes) up to now, at today's prices.
    func costReport(since: Millis, until: Millis) async throws -> CostReport {
        try await read { [self] db in
            let now = clock.now()
            let start = Usage.hourStart(since)
            let end = Usage.hourStart(until) == until ? until : Usage.hourStart(until) + Usage.hour
            let pools = try Pool.fetchAll(db.cachedStatement(sql: "SELECT \(Pool.columns) FROM pools ORDER BY seq"))
            let byName = Dictionary(pools.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
            let odPrice = Usage.onDemandGPUPrice(pools)
            var poolLines: [String: CostLine] = [:]
            var tierLines: [Tier: CostLine] = [:]
            /// What `gpuMillis` of `pool`'s GPUs would have cost on on-demand.
            func onDemand(_ poolName: String, _ gpuMillis: Millis) -> Double? {
                guard let pool = byName[poolName], let price = odPrice[pool.gpuType] else { return nil }
                return price * Double(gpuMillis) / Double(Usage.hour)
            }
            func addPool(_ name: String, _ line: CostLine) { poolLines[name] = (poolLines[name] ?? CostLine()) + line }
            func addTier(_ tier: Tier, _ pool: String, _ line: CostLine) {
                tierLines[tier] = (tierLines[tier] ?? CostLine()) + line
                addPool(pool, CostLine(usedGPUMillis: line.gpuMillis, lostGPUMillis: line.lostGPUMillis))
            }
            for row in try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT pool, tier, SUM(node_ms), SUM(gpu_ms), SUM(cost), SUM(interruptions), SUM(lost_gpu_ms)
                        FROM usage_hourly WHERE hour >= ? AND hour < ? GROUP BY pool, tier
                        """), arguments: [start, end])
            {
                let pool: String = row[0]
                let tierName: String = row[1]
                let gpu: Int64 = row[3]
                let line = CostLine(
                    nodeMillis: row[2], gpuMillis: gpu, cost: row[4], interruptions: row[5], lostGPUMillis: row[6],
                    onDemandCost: onDemand(pool, gpu))
                if let tier = Tier(rawValue: tierName) { addTier(tier, pool, line) } else { addPool(pool, line) }
            }
            // Still open: live nodes, and work on nodes, up to now.
            let openEnd = min(end, now)
            for node in try Node.fetchAll(db.cachedStatement(sql: "SELECT \(Node.columns) FROM nodes WHERE state <> 'terminated'")) {
                let ms = Usage.overlap(from: node.createdAt, to: openEnd, since: start, until: openEnd)
                guard ms > 0, let pool = byName[node.pool] else { continue }
                let gpu = ms * Int64(node.gpus)
                addPool(
                    node.pool,
                    CostLine(
                        nodeMillis: ms, gpuMillis: gpu, cost: Usage.nodeCost(pool, nodeMillis: ms), onDemandCost: onDemand(node.pool, gpu)))
            }
            var open: [(tier: Tier, gpus: Int, nodes: [String], from: Millis)] = []
            for job in try Job.fetchAll(
                db.cachedStatement(sql: "SELECT \(Job.columns) FROM jobs WHERE state IN ('running', 'checkpointing')"))
            {
                if let started = job.startedAt { open.append((job.tier, job.gpus, job.members, started)) }
            }
            for row in try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT s.tier, s.gpus_per_replica, r.node_id, r.started_at FROM service_replicas r JOIN services s ON s.id = r.service_id
                        WHERE r.state IN ('starting', 'ready', 'draining') AND r.started_at IS NOT NULL
                        """))
            {
                open.append((Tier(rawValue: row[0]) ?? .bestEffort, row[1], [row[2]], row[3]))
            }
            var nodePool: [String: String] = [:]
            for work in open {
                let ms = Usage.overlap(from: work.from, to: openEnd, since: start, until: openEnd)
                guard ms > 0 else { continue }
                for nodeId in work.nodes {
                    if nodePool[nodeId] == nil { nodePool[nodeId] = try db.fetchNode(nodeId)?.pool }
                    guard let poolName = nodePool[nodeId], let pool = byName[poolName] else { continue }
                    let gpu = ms * Int64(work.gpus)
                    addTier(
                        work.tier, poolName,
                        CostLine(gpuMillis: gpu, cost: Usage.gpuCost(pool, gpuMillis: gpu), onDemandCost: onDemand(poolName, gpu)))
                }
            }
            let poolList = poolLines.keys.sorted().map { (name: $0, pool: byName[$0], line: poolLines[$0]!) }
            let tierList = Tier.allCases.map { (tier: $0, line: tierLines[$0] ?? CostLine()) }
            var total = CostLine()
            for entry in poolList {
                // The total's GPU time and saving are the pools' (capacity), its lost work and interruptions the pools'
                // notices and the tiers' losses.
                total =
                    total
                    + CostLine(
                        nodeMillis: entry.line.nodeMillis, gpuMillis: entry.line.gpuMillis, usedGPUMillis: entry.line.usedGPUMillis,
                        cost: entry.line.cost, interruptions: entry.line.interruptions, onDemandCost: entry.line.onDemandCost)
            }
            total.lostGPUMillis = tierList.reduce(0) { $0 + $1.line.lostGPUMillis }
            return CostReport(since: start, until: end, pools: poolList, tiers: tierList, total: total)
        }
    }
}
