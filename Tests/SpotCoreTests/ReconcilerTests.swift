import Foundation
import HummingbirdTesting
import Logging
import Testing

@testable import SpotCore

/// The reconcilers' decisions, without a database.
@Suite("Workflow decisions (pure)")
struct WorkflowDecisionTests {
    let spotA = Table.pool("spot-a", .spot, zone: "a")
    var spotB: Pool {
        var pool = Table.pool("spot-b", .spot, zone: "b")
        pool.maxNodes = 1
        return pool
    }
    let onDemand = Table.pool("od", .onDemand, zone: "a")

    func interruption(_ node: String, deadline: Millis?, live: Bool = true) -> Interruption {
        Interruption(
            id: "int-\(node)", seq: 1, nodeId: node, pool: "spot-a", kind: .termination, source: "aws", eventId: "e-\(node)",
            state: .received, deadline: deadline, receivedAt: 0, nodeWasLive: live)
    }

    /// One lost node's jobs: checkpointable ones checkpoint by deadline − margin, the others are requeued at once.
    /// Replacements go to another spot pool while it has room, counted as the pass goes, then to on-demand.
    @Test func drainDecidesEachJobAndKeepsCapacityCurrent() {
        var running = Table.job("ckpt", tier: .bestEffort, checkpointable: true)
        running.state = .running
        var plain = Table.job("plain", tier: .bestEffort)
        plain.state = .running
        let now: Millis = 1_000_000
        let cases = [
            DrainCase(
                interruption: interruption("n1", deadline: now + 120_000), node: Table.node("n1", pool: "spot-a"),
                jobs: [running, plain]),
            DrainCase(interruption: interruption("n2", deadline: now + 120_000), node: Table.node("n2", pool: "spot-a"), jobs: []),
            DrainCase(
                interruption: interruption("n3", deadline: now + 120_000, live: false), node: Table.node("n3", pool: "spot-a"),
                jobs: []),
        ]
        let capacity = CapacityView(pools: [spotA, spotB, onDemand], stats: [:])
        let decisions = Drain.decide(cases, capacity: capacity, now: now, marginSeconds: 10)
        #expect(decisions.count == 3)
        #expect(decisions[0].jobs.map(\.action) == [.checkpoint(deadline: now + 110_000), .requeue])
        #expect(decisions[0].replacement == .pool(spotB))
        #expect(decisions[1].replacement == .pool(onDemand), "spot-b's one slot went to the first node")
        #expect(decisions[2].replacement == .none, "a node gone before its notice is not replaced")
        // No room anywhere for this GPU type.
        var a100 = Table.job("x", tier: .bestEffort)
        a100.state = .running
        let lonely = Table.pool("lonely", .spot, gpu: "A100")
        let unavailable = Drain.decide(
            [DrainCase(interruption: interruption("n4", deadline: now), node: Table.node("n4", pool: "lonely"), jobs: [a100])],
            capacity: CapacityView(pools: [lonely], stats: [:]), now: now, marginSeconds: 10)
        #expect(unavailable[0].replacement == .unavailable(gpuType: "A100"))
        #expect(unavailable[0].jobs.map(\.action) == [.requeue], "no time left to checkpoint")
    }

    /// A gang member's replacement stays in the survivors' zone: another spot pool there, else on-demand there when
    /// the gang's tier may use it; a tier that may not gets spot in another zone.
    @Test func aGangMembersReplacementStaysInItsZone() {
        let now: Millis = 1_000_000
        var gang = Table.job("g", tier: .bestEffort, gpus: 8, checkpointable: true)
        gang.state = .running
        gang.nodes = 2
        gang.nodeIds = ["n1", "n2"]
        let drain = DrainCase(
            interruption: interruption("n1", deadline: now + 120_000), node: Table.node("n1", pool: "spot-a"), jobs: [gang])
        let policies = Dictionary(uniqueKeysWithValues: Policy.defaults(admissionLimit: 3600, at: 0).map { ($0.tier, $0) })
        let otherZone = Table.pool("spot-y", .spot, zone: "y")
        func replacement(_ pools: [Pool], _ policies: [Tier: Policy]) -> DrainDecision.Replacement? {
            Drain.decide([drain], capacity: CapacityView(pools: pools, stats: [:], policies: policies), now: now, marginSeconds: 10)
                .first?.replacement
        }
        let spotA2 = Table.pool("spot-a2", .spot, zone: "a")
        #expect(replacement([spotA, otherZone, onDemand, spotA2], policies) == .pool(spotA2))
        #expect(replacement([spotA, otherZone, onDemand], policies) == .pool(onDemand))
        var spotOnly = policies
        spotOnly[.bestEffort]?.capacityTypes = [.spot]
        #expect(replacement([spotA, otherZone, onDemand], spotOnly) == .pool(otherZone))
    }

