/// Inference services: replicas that must keep serving. Each pass of the service reconciler hands the store the
/// pure `ServicePlanner` below; the store reads the inputs and writes the actions in one transaction.

/// An inference service as asked for.
public struct InferenceService: Sendable, Equatable {
    public var id: String
    public var seq: Int64
    public var tier: Tier
    /// The desired number of serving replicas.
    public var replicas: Int
    public var gpusPerReplica: Int
    public var gpuType: String?
    /// As given; nil means the default, which follows `replicas`.
    public var minAvailableSetting: Int?
    public var baseOnDemand: Int
    /// The number of the next replica: ids are `r1`, `r2`, … within a service, never reused.
    public var nextReplica: Int64
    public var createdAt: Millis
    public var updatedAt: Millis

    /// Replicas that must stay ready whenever capacity exists: as given, else `replicas − 1` (at least 1 when
    /// `replicas` > 1).
    var minAvailable: Int { minAvailableSetting ?? Self.defaultMinAvailable(replicas: replicas) }

    static func defaultMinAvailable(replicas: Int) -> Int { replicas > 1 ? replicas - 1 : 0 }
}

/// Where a replica is in its life.
public enum ReplicaState: String, Sendable, CaseIterable {
    /// Waiting for capacity: no node yet.
    case pending
    /// Placed: its GPUs are allocated and it is booting.
    case starting
    /// Serving (reported by `POST /v1/services/{id}/replicas/{rid}/ready`).
    case ready
    /// Leaving: its replacement serves; it goes at `drain_until`.
    case draining
    case gone

    /// Whether it holds GPUs on a node.
    var onNode: Bool { self == .starting || self == .ready || self == .draining }
}

/// One replica of a service.
public struct ServiceReplica: Sendable, Equatable {
    public var serviceId: String
    public var id: String
    public var seq: Int64
    public var nodeId: String?
    public var pool: String?
    public var capacityType: CapacityType?
    public var state: ReplicaState
    /// The replica this one surges for: it replaces that one, which leaves once this one is ready.
    public var replaces: String?
    /// When this replica was marked to leave (its node is reclaimed, or it moves back to spot), and why.
    public var doomedAt: Millis?
    public var doomedReason: String?
    public var drainUntil: Millis?
    public var createdAt: Millis
    public var updatedAt: Millis
    public var readyAt: Millis?
    public var goneAt: Millis?

    var isDoomed: Bool { doomedAt != nil }
}

/// A node a replica runs on, as the planner needs it.
struct ReplicaHost: Sendable, Equatable {
    var state: NodeState
    /// The deadline of the node's active termination notice, if it has one.
    var terminationDeadline: Millis?
    var hasTermination: Bool
}

/// What the service reconciler knows at the start of a pass.
struct ServiceInput: Sendable {
    var services: [InferenceService]
    /// Every replica not gone, of every service.
    var replicas: [ServiceReplica]
    /// Ready nodes with free GPUs, in `seq` order.
    var nodes: [Node]
    var pools: [Pool]
    var policies: [Policy]
    var stats: [String: PoolStats]
    /// The nodes replicas are on.
    var hosts: [String: ReplicaHost]
    /// How long a replica that stops serving drains (`--replica-drain-seconds`).
    var drainSeconds: Int64 = ServicePlanner.defaultDrainSeconds
}

/// One change the service reconciler makes, in the order it is to be applied.
enum ServiceAction: Sendable, Equatable {
    /// A new replica, waiting for capacity; a surge when it `replaces` another.
    case create(service: String, replica: String, replaces: String?, reason: String)
    /// A pending replica gets a node.
    case place(service: String, replica: String, nodeId: String, pool: String, capacityType: CapacityType, reasons: [String])
    /// A replica is to leave once its surge is ready.
    case doom(service: String, replica: String, reason: String)
    /// A replica is no longer to leave (its move back to spot was called off).
    case spare(service: String, replica: String)
    /// A ready replica leaves after `until`: its replacement serves.
    case drain(service: String, replica: String, until: Millis)
    /// A replica is gone: its GPUs are given back.
    case gone(service: String, replica: String, reason: String)
}

