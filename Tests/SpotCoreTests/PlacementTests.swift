import Foundation
import HummingbirdTesting
import Testing

@testable import SpotCore

/// Builders for the pure placement tables.
enum Table {
    static func pool(_ name: String, _ type: CapacityType, gpu: String = "H100", gpus: Int = 8, zone: String = "a") -> Pool {
        Pool(
            name: name, capacityType: type, gpuType: gpu, gpusPerNode: gpus, zone: zone, instanceType: "p5", hourlyPrice: 10,
            minNodes: 0, maxNodes: 100, stockout: false, createdAt: 0, updatedAt: 0)
    }

    static func node(_ id: String, pool: String, gpus: Int = 8, used: Int = 0, state: NodeState = .ready) -> Node {
        Node(id: id, pool: pool, gpus: gpus, gpusAllocated: used, state: state, createdAt: 0, updatedAt: 0)
    }

    static func job(
        _ id: String = "j", tier: Tier, gpus: Int = 1, gpuType: String? = nil, checkpointable: Bool = false, duration: Int64? = nil
    ) -> Job {
        Job(
            id: id, seq: 1, tier: tier, gpus: gpus, gpuType: gpuType, checkpointable: checkpointable, expectedDurationSeconds: duration,
            priority: 0, state: .queued, attempt: 0, requeueCount: 0, submittedAt: 0, updatedAt: 0)
    }

    static func policy(_ tier: Tier) -> Policy {
        Policy.defaults(admissionLimit: 3600, at: 0).first { $0.tier == tier }!
    }

    static func candidates(_ pools: [Pool], nodes: [Node], stats: [String: PoolStats] = [:], job: Job) -> [PoolCandidate] {
        let index = CapacityIndex(nodes: nodes)
        return pools.map {
            PoolCandidate(pool: $0, stats: stats[$0.name] ?? PoolStats(), bestNode: index.bestNode(pool: $0.name, gpus: job.gpus))
        }
    }

    static func decide(_ job: Job, pools: [Pool], nodes: [Node], stats: [String: PoolStats] = [:]) -> PlacementDecision {
        Placement.decide(job: job, policy: policy(job.tier), candidates: candidates(pools, nodes: nodes, stats: stats, job: job))
    }
}

@Suite("Placement decisions (pure)")
struct PlacementDecisionTests {
    /// Looking nodes up group by group and stopping at the first group with a fit must choose exactly what looking
    /// at every pool chooses (the placement API relies on it to skip most lookups).
    @Test func capacityIndexPicksTheTightestThenOldestNode() {
        var index = CapacityIndex(nodes: [
            Table.node("a", pool: "p", used: 0), Table.node("b", pool: "p", used: 4), Table.node("c", pool: "p", used: 4),
            Table.node("d", pool: "p", used: 8), Table.node("e", pool: "q", used: 2, state: .cordoned),
        ])
        #expect(index.bestNode(pool: "p", gpus: 2)?.id == "b")
        #expect(index.bestNode(pool: "p", gpus: 5)?.id == "a")
        #expect(index.bestNode(pool: "q", gpus: 1) == nil)
        index.allocate(index: 1, gpus: 3)
        #expect(index.bestNode(pool: "p", gpus: 1)?.id == "b")
        #expect(index.bestNode(pool: "p", gpus: 2)?.id == "c")
        index.allocate(index: 1, gpus: 1)
        index.allocate(index: 2, gpus: 4)
        #expect(index.bestNode(pool: "p", gpus: 1)?.id == "a")
        index.allocate(index: 0, gpus: 8)
        #expect(index.bestNode(pool: "p", gpus: 1) == nil)
        #expect(!index.hasFreeCapacity)
    }