    @Test func interruptionRulesCloseInOrder() {
        var facts = InterruptionFacts(interruption: interruption("n", deadline: 100), nodeState: .draining, jobsLeft: 1, pendingRequests: 1)
        facts.interruption.state = .draining
        #expect(!Drain.terminationDue(facts, now: 99) && Drain.terminationDue(facts, now: 100))
        #expect(!Drain.emptied(facts))
        facts.jobsLeft = 0
        #expect(Drain.emptied(facts))
        #expect(!Drain.complete(facts), "the node is not gone yet")
        facts.nodeState = .terminated
        #expect(!Drain.complete(facts), "its replacement is still pending")
        #expect(!Drain.terminationDue(facts, now: 1000), "a terminated node is not terminated again")
        facts.pendingRequests = 0
        #expect(Drain.complete(facts))
    }

    /// The store reads only the interruptions `Drain.mayClose` admits: nothing `Drain.close` would act on is left out.
    @Test func closeActsOnlyOnWhatMayCloseAdmits() {
        var random = SeededRandom(seed: 7)
        for _ in 0..<2000 {
            var facts = InterruptionFacts(
                interruption: interruption("n", deadline: Bool.random(using: &random) ? Millis.random(in: 0...200, using: &random) : nil),
                nodeState: [nil, .ready, .cordoned, .draining, .drained, .terminated].randomElement(using: &random)!,
                jobsLeft: Int.random(in: 0...2, using: &random), pendingRequests: Int.random(in: 0...1, using: &random))
            facts.interruption.state = [.draining, .drained].randomElement(using: &random)!
            let now = Millis.random(in: 0...200, using: &random)
            #expect(Drain.close(facts, now: now).isEmpty || Drain.mayClose(facts, now: now), "\(facts)")
        }
        // A node reclaimed at its deadline is terminated, drained and completed in one pass.
        var due = InterruptionFacts(interruption: interruption("n", deadline: 10), nodeState: .draining, jobsLeft: 2, pendingRequests: 0)
        due.interruption.state = .draining
        #expect(Drain.close(due, now: 10) == [.terminate, .markDrained, .complete])
    }

    /// Two idle fallback nodes of 8 GPUs and 8 free spot GPUs: one goes, not both (each release takes spot room).
    @Test func scaleDownCountsTheSpotRoomItTakes() {
        let idle = [
            IdleFallback(nodeId: "f1", pool: "od", gpus: 8, gpuType: "H100", minNodes: 0),
            IdleFallback(nodeId: "f2", pool: "od", gpus: 8, gpuType: "H100", minNodes: 0),
            IdleFallback(nodeId: "f3", pool: "od-a100", gpus: 8, gpuType: "A100", minNodes: 0),
        ]
        #expect(Autoscaler.scaleDown(idle, spotFree: ["H100": 8], liveNodes: ["od": 2, "od-a100": 1]) == ["f1"])
        #expect(Autoscaler.scaleDown(idle, spotFree: ["H100": 16, "A100": 8], liveNodes: ["od": 2, "od-a100": 1]) == ["f1", "f2", "f3"])
        // Never below a pool's floor.
        let floored = idle.map { IdleFallback(nodeId: $0.nodeId, pool: $0.pool, gpus: $0.gpus, gpuType: $0.gpuType, minNodes: 1) }
        #expect(Autoscaler.scaleDown(floored, spotFree: ["H100": 16, "A100": 8], liveNodes: ["od": 2, "od-a100": 1]) == ["f1"])
    }