/// The decisions of one pass of the service reconciler. Pure.
struct ServicePlanner {
    /// How long a replica that stops serving drains its in-flight requests before it goes, unless set (a reclaimed
    /// node's deadline cuts it shorter).
    static let defaultDrainSeconds: Int64 = 30
    /// Why replicas are doomed.
    static let reclaimed = "node reclaimed"
    static let returnToSpot = "return to spot"
    /// Replicas made in this pass sort after every stored one (stored `seq`s are row ids, far below this).
    static let newSeq = Int64.max / 2

    private var index: CapacityIndex
    private let pools: [String: Pool]
    private let poolOrder: [Pool]
    private let policies: [Tier: Policy]
    private let stats: [String: PoolStats]
    private let hosts: [String: ReplicaHost]
    private let drainSeconds: Int64
    private(set) var actions: [ServiceAction] = []
    /// New replica numbers taken this pass, per service.
    private(set) var nextReplica: [String: Int64] = [:]

    init(_ input: ServiceInput) {
        index = CapacityIndex(nodes: input.nodes)
        pools = Dictionary(input.pools.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        poolOrder = input.pools
        policies = Dictionary(input.policies.map { ($0.tier, $0) }, uniquingKeysWith: { first, _ in first })
        stats = input.stats
        hosts = input.hosts
        drainSeconds = input.drainSeconds
    }

    /// Plans every service of `input`.
    static func plan(_ input: ServiceInput, now: Millis) -> ServicePlanner {
        var planner = ServicePlanner(input)
        let byService = Dictionary(grouping: input.replicas, by: \.serviceId)
        for service in input.services {
            planner.plan(service, replicas: (byService[service.id] ?? []).sorted { $0.seq < $1.seq }, now: now)
        }
        return planner
    }

    // MARK: - One service

    private mutating func plan(_ service: InferenceService, replicas: [ServiceReplica], now: Millis) {
        var live = replicas.filter { $0.state != .gone }
        nextReplica[service.id] = service.nextReplica

        func remove(_ id: String, reason: String) {
            actions.append(.gone(service: service.id, replica: id, reason: reason))
            live.removeAll { $0.id == id }
        }

        // Replicas whose node is gone, and drains that are over.
        for replica in live {
            if replica.state.onNode, let node = replica.nodeId, hosts[node].map({ $0.state == .terminated }) ?? true {
                remove(replica.id, reason: "node \(node) terminated")
            } else if replica.state == .draining, let until = replica.drainUntil, until <= now {
                remove(replica.id, reason: "drained")
            }
        }
        // A replica on a reclaimed node is doomed. One that serves keeps serving until its surge is ready; one still
        // starting never served, so it goes at once (and is replaced like any missing replica, or by a new surge).
        for replica in live where replica.state == .starting || replica.state == .ready {
            guard let node = replica.nodeId, hosts[node]?.hasTermination == true, replica.doomedReason != Self.reclaimed else { continue }
            if replica.state == .starting {
                remove(replica.id, reason: "node \(node) reclaimed before the replica was ready")
                continue
            }
            actions.append(.doom(service: service.id, replica: replica.id, reason: Self.reclaimed))
            if let position = live.firstIndex(where: { $0.id == replica.id }) {
                live[position].doomedAt = now
                live[position].doomedReason = Self.reclaimed
            }
        }
        // Every doomed replica still serving has one surge replica. A move back to spot whose surge was lost is
        // called off (the replica stays); a reclaimed one gets a new surge, unless the replicas not leaving are
        // already as many as wanted (the service was scaled down under it): then it simply leaves.
        for replica in live where replica.isDoomed && replica.state == .ready {
            guard !live.contains(where: { $0.replaces == replica.id }) else { continue }
            let staying = live.filter { !$0.isDoomed && $0.state != .draining }.count
            if replica.doomedReason == Self.reclaimed && staying >= service.replicas {
                leave(replica, service: service, now: now, live: &live)
                continue
            }
            if replica.doomedReason == Self.returnToSpot {
                actions.append(.spare(service: service.id, replica: replica.id))
                if let position = live.firstIndex(where: { $0.id == replica.id }) {
                    live[position].doomedAt = nil
                    live[position].doomedReason = nil
                }
                continue
            }
            live.append(newReplica(service, replaces: replica.id, reason: "surge for \(replica.id) (\(Self.reclaimed))"))
        }
        // A doomed replica whose surge is ready leaves (the ready report does this at once; this catches up after a
        // restart).
        for replica in live where replica.isDoomed && replica.state == .ready {
            guard let surge = live.first(where: { $0.replaces == replica.id }), surge.state == .ready else { continue }
            leave(replica, service: service, now: now, live: &live)
        }
        // Scale to the desired count: doomed replicas do not count (their surges do).
        let counted = live.filter { !$0.isDoomed && $0.state != .draining }
        if counted.count < service.replicas {
            for _ in counted.count..<service.replicas { live.append(newReplica(service, replaces: nil, reason: "scale")) }
        } else if counted.count > service.replicas {
            for victim in scaleDownVictims(counted, service: service, extra: counted.count - service.replicas) {
                leave(victim, service: service, now: now, live: &live)
            }
        }
        // Pending replicas get nodes, surges first. The spread counts are kept as replicas are placed (not recounted
        // for each: a service of a thousand pending replicas must not cost a million steps).
        let pending = live.filter { $0.state == .pending }.sorted {
            ($0.replaces == nil ? 1 : 0, $0.seq) < ($1.replaces == nil ? 1 : 0, $1.seq)
        }
        var spread = Spread(live, pools: pools)
        let poolOf = Dictionary(
            live.compactMap { replica in replica.pool.map { (replica.id, $0) } }, uniquingKeysWith: { first, _ in first })
        var noRoom = false
        for replica in pending {
            let doomedPool = replica.replaces.flatMap { poolOf[$0] }
            // Once a replica found no place, the next (the same size, nothing to avoid) finds none either.
            if doomedPool == nil && noRoom { continue }
            guard let choice = choosePlace(service, spread: spread, avoid: doomedPool, spotOnly: false) else {
                noRoom = noRoom || doomedPool == nil
                continue
            }
            bind(service, replica: replica.id, choice, live: &live)
            spread.add(choice.pool)
        }
        returnToSpot(service, live: &live, now: now)
    }

    /// What a replica's ready report changes besides the replica: the replica it surged for, if that one is still
    /// serving or starting, leaves (drains, or goes if it never served). Pure.
    static func afterReady(
        _ replica: ServiceReplica, predecessor: ServiceReplica?, host: ReplicaHost?, drainSeconds: Int64, now: Millis
    ) -> [ServiceAction] {
        guard let old = predecessor, old.id == replica.replaces, old.isDoomed, old.state != .draining, old.state != .gone else {
            return []
        }
        return [leaveAction(old, host: host, drainSeconds: drainSeconds, now: now)]
    }

    /// How a doomed or surplus replica leaves: a serving one drains (for `drainSeconds`, or until its node's
    /// deadline if that comes first); one that never served goes at once.
    static func leaveAction(_ replica: ServiceReplica, host: ReplicaHost?, drainSeconds: Int64, now: Millis) -> ServiceAction {
        guard replica.state == .ready else {
            return .gone(service: replica.serviceId, replica: replica.id, reason: replica.isDoomed ? "replaced" : "scaled down")
        }
        var until = now + drainSeconds * 1000
        if let deadline = host?.terminationDeadline { until = min(until, max(now, deadline)) }
        return .drain(service: replica.serviceId, replica: replica.id, until: until)
    }

    private mutating func leave(_ replica: ServiceReplica, service: InferenceService, now: Millis, live: inout [ServiceReplica]) {
        guard let position = live.firstIndex(where: { $0.id == replica.id }) else { return }
        let action = Self.leaveAction(replica, host: replica.nodeId.flatMap { hosts[$0] }, drainSeconds: drainSeconds, now: now)
        actions.append(action)
        if case .drain(_, _, let until) = action {
            live[position].state = .draining
            live[position].drainUntil = until
        } else {
            live.remove(at: position)
        }
    }

    /// Which counted replicas go when a service has more than it wants: those not serving first (pending, then
    /// starting), then on-demand ones above `base_on_demand`, then those of the pool with the most; newest first.
    private func scaleDownVictims(_ counted: [ServiceReplica], service: InferenceService, extra: Int) -> [ServiceReplica] {
        var stable = counted.filter { $0.capacityType != nil && $0.capacityType != .spot }.count
        var perPool: [String: Int] = [:]
        for replica in counted { if let pool = replica.pool { perPool[pool, default: 0] += 1 } }
        var remaining = counted
        var victims: [ServiceReplica] = []
        for _ in 0..<extra {
            let rank = { (replica: ServiceReplica) -> [Int64] in
                let stateRank: Int64 = replica.state == .pending ? 0 : replica.state == .starting ? 1 : 2
                let aboveBase: Int64 =
                    (replica.capacityType != .spot && replica.capacityType != nil && stable > service.baseOnDemand) ? 0 : 1
                return [stateRank, aboveBase, -Int64(perPool[replica.pool ?? ""] ?? 0), -replica.seq]
            }
            guard let victim = remaining.min(by: { rank($0).lexicographicallyPrecedes(rank($1)) }) else { break }
            victims.append(victim)
            remaining.removeAll { $0.id == victim.id }
            if victim.capacityType != nil && victim.capacityType != .spot { stable -= 1 }
            if let pool = victim.pool { perPool[pool, default: 1] -= 1 }
        }
        return victims
    }

    /// When spot has room again, one on-demand replica above `base_on_demand` moves back to spot per pass,
    /// make-before-break: a surge replica is placed on spot first, and the on-demand one leaves once it is ready.
    private mutating func returnToSpot(_ service: InferenceService, live: inout [ServiceReplica], now: Millis) {
        guard service.tier != .premium, let policy = policies[service.tier], policy.capacityTypes.contains(.spot) else { return }
        // Only a settled service moves: nothing pending, no surge under way.
        guard !live.contains(where: { $0.state == .pending || $0.isDoomed || $0.state == .starting }) else { return }
        let stable = live.filter { $0.state == .ready && $0.capacityType != nil && $0.capacityType != .spot }
        guard stable.count > service.baseOnDemand else { return }
        // The dearest on-demand replica moves first, the newest among equals.
        let pools = self.pools
        let price = { (replica: ServiceReplica) in replica.pool.flatMap { pools[$0]?.hourlyPrice } ?? 0 }
        guard let mover = stable.max(by: { (price($0), $0.seq) < (price($1), $1.seq) }),
            let choice = choosePlace(service, spread: Spread(live, pools: pools), avoid: nil, spotOnly: true)
        else { return }
        actions.append(.doom(service: service.id, replica: mover.id, reason: Self.returnToSpot))
        if let position = live.firstIndex(where: { $0.id == mover.id }) {
            live[position].doomedAt = now
            live[position].doomedReason = Self.returnToSpot
        }
        let surge = newReplica(service, replaces: mover.id, reason: "surge for \(mover.id) (\(Self.returnToSpot))")
        live.append(surge)
        bind(service, replica: surge.id, choice, live: &live)
    }

    private mutating func newReplica(_ service: InferenceService, replaces: String?, reason: String) -> ServiceReplica {
        let number = nextReplica[service.id] ?? service.nextReplica
        nextReplica[service.id] = number + 1
        let id = "r\(number)"
        actions.append(.create(service: service.id, replica: id, replaces: replaces, reason: reason))
        return ServiceReplica(
            serviceId: service.id, id: id, seq: Self.newSeq &+ number, state: .pending, replaces: replaces, createdAt: 0,
            updatedAt: 0)
    }

    // MARK: - Placement

    struct Choice {
        var nodeIndex: Int
        var pool: Pool
        var reasons: [String]
    }

    /// Where the next replica of `service` goes: the tier policy (a replica counts as checkpointable), the first
    /// `base_on_demand` replicas on stable capacity and the rest on spot where the policy allows it (stable capacity
    /// when spot has no room), spread over pools and then zones by the fewest replicas of this service, then risk,
    /// price and the tightest fit. `avoid` (a doomed replica's pool) ranks last; `spotOnly` is a move back to spot.
    /// How a service's placed replicas (not leaving) spread: on stable capacity, per pool, per zone.
    struct Spread {
        var stable = 0
        var perPool: [String: Int] = [:]
        var perZone: [String: Int] = [:]

        init(_ live: [ServiceReplica], pools: [String: Pool]) {
            for replica in live where !replica.isDoomed && replica.state.onNode && replica.state != .draining {
                if replica.capacityType != .spot { stable += 1 }
                guard let name = replica.pool else { continue }
                perPool[name, default: 0] += 1
                if let zone = pools[name]?.zone { perZone[zone, default: 0] += 1 }
            }
        }

        mutating func add(_ pool: Pool) {
            if pool.capacityType != .spot { stable += 1 }
            perPool[pool.name, default: 0] += 1
            perZone[pool.zone, default: 0] += 1
        }
    }

    private func choosePlace(_ service: InferenceService, spread: Spread, avoid: String?, spotOnly: Bool) -> Choice? {
        guard let policy = policies[service.tier] else { return nil }
        let job = Job(
            id: service.id, seq: 0, tier: service.tier, gpus: service.gpusPerReplica, gpuType: service.gpuType, checkpointable: true,
            priority: 0, state: .queued, attempt: 0, requeueCount: 0, submittedAt: 0, updatedAt: 0)
        let stable = spread.stable
        let spotAllowed = policy.capacityTypes.contains(.spot)
        var order: [CapacityType]
        if spotOnly {
            order = [.spot]
        } else if spotAllowed {
            let stableTypes = policy.capacityTypes.filter { $0 != .spot }
            order = stable < service.baseOnDemand ? stableTypes + [.spot] : [.spot] + stableTypes
        } else {
            order = policy.capacityTypes
        }
        let perZone = spread.perZone
        let perPool = spread.perPool
        for (rank, type) in order.enumerated() {
            var best: (key: [Double], index: Int, pool: Pool)?
            for pool in poolOrder where pool.capacityType == type && Placement.poolRefusal(job: job, policy: policy, pool: pool) == nil {
                guard let at = index.bestIndex(pool: pool.name, gpus: service.gpusPerReplica) else { continue }
                let poolStats = stats[pool.name] ?? PoolStats()
                let key: [Double] = [
                    pool.name == avoid ? 1 : 0, Double(perPool[pool.name] ?? 0), Double(perZone[pool.zone] ?? 0),
                    Placement.risky(poolStats) ? 1 : 0, poolStats.interruptionRate, pool.hourlyPrice,
                    Double(index.nodes[at].gpusFree - service.gpusPerReplica),
                ]
                if best == nil || key.lexicographicallyPrecedes(best!.key) { best = (key, at, pool) }
            }
            guard let best else { continue }
            let reasons = [
                "capacity: \(type.rawValue)"
                    + (spotOnly
                        ? " (back to spot: above base_on_demand \(service.baseOnDemand))"
                        : stable < service.baseOnDemand && type != .spot
                            ? " (base_on_demand: \(stable) of \(service.baseOnDemand) on stable capacity)"
                            : " (preference #\(rank + 1) for replicas of this service)"),
                "spread: zone \(best.pool.zone) has \(perZone[best.pool.zone] ?? 0) and pool \(best.pool.name) \(perPool[best.pool.name] ?? 0) of its replicas",
            ]
            return Choice(nodeIndex: best.index, pool: best.pool, reasons: reasons)
        }
        return nil
    }

    private mutating func bind(_ service: InferenceService, replica: String, _ choice: Choice, live: inout [ServiceReplica]) {
        let node = index.nodes[choice.nodeIndex]
        index.allocate(index: choice.nodeIndex, gpus: service.gpusPerReplica)
        actions.append(
            .place(
                service: service.id, replica: replica, nodeId: node.id, pool: choice.pool.name, capacityType: choice.pool.capacityType,
                reasons: choice.reasons))
        if let position = live.firstIndex(where: { $0.id == replica }) {
            live[position].state = .starting
            live[position].nodeId = node.id
            live[position].pool = choice.pool.name
            live[position].capacityType = choice.pool.capacityType
        }
    }
}