    @Test(arguments: 0..<200) func searchGroupsChooseWhatAFullLookChooses(seed: Int) {
        var random = SeededRandom(seed: UInt64(seed))
        let pools = (0..<Int.random(in: 1...8, using: &random)).map { index in
            var pool = Table.pool("p\(index)", [.spot, .onDemand, .reserved].randomElement(using: &random)!)
            pool.hourlyPrice = Double(Int.random(in: 1...3, using: &random))
            return pool
        }
        let nodes = pools.flatMap { pool in
            (0..<Int.random(in: 0...3, using: &random)).map {
                Table.node("\(pool.name)-n\($0)", pool: pool.name, used: Int.random(in: 0...8, using: &random))
            }
        }
        let job = Table.job(
            tier: Tier.allCases.randomElement(using: &random)!, gpus: Int.random(in: 1...4, using: &random),
            checkpointable: Bool.random(using: &random))
        let policy = Table.policy(job.tier)
        var stats: [String: PoolStats] = [:]
        for pool in pools where Bool.random(using: &random) { stats[pool.name] = PoolStats(rebalanceSignals: 1) }
        var full = Table.candidates(pools, nodes: nodes, stats: stats, job: job)
        for index in full.indices { full[index].bestEffortJobs = Int.random(in: 0...2, using: &random) }
        var partial = full.map { candidate -> PoolCandidate in
            var copy = candidate
            copy.bestNode = nil
            return copy
        }
        var looked: [Int] = []
        for group in Placement.searchGroups(job: job, policy: policy, candidates: partial) {
            for index in group {
                partial[index].bestNode = full[index].bestNode
                looked.append(index)
            }
            if group.contains(where: { partial[$0].bestNode != nil }) { break }
        }
        let expected = Placement.decide(job: job, policy: policy, candidates: full)
        let got = Placement.decide(job: job, policy: policy, candidates: partial)
        #expect(got == expected)
        // The search saves lookups: it never looks in a pool the job may not use, nor in one pool twice.
        #expect(looked.allSatisfy { Placement.poolRefusal(job: job, policy: policy, pool: pools[$0]) == nil }, "looked at \(looked)")
        #expect(Set(looked).count == looked.count)
    }

    let spot = Table.pool("spot", .spot)
    let spotB = Table.pool("spot-b", .spot, zone: "b")
    let onDemand = Table.pool("od", .onDemand)
    let reserved = Table.pool("rsv", .reserved)
    let a100 = Table.pool("a100", .onDemand, gpu: "A100")

    func placedNode(_ decision: PlacementDecision) -> String? {
        if case .place(let node, _, _, _) = decision { return node }
        return nil
    }

    func refusals(_ decision: PlacementDecision) -> [String: String] {
        if case .refuse(let reasons) = decision { return reasons }
        return [:]
    }

    @Test func premiumNeverOnSpotAndPrefersReserved() {
        let nodes = [Table.node("s", pool: "spot"), Table.node("o", pool: "od"), Table.node("r", pool: "rsv")]
        #expect(placedNode(Table.decide(Table.job(tier: .premium), pools: [spot, onDemand, reserved], nodes: nodes)) == "r")
        let refused = refusals(Table.decide(Table.job(tier: .premium), pools: [spot], nodes: [Table.node("s", pool: "spot")]))
        #expect(refused["spot"]?.contains("tier policy") == true)
    }

    @Test func standardUsesSpotOnlyWhenCheckpointable() {
        let nodes = [Table.node("s", pool: "spot")]
        #expect(refusals(Table.decide(Table.job(tier: .standard), pools: [spot], nodes: nodes))["spot"]?.contains("checkpointable") == true)
        #expect(placedNode(Table.decide(Table.job(tier: .standard, checkpointable: true), pools: [spot], nodes: nodes)) == "s")
        // With both, on-demand comes first for standard.
        let both = [Table.node("s", pool: "spot"), Table.node("o", pool: "od")]
        #expect(placedNode(Table.decide(Table.job(tier: .standard, checkpointable: true), pools: [spot, onDemand], nodes: both)) == "o")
    }