    @Test func floorsAskForWhatIsMissingWithinTheInFlightCap() {
        var pool = Table.pool("p", .onDemand)
        pool.minNodes = 30
        #expect(
            Autoscaler.floorRequests([FloorFacts(pool: pool, committedNodes: 0, pendingFloorRequests: 0, failedLately: false)]).map(\.count)
                == [20])
        #expect(
            Autoscaler.floorRequests([FloorFacts(pool: pool, committedNodes: 25, pendingFloorRequests: 15, failedLately: false)]).map(
                \.count) == [5])
        #expect(Autoscaler.floorRequests([FloorFacts(pool: pool, committedNodes: 0, pendingFloorRequests: 0, failedLately: true)]).isEmpty)
        #expect(
            Autoscaler.floorRequests([FloorFacts(pool: pool, committedNodes: 30, pendingFloorRequests: 0, failedLately: false)]).isEmpty)
    }

    /// The planner places in queue order onto the tightest node, stops at its budget, and asks premium protection
    /// once per pass.
    @Test func schedulingPlannerPlacesAndAsksProtectionOnce() {
        let input = SchedulingInput(
            nodes: [Table.node("a", pool: "spot-a", used: 6), Table.node("b", pool: "spot-a")], pools: [spotA],
            policies: Policy.defaults(admissionLimit: 3600, at: 0), stats: [:], bestEffortByPool: [:])
        var planner = SchedulingPlanner(input, maxPlacements: 2)
        let first = planner.next(Table.job("j1", tier: .bestEffort, gpus: 2))
        #expect(first == .place(nodeId: "a", pool: "spot-a", attempt: 1, reasons: placeReasons(first)))
        #expect(planner.next(Table.job("p1", tier: .premium)) == .protectPremium(Table.policy(.premium)))
        #expect(planner.next(Table.job("p2", tier: .premium)) == .wait, "protection is asked once per pass")
        if case .place(let node, _, _, _) = planner.next(Table.job("j2", tier: .bestEffort, gpus: 8)) { #expect(node == "b") }
        #expect(planner.isFull)
        #expect(planner.next(Table.job("j3", tier: .bestEffort)) == .wait)
    }

    func placeReasons(_ step: SchedulingPlanner.Step) -> [String] {
        if case .place(_, _, _, let reasons) = step { return reasons }
        return []
    }
}

@Suite("The worker lease and its fence", .serialized)
struct FencingTests {
    /// Two workers on one SQLite file. The first holds the lease, starts a pass, and is paused past its lease;
    /// the second takes over with a newer token and finishes the work. When the first resumes, every write it tries
    /// is refused: nothing is done twice.
    @Test func aPausedWorkerThatLostTheLeaseWritesNothing() async throws {
        let env = try TestEnv { $0.drainMarginSeconds = 10 }
        var config = env.runtime.config
        config.dbPath = env.runtime.config.dbPath
        var logger = Logger(label: "spotd-test-second")
        logger.logLevel = .critical
        let second = try SpotRuntime(config: config, clock: env.clock, logger: logger)
        let workerA = env.worker
        let workerB = second.worker(logger: logger)
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("ckpt", tier: "best_effort", gpus: 4, checkpointable: true))
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("plain", tier: "best_effort", gpus: 4))
            try await env.step()
            #expect(try await client.call(.get, "/v1/jobs?state=running")["items"]?.array.count == 2)

            // A holds the lease; B cannot take it.
            let leaseA = try #require(try await workerA.takeLease())
            #expect(try await workerB.takeLease() == nil)
            try await client.expect(.accepted, .post, "/v1/interruptions", #"{"node_id":"s1","kind":"termination","notice_seconds":60}"#)

            // A starts its pass (the drain), then is paused for longer than its lease lives.
            _ = try await workerA.drains.startDrains(lease: leaseA)
            env.clock.advance(seconds: 3)
            let leaseB = try #require(try await workerB.takeLease())
            #expect(leaseB.token == leaseA.token + 1)
            var stateB = WorkflowWorker.PassState()
            try await workerB.runOnce(&stateB, lease: leaseB)

            // Meanwhile there is work for every reconciler: a new notice, a pool below its floor, and (50 s on) a
            // checkpoint deadline that passed.
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s2", pool: "spot-a"))
            try await client.expect(.accepted, .post, "/v1/interruptions", #"{"node_id":"s2","kind":"termination","notice_seconds":60}"#)
            try await client.expect(.ok, .patch, "/v1/pools/spot-b", #"{"min_nodes":3}"#)
            env.clock.advance(seconds: 50)
            let before = try env.digest()

            // A resumes where it was: every write it tries is refused, and nothing changes.
            await #expect(throws: StoreError.fenced) { try await workerA.checkpoints.reconcile(lease: leaseA) }
            await #expect(throws: StoreError.fenced) { try await workerA.drains.startDrains(lease: leaseA) }
            await #expect(throws: StoreError.fenced) { try await workerA.drains.closeInterruptions(lease: leaseA) }
            await #expect(throws: StoreError.fenced) { try await workerA.scheduling.reconcile(lease: leaseA) }
            await #expect(throws: StoreError.fenced) { try await workerA.capacity.reconcile(lease: leaseA) }
            await #expect(throws: StoreError.fenced) { try await workerA.replacement.reconcile(lease: leaseA) }
            await #expect(throws: StoreError.fenced) {
                try await workerA.retention.run(now: env.clock.now(), lease: leaseA, logger: Logger(label: "test"))
            }
            var stateA = WorkflowWorker.PassState()
            await #expect(throws: StoreError.fenced) { try await workerA.runOnce(&stateA, lease: leaseA) }
            // Its service pass meets the fence too, and lets the lease go; it cannot take it back while B renews.
            workerA.lease.set(leaseA)
            await workerA.pass(&stateA)
            #expect(workerA.lease.value == nil)
            _ = try #require(try await workerB.takeLease())
            try await workerA.renew()
            #expect(workerA.lease.value == nil)
            #expect(try env.digest() == before, "a worker that lost the lease changed the store")

            // B finishes the work: one checkpoint request and one requeue per job, one replacement per lost node.
            for _ in 0..<3 {
                env.clock.advance(seconds: 30)
                try await workerB.runOnce(&stateB, lease: try #require(try await workerB.takeLease()))
            }
            #expect(try await client.call(.get, "/v1/interruptions?state=completed")["items"]?.array.count == 2)
            let events = try await client.call(.get, "/v1/events?limit=1000")["items"]!.array
            #expect(events.filter { $0["type"] == .string("job.checkpoint_requested") }.count == 1)
            #expect(events.filter { $0["type"] == .string("job.requeued") }.count == 2)
            let replacements = events.filter {
                $0["type"] == .string("provisioning.requested") && $0["data"]?["reason"] == .string("replacement")
            }
            #expect(replacements.count == 2)
            #expect(Set(replacements.compactMap { $0["data"]?["replaces_node_id"]?.string }) == ["s1", "s2"])
            #expect(try await client.call(.get, "/v1/jobs/ckpt")["requeue_count"] == .int(1))

            // B gives the lease up; A takes it back with a newer token and works again.
            let lastB = try #require(workerB.lease.value)
            try await env.store.releaseLease(lastB)
            try await workerA.renew()
            let regained = try #require(workerA.lease.value)
            #expect(regained.token == lastB.token + 1)
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("after", tier: "best_effort"))
            var again = WorkflowWorker.PassState()
            try await workerA.runOnce(&again, lease: regained)
            #expect(try await client.call(.get, "/v1/jobs/after")["state"] == .string("running"))
        }
        try second.close()
    }
}

@Suite("Configuration reaches every decision")
struct AdmissionLimitTests {
    /// A tier with no stored policy gets the default one with the configured admission limit (it was 3600 in three
    /// places, whatever the configuration said), in the placement call and in the scheduling loop alike.
    @Test func defaultPoliciesUseTheConfiguredAdmissionLimit() async throws {
        let env = try TestEnv { $0.admissionLimitSeconds = 100 }
        try await env.store.write { db in try db.execute(sql: "DELETE FROM policies") }
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-a", "spot"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            let limit = try await client.expect(.ok, .get, "/v1/policies")["items"]?.array.first { $0["tier"] == .string("best_effort") }
            #expect(limit?["max_uncheckpointable_spot_seconds"] == .int(100))
            try await client.expect(
                .created, .post, "/v1/jobs", Seed.job("long", tier: "best_effort", extra: #","expected_duration_seconds":200"#))
            let refused = try await client.expectProblem(.conflict, .post, "/v1/placements", #"{"job_id":"long","dry_run":true}"#)
            #expect(refused["detail"]?.string?.contains("admission") == true, "\(refused.text)")
            try await env.step()
            #expect(try await client.call(.get, "/v1/jobs/long")["state"] == .string("queued"))
        }
    }
}