    @Test func admissionKeepsLongUncheckpointableWorkOffSpot() {
        let nodes = [Table.node("s", pool: "spot"), Table.node("o", pool: "od")]
        let long = Table.job(tier: .bestEffort, duration: 7200)
        #expect(placedNode(Table.decide(long, pools: [spot, onDemand], nodes: nodes)) == "o")
        #expect(refusals(Table.decide(long, pools: [spot], nodes: nodes))["spot"]?.contains("admission") == true)
        #expect(placedNode(Table.decide(Table.job(tier: .bestEffort, duration: 600), pools: [spot, onDemand], nodes: nodes)) == "s")
        #expect(
            placedNode(Table.decide(Table.job(tier: .bestEffort, checkpointable: true, duration: 7200), pools: [spot], nodes: nodes)) == "s"
        )
    }

    @Test func gpuTypeCordonedAndFullAreExplained() {
        let job = Table.job(tier: .standard, gpus: 4, gpuType: "H100")
        let nodes = [Table.node("a", pool: "a100"), Table.node("c", pool: "od", state: .cordoned), Table.node("x", pool: "rsv", used: 6)]
        let reasons = refusals(Table.decide(job, pools: [a100, onDemand, reserved], nodes: nodes))
        #expect(reasons["a100"]?.contains("wrong GPU type") == true)
        #expect(reasons["rsv"]?.contains("tier policy") == true)
        #expect(reasons["od"] != nil)
    }

    @Test func packsOntoPartlyUsedNodesFirst() {
        let nodes = [Table.node("empty", pool: "od"), Table.node("half", pool: "od", used: 4), Table.node("full", pool: "od", used: 8)]
        #expect(placedNode(Table.decide(Table.job(tier: .standard, gpus: 2), pools: [onDemand], nodes: nodes)) == "half")
        #expect(placedNode(Table.decide(Table.job(tier: .standard, gpus: 6), pools: [onDemand], nodes: nodes)) == "empty")
    }

    @Test func bestEffortSpreadsAndAvoidsRiskyPools() {
        let nodes = [Table.node("a", pool: "spot"), Table.node("b", pool: "spot-b")]
        var candidates = Table.candidates([spot, spotB], nodes: nodes, job: Table.job(tier: .bestEffort))
        candidates[0].bestEffortJobs = 3
        let spread = Placement.decide(job: Table.job(tier: .bestEffort), policy: Table.policy(.bestEffort), candidates: candidates)
        #expect(placedNode(spread) == "b")
        var risky = PoolStats()
        risky.rebalanceSignals = 1
        #expect(
            placedNode(Table.decide(Table.job(tier: .bestEffort), pools: [spot, spotB], nodes: nodes, stats: ["spot-b": risky])) == "a")
    }

    @Test func preemptionPicksFewestBestEffortJobsOnStableCapacity() {
        var victim1 = Table.job("be1", tier: .bestEffort, gpus: 4)
        victim1.state = .running
        var victim2 = Table.job("be2", tier: .bestEffort, gpus: 2)
        victim2.state = .running
        let sites = [
            Placement.PreemptionSite(node: Table.node("o1", pool: "od", used: 8), pool: onDemand, bestEffortJobs: [victim2, victim1]),
            Placement.PreemptionSite(node: Table.node("s1", pool: "spot", used: 8), pool: spot, bestEffortJobs: [victim1]),
        ]
        let choice = Placement.choosePreemption(
            job: Table.job(tier: .premium, gpus: 4), policy: Table.policy(.premium), sites: sites, now: 0)
        #expect(choice?.nodeIds == ["o1"])
        #expect(choice?.jobIds == ["be1"])
        #expect(
            Placement.choosePreemption(job: Table.job(tier: .standard, gpus: 4), policy: Table.policy(.standard), sites: sites, now: 0)
                == nil)
    }

    /// Victims by least work lost: GPUs × time since the last checkpoint (or since the attempt started). A job that
    /// checkpointed a minute ago yields before one that has run an hour without one, even holding more GPUs.
    @Test func preemptionPicksLeastLostWork() {
        let now: Millis = 10_000_000
        func running(_ id: String, gpus: Int, startedAgo: Millis, checkpointAgo: Millis? = nil, seq: Int64 = 1) -> Job {
            var job = Table.job(id, tier: .bestEffort, gpus: gpus)
            job.state = .running
            job.seq = seq
            job.startedAt = now - startedAgo * 1000
            if let checkpointAgo { job.lastCheckpoint = Checkpoint(uri: "s3://c/\(id)", step: 1, at: now - checkpointAgo * 1000) }
            return job
        }
        let fresh = running("fresh", gpus: 8, startedAgo: 7200, checkpointAgo: 60, seq: 1)
        let stale = running("stale", gpus: 4, startedAgo: 3600, seq: 2)
        #expect(Placement.lostWork(fresh, now: now) == 8 * 60)
        #expect(Placement.lostWork(stale, now: now) == 4 * 3600)
        let sites = [
            Placement.PreemptionSite(node: Table.node("o1", pool: "od", used: 8), pool: onDemand, bestEffortJobs: [fresh]),
            Placement.PreemptionSite(node: Table.node("o2", pool: "od", used: 8), pool: onDemand, bestEffortJobs: [stale]),
        ]
        let choice = Placement.choosePreemption(
            job: Table.job(tier: .premium, gpus: 4), policy: Table.policy(.premium), sites: sites, now: now)
        #expect(choice == Placement.PreemptionChoice(nodeIds: ["o1"], jobIds: ["fresh"]))

        // On one node: the cheap pair before the costly single, and a victim not needed after all is let off.
        let small1 = running("small1", gpus: 2, startedAgo: 100, seq: 3)
        let small2 = running("small2", gpus: 2, startedAgo: 100, seq: 4)
        let big = running("big", gpus: 4, startedAgo: 5000, seq: 5)
        let site = Placement.PreemptionSite(
            node: Table.node("o3", pool: "od", used: 8), pool: onDemand, bestEffortJobs: [big, small1, small2])
        #expect(Set(Placement.cheapestVictims(site, gpus: 4, now: now)?.jobs.map(\.id) ?? []) == ["small1", "small2"])
        let wide = running("wide", gpus: 6, startedAgo: 10, seq: 6)
        let tiny = running("tiny", gpus: 2, startedAgo: 1, seq: 7)
        let site2 = Placement.PreemptionSite(node: Table.node("o4", pool: "od", used: 8), pool: onDemand, bestEffortJobs: [wide, tiny])
        // Cheapest first takes tiny then wide (8 free); tiny was not needed for 6.
        #expect(Placement.cheapestVictims(site2, gpus: 6, now: now)?.jobs.map(\.id) == ["wide"])

        // A best-effort gang counts all its GPUs, on every node: it costs more than a single job of the same age.
        var gang = running("gang", gpus: 4, startedAgo: 600, seq: 8)
        gang.nodes = 4
        gang.nodeIds = ["o5", "x", "y", "z"]
        let single = running("single", gpus: 4, startedAgo: 1200, seq: 9)
        let sites3 = [
            Placement.PreemptionSite(node: Table.node("o5", pool: "od", used: 8), pool: onDemand, bestEffortJobs: [gang]),
            Placement.PreemptionSite(node: Table.node("o6", pool: "od", used: 8), pool: onDemand, bestEffortJobs: [single]),
        ]
        #expect(
            Placement.choosePreemption(job: Table.job(tier: .premium, gpus: 4), policy: Table.policy(.premium), sites: sites3, now: now)?
                .jobIds == ["single"])
    }

    @Test func autoscalerPrefersOtherSpotPoolThenOnDemand() {
        let lost = Table.pool("spot", .spot, zone: "a")
        let otherZone = Table.pool("spot-b", .spot, zone: "b")
        let sameShape = Table.pool("spot-twin", .spot, zone: "a")
        let od = Table.pool("od", .onDemand)
        var stats: [String: PoolStats] = [:]
        #expect(Autoscaler.replacementPool(lost: lost, pools: [lost, sameShape, otherZone, od], stats: stats)?.name == "spot-b")
        #expect(Autoscaler.replacementPool(lost: lost, pools: [lost, otherZone, od], stats: stats, onDemandOnly: true)?.name == "od")
        var full = PoolStats()
        full.committedNodes = 100
        stats["spot-b"] = full
        #expect(Autoscaler.replacementPool(lost: lost, pools: [lost, otherZone, od], stats: stats)?.name == "od")
        #expect(Autoscaler.replacementPool(lost: lost, pools: [lost, Table.pool("a100", .onDemand, gpu: "A100")], stats: stats) == nil)
    }
}

@Suite("Placement through HTTP")
struct PlacementAPITests {
    @Test func premiumRefusedOnSpotOnlyWithReasons() async throws {
        let env = try TestEnv { $0.autoPlace = false }
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-a", "spot"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("p", tier: "premium"))
            let refused = try await client.expectProblem(.conflict, .post, "/v1/placements", #"{"job_id":"p"}"#)
            #expect(refused["detail"]?.string?.contains("spot-a: tier policy") == true)
            #expect(refused["pools"]?["spot-a"]?.string?.contains("premium") == true)
            try await client.expectProblem(.notFound, .post, "/v1/placements", #"{"job_id":"ghost"}"#)
            try await client.expectProblem(.badRequest, .post, "/v1/placements", #"{"job":"p"}"#)
        }
    }

    @Test func admissionDryRunAndCordonedNodes() async throws {
        let env = try TestEnv { $0.autoPlace = false }
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("o1", pool: "od"))
            try await client.expect(
                .created, .post, "/v1/jobs", Seed.job("long", tier: "best_effort", extra: #","expected_duration_seconds":7200"#))
            let dry = try await client.expect(.ok, .post, "/v1/placements", #"{"job_id":"long","dry_run":true}"#)
            #expect(dry["node_id"] == .string("o1"))
            #expect(try await client.call(.get, "/v1/jobs/long")["state"] == .string("queued"))
            #expect(try await env.store.node("o1")?.node.gpusAllocated == 0)
            try await client.expect(.ok, .post, "/v1/nodes/o1/cordon")
            let refused = try await client.expectProblem(.conflict, .post, "/v1/placements", #"{"job_id":"long"}"#)
            #expect(refused["pools"]?["spot-a"]?.string?.contains("admission") == true)
            #expect(refused["pools"]?["od"]?.string?.contains("cordoned") == true)
            try await client.expect(.ok, .post, "/v1/nodes/o1/uncordon")
            let placed = try await client.expect(.created, .post, "/v1/placements", #"{"job_id":"long"}"#)
            #expect(placed["attempt"] == .int(1))
            #expect(placed["reasons"]?.array.isEmpty == false)
            try await client.expectProblem(.conflict, .post, "/v1/placements", #"{"job_id":"long"}"#)
        }
    }

    @Test func loopPlacesPremiumFirstWhenOneSlotOpens() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od", "on_demand", gpus: 1))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("be", tier: "best_effort"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("std", tier: "standard"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("prem", tier: "premium"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("o1", pool: "od"))
            try await env.step()
            #expect(try await client.call(.get, "/v1/jobs/prem")["state"] == .string("running"))
            #expect(try await client.call(.get, "/v1/jobs/std")["state"] == .string("queued"))
            try await client.expect(.ok, .post, "/v1/jobs/prem/complete")
            try await env.step()
            #expect(try await client.call(.get, "/v1/jobs/std")["state"] == .string("running"))
            #expect(try await client.call(.get, "/v1/jobs/be")["state"] == .string("queued"))
        }
    }

    /// A queue head that cannot fit anywhere (a GPU type no pool has) does not starve a job behind it, even when
    /// the head is longer than one page of the loop.
    @Test func loopLooksPastAHeadThatCannotFit() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od", "on_demand"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("o1", pool: "od"))
            for index in 0..<5 {
                try await client.expect(
                    .created, .post, "/v1/jobs", Seed.job("h200-\(index)", tier: "standard", extra: #","gpu_type":"H200""#))
            }
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("fits", tier: "best_effort"))
            let loop = SchedulingLoop(store: env.store, limits: SchedulingLimits(maxPlacements: 1000, pageSize: 2, maxPages: 4))
            let report = try await loop.reconcile(lease: try await env.lease())
            #expect(report.placed == 1)
            #expect(!report.more)
            #expect(try await client.call(.get, "/v1/jobs/fits")["state"] == .string("running"))
            #expect(try await client.call(.get, "/v1/jobs/h200-0")["state"] == .string("queued"))

            // A pass stops at its placement budget and says there is more.
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("next-1", tier: "best_effort"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("next-2", tier: "best_effort"))
            let one = SchedulingLoop(store: env.store, limits: SchedulingLimits(maxPlacements: 1))
            let first = try await one.reconcile(lease: try await env.lease())
            #expect(first.placed == 1 && first.more)
            let second = try await one.reconcile(lease: try await env.lease())
            #expect(second.placed == 1)
            #expect(try await client.call(.get, "/v1/jobs/next-2")["state"] == .string("running"))
        }
    }

    @Test func premiumPreemptsBestEffortOnStableCapacity() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od", "on_demand"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("o1", pool: "od"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("be-ckpt", tier: "best_effort", gpus: 4, checkpointable: true))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("be-plain", tier: "best_effort", gpus: 4))
            try await env.step()
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("prem", tier: "premium", gpus: 4))
            try await env.step()
            // One best-effort job yields (the non-checkpointable one at once, or the checkpointable one after its checkpoint).
            try await env.step()
            try await env.advance(31)
            try await env.step()
            let premium = try await client.call(.get, "/v1/jobs/prem")
            #expect(premium["state"] == .string("running"))
            #expect(premium["node_id"] == .string("o1"))
            let requeued = try await client.call(.get, "/v1/events?type=job.requeued")
            #expect(requeued["items"]?.array.count == 1)
            #expect(requeued["items"]?[0]?["data"]?["reason"]?.string?.contains("premium job prem") == true)
        }
    }

    /// 60 concurrent placement calls race for 20 free slots over real sockets: exactly 20 win.
    @Test func concurrentPlacementsNeverOverAllocate() async throws {
        let env = try TestEnv { $0.autoPlace = false }
        try await env.app().test(.live) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od", "on_demand", gpus: 4))
            for index in 0..<5 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("o\(index)", pool: "od")) }
            for index in 0..<60 { try await client.expect(.created, .post, "/v1/jobs", Seed.job("j\(index)", tier: "standard")) }
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<60 {
                    group.addTask { try await client.call(.post, "/v1/placements", #"{"job_id":"j\#(index)"}"#).status.code }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(statuses.filter { $0 == 201 }.count == 20)
            #expect(statuses.filter { $0 == 409 }.count == 40)
            let nodes = try await client.call(.get, "/v1/nodes")
            #expect(nodes["items"]?.array.allSatisfy { $0["gpus_allocated"] == .int(4) } == true)
            let running = try await client.call(.get, "/v1/jobs?state=running")
            #expect(running["items"]?.array.count == 20)
        }
    }
}

/// A small deterministic generator (SplitMix64), so that a failing seed can be replayed.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
