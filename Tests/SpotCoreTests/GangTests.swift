import Foundation
import HummingbirdTesting
import Testing

@testable import SpotCore

/// Checks, through the API, what must hold of gangs at every moment: a job on nodes is on exactly `nodes` distinct
/// nodes of one zone and GPU type, a job on none lists none, and every node's allocated GPUs are exactly the GPUs of
/// the jobs that list it.
func expectFleetConsistent(_ client: some TestClientProtocol, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let jobs = try await client.expect(.ok, .get, "/v1/jobs?limit=1000")["items"]?.array ?? []
    let nodes = try await client.expect(.ok, .get, "/v1/nodes?limit=1000")["items"]?.array ?? []
    var byId: [String: JSONValue] = [:]
    for node in nodes { byId[node["id"]?.string ?? ""] = node }
    var allocated: [String: Int64] = [:]
    for job in jobs {
        let members = job["node_ids"]?.array.compactMap(\.string) ?? []
        let onNodes = ["running", "checkpointing"].contains(job["state"]?.string ?? "")
        if onNodes {
            #expect(members.count == Int(job["nodes"]?.int ?? 0), "job \(job["id"]!) holds \(members)", sourceLocation: sourceLocation)
            #expect(Set(members).count == members.count, "job \(job["id"]!) repeats a node: \(members)", sourceLocation: sourceLocation)
            #expect(job["node_id"]?.string == members.first, sourceLocation: sourceLocation)
            let zones = Set(members.compactMap { byId[$0]?["zone"]?.string })
            let types = Set(members.compactMap { byId[$0]?["gpu_type"]?.string })
            #expect(zones.count == 1 && types.count == 1, "job \(job["id"]!) spans \(zones) \(types)", sourceLocation: sourceLocation)
            for member in members { allocated[member, default: 0] += job["gpus"]?.int ?? 0 }
        } else {
            #expect(
                members.isEmpty && job["node_id"] == .null, "job \(job["id"]!) is \(job["state"]!) on \(members)",
                sourceLocation: sourceLocation)
        }
    }
    for node in nodes where node["state"]?.string != "terminated" {
        let id = node["id"]?.string ?? ""
        #expect(
            node["gpus_allocated"]?.int == allocated[id] ?? 0,
            "node \(id): \(node["gpus_allocated"]!) allocated, jobs hold \(allocated[id] ?? 0)", sourceLocation: sourceLocation)
    }
}

@Suite("Gangs: multi-node jobs through HTTP")
struct GangTests {
    /// Two spot zones of H100 x8 and an on-demand pool in the first zone.
    func pools(_ client: some TestClientProtocol, maxA: Int = 100) async throws {
        try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-a", "spot", zone: "us-east-1a", max: maxA))
        try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-b", "spot", zone: "us-east-1b", max: 6))
        try await client.expect(.created, .post, "/v1/pools", Seed.pool("od-a", "on_demand", zone: "us-east-1a", price: 98, max: 10))
    }

    func gang(_ id: String, nodes: Int, gpus: Int = 8, tier: String = "best_effort", checkpointable: Bool = true) -> String {
        Seed.job(id, tier: tier, gpus: gpus, checkpointable: checkpointable, extra: #","nodes":\#(nodes)"#)
    }

    @Test func badGangsAreRefusedAndStoreNothing() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await pools(client, maxA: 20)
            let before = try env.digest()
            // Zone a holds 20 spot + 10 on-demand nodes, zone b 6. Counted for the tier's capacity types: a standard or
            // best-effort gang (spot and on-demand) of 31 fits in no zone, nor a premium one (on-demand only) of 11.
            // A standard gang that cannot checkpoint may not use spot: 11 is too wide for it.
            for (tier, nodes, most, checkpointable) in [
                ("standard", 31, 30, true), ("best_effort", 31, 30, true), ("premium", 11, 10, true), ("standard", 11, 10, false),
            ] {
                let wide = try await client.expectProblem(
                    .unprocessableContent, .post, "/v1/jobs", gang("wide", nodes: nodes, tier: tier, checkpointable: checkpointable),
                    field: "nodes")
                #expect(wide["detail"]?.string?.hasPrefix("nodes (\(nodes)) is wider than any zone can hold") == true, "\(wide.text)")
                #expect(wide["detail"]?.string?.contains("\(most) node(s) in us-east-1a/H100") == true, "\(wide.text)")
            }
            // No pool has nodes of 16 GPUs or of another GPU type.
            try await client.expectProblem(.unprocessableContent, .post, "/v1/jobs", gang("big", nodes: 2, gpus: 16), field: "nodes")
            try await client.expectProblem(
                .unprocessableContent, .post, "/v1/jobs",
                Seed.job("a100", tier: "best_effort", extra: #","nodes":2,"gpu_type":"A100""#), field: "nodes")
            for nodes in ["0", "65", "-1", "1.5", "\"4\"", "null", "99999999999999999999"] {
                try await client.expectProblem(
                    .badRequest, .post, "/v1/jobs", Seed.job("x", tier: "best_effort", extra: #","nodes":\#(nodes)"#), field: "nodes")
            }
            try await client.expectProblem(.badRequest, .post, "/v1/jobs", Seed.job("x", tier: "best_effort", extra: #","members":2"#))
            #expect(try env.digest() == before)
            // A gang that fits some zone is taken.
            let fits = try await client.expect(.created, .post, "/v1/jobs", gang("fits", nodes: 30, tier: "standard"))
            #expect(fits["nodes"] == .int(30))
            try await client.expect(.created, .post, "/v1/jobs", gang("fits-too", nodes: 20))
            #expect(fits["node_ids"] == .array([]))
        }
    }

    /// Fifty gangs placed at once over real HTTP at tight capacity: each is bound on all its nodes or on none, never
    /// on a node twice, never across zones, and no GPU is counted twice.
    @Test func concurrentGangPlacementsAreAllOrNothing() async throws {
        let env = try TestEnv()
        try await env.app().test(.live) { client in
            try await pools(client)
            // Zone a: 7 spot nodes; zone b: 5. Gangs of 2 to 4 full nodes (or half nodes) compete for them.
            for index in 0..<7 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("a\(index)", pool: "spot-a")) }
            for index in 0..<5 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("b\(index)", pool: "spot-b")) }
            for index in 0..<50 {
                try await client.expect(.created, .post, "/v1/jobs", gang("g\(index)", nodes: 2 + index % 3, gpus: index % 4 == 0 ? 4 : 8))
            }
            let api = DemoClient(base: "http://127.0.0.1:\(try #require(client.port))")
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<50 {
                    group.addTask { try await api.call("POST", "/v1/placements", #"{"job_id":"g\#(index)"}"#).0 }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(Set(statuses).isSubset(of: [201, 409]), "\(statuses)")
            let placed = statuses.filter { $0 == 201 }.count
            #expect(placed >= 3, "\(statuses)")
            let running = try await client.expect(.ok, .get, "/v1/jobs?state=running&limit=1000")["items"]?.array ?? []
            #expect(running.count == placed)
            try await expectFleetConsistent(client)
            let events = try await client.expect(.ok, .get, "/v1/events?type=job.placed&limit=1000")["items"]?.array ?? []
            #expect(events.count == placed)
        }
    }

    @Test func theLoopPlacesAGangInOneZoneAndTheAnswerNamesEveryMember() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await pools(client)
            // Zone b has 3 empty nodes; zone a has 2 empty and one half-used: a gang of 3 x 8 fits only in zone b.
            for index in 0..<3 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("a\(index)", pool: "spot-a")) }
            for index in 0..<3 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("b\(index)", pool: "spot-b")) }
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("half", tier: "best_effort", gpus: 4))
            try await client.expect(.created, .post, "/v1/placements", #"{"job_id":"half"}"#)
            try await client.expect(.created, .post, "/v1/jobs", gang("trio", nodes: 3))
            let dry = try await client.expect(.ok, .post, "/v1/placements", #"{"job_id":"trio","dry_run":true}"#)
            #expect(dry["node_ids"]?.array.compactMap(\.string).sorted() == ["b0", "b1", "b2"], "\(dry.text)")
            #expect(dry["reasons"]?[0]?.string?.hasPrefix("gang: 3 nodes in us-east-1b/H100") == true, "\(dry.text)")
            // A gang of 4 x 8 fits nowhere: the refusal explains it pool by pool.
            try await client.expect(.created, .post, "/v1/jobs", gang("quad", nodes: 4))
            let refused = try await client.expectProblem(.conflict, .post, "/v1/placements", #"{"job_id":"quad"}"#)
            #expect(refused["pools"]?["spot-b"]?.string?.contains("the gang needs 4 in one zone") == true, "\(refused.text)")
            #expect(try await client.expect(.ok, .get, "/v1/jobs/quad")["state"] == .string("queued"))

            try await env.step()
            let trio = try await client.expect(.ok, .get, "/v1/jobs/trio")
            #expect(trio["state"] == .string("running"))
            #expect(trio["node_ids"]?.array.compactMap(\.string).sorted() == ["b0", "b1", "b2"])
            #expect(try await client.expect(.ok, .get, "/v1/jobs/quad")["state"] == .string("queued"))
            // Every member's node lists the gang, and the node filter finds it from any member.
            for member in ["b0", "b1", "b2"] {
                #expect(try await client.expect(.ok, .get, "/v1/nodes/\(member)")["jobs"] == .array([.string("trio")]))
                let found = try await client.expect(.ok, .get, "/v1/jobs?node=\(member)")["items"]?.array ?? []
                #expect(found.map { $0["id"] } == [.string("trio")])
            }
            try await expectFleetConsistent(client)
            let summary = try await client.expect(.ok, .get, "/v1/summary")
            #expect(summary["gangs"]?["running"] == .int(1))
            #expect(summary["gangs"]?["queued"] == .int(1))
            #expect(summary["jobs"]?["best_effort"]?["running"] == .int(2))
            // Completing it frees every member.
            try await client.expect(.ok, .post, "/v1/jobs/trio/complete", #"{"attempt":1}"#)
            for member in ["b0", "b1", "b2"] {
                #expect(try await client.expect(.ok, .get, "/v1/nodes/\(member)")["gpus_allocated"] == .int(0))
            }
            try await expectFleetConsistent(client)
        }
    }

    /// One pass of the loop places several gangs and never gives one node to two of them.
    @Test func theLoopPlacesManyGangsInOnePassWithoutSharingANode() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await pools(client)
            for index in 0..<7 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("a\(index)", pool: "spot-a")) }
            for index in 0..<5 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("b\(index)", pool: "spot-b")) }
            for index in 0..<6 { try await client.expect(.created, .post, "/v1/jobs", gang("g\(index)", nodes: 3)) }
            try await env.step()
            // Zone a takes two gangs of three full nodes, zone b one.
            let running = try await client.expect(.ok, .get, "/v1/jobs?state=running")["items"]?.array ?? []
            #expect(running.count == 3, "\(running)")
            try await expectFleetConsistent(client)
        }
    }

    /// A notice on one member: the whole gang is asked to checkpoint once, requeued once, every member freed; the
    /// survivors stay schedulable; only the lost node is replaced, in the survivors' zone.
    @Test func oneMembersNoticeCheckpointsAndRequeuesTheWholeGangOnce() async throws {
        let env = try TestEnv { $0.drainMarginSeconds = 10 }
        try await env.app().test(.router) { client in
            try await pools(client)
            try await client.expect(
                .created, .post, "/v1/pools", Seed.pool("spot-a2", "spot", zone: "us-east-1a", instance: "p4d", price: 40))
            for index in 0..<4 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("a\(index)", pool: "spot-a")) }
            try await client.expect(.created, .post, "/v1/jobs", gang("train", nodes: 4))
            try await env.step()
            let placed = try await client.expect(.ok, .get, "/v1/jobs/train")
            #expect(placed["state"] == .string("running"))

            try await client.expect(
                .accepted, .post, "/v1/interruptions", #"{"node_id":"a2","kind":"termination","notice_seconds":120,"event_id":"e1"}"#)
            try await env.step()
            let asked = try await client.expect(.ok, .get, "/v1/jobs/train")
            #expect(asked["state"] == .string("checkpointing"))
            #expect(asked["node_ids"]?.array.count == 4)
            let requests = try await client.expect(.ok, .get, "/v1/events?type=job.checkpoint_requested")["items"]?.array ?? []
            #expect(requests.count == 1)
            #expect(requests.first?["data"]?["node_ids"]?.array.count == 4)
            // The lost node's replacement: another spot pool of the survivors' zone, though spot-b (another zone) is
            // cheaper and would replace a lone node.
            let provisioning = try await client.expect(.ok, .get, "/v1/provisioning-requests")["items"]?.array ?? []
            #expect(provisioning.count == 1)
            #expect(provisioning.first?["pool"] == .string("spot-a2"), "\(provisioning)")
            #expect(provisioning.first?["replaces_node_id"] == .string("a2"))

            // The gang checkpoints: one requeue, every member freed, survivors still ready.
            try await client.expect(.ok, .post, "/v1/jobs/train/checkpoints", #"{"uri":"s3://ckpt/train/9","step":9,"attempt":1}"#)
            let requeued = try await client.expect(.ok, .get, "/v1/jobs/train")
            #expect(requeued["state"] == .string("queued"))
            #expect(requeued["requeue_count"] == .int(1))
            #expect(requeued["node_ids"] == .array([]))
            #expect(requeued["resume_from"]?["step"] == .int(9))
            for survivor in ["a0", "a1", "a3"] {
                let node = try await client.expect(.ok, .get, "/v1/nodes/\(survivor)")
                #expect(node["state"] == .string("ready"))
                #expect(node["gpus_allocated"] == .int(0))
            }
            #expect(try await client.expect(.ok, .get, "/v1/nodes/a2")["gpus_allocated"] == .int(0))
            try await expectFleetConsistent(client)
            // The replacement boots in the survivors' zone and the gang reassembles there.
            try await env.advance(6)
            try await env.step()
            let again = try await client.expect(.ok, .get, "/v1/jobs/train")
            #expect(again["state"] == .string("running"), "\(again.text)")
            #expect(again["attempt"] == .int(2))
            let members: Set<String> = Set(again["node_ids"]?.array.compactMap(\.string) ?? [])
            #expect(members.isSuperset(of: ["a0", "a1", "a3"]), "\(members)")
            let events = try await client.expect(.ok, .get, "/v1/events?type=job.requeued")["items"]?.array ?? []
            #expect(events.count == 1)
            #expect(try await client.expect(.ok, .get, "/v1/events?type=job.checkpoint_requested")["items"]?.array.count == 1)
            #expect(try await client.expect(.ok, .get, "/v1/provisioning-requests")["items"]?.array.count == 1)
            try await expectFleetConsistent(client)
        }
    }

    /// Notices on two members in one pass ask once, by the earlier deadline; a later notice with an even earlier
    /// deadline moves the deadline up.
    @Test func theGangsDeadlineIsItsEarliestMembersDeadline() async throws {
        let env = try TestEnv { $0.drainMarginSeconds = 10 }
        try await env.app().test(.router) { client in
            try await pools(client)
            for index in 0..<4 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("a\(index)", pool: "spot-a")) }
            try await client.expect(.created, .post, "/v1/jobs", gang("train", nodes: 4))
            try await env.step()
            let start = env.clock.now()
            try await client.expect(
                .accepted, .post, "/v1/interruptions", #"{"node_id":"a0","kind":"termination","notice_seconds":120,"event_id":"e0"}"#)
            try await client.expect(
                .accepted, .post, "/v1/interruptions", #"{"node_id":"a1","kind":"termination","notice_seconds":90,"event_id":"e1"}"#)
            try await env.step()
            var job = try await client.expect(.ok, .get, "/v1/jobs/train")
            #expect(job["checkpoint_deadline"] == .string(TimeFormat.rfc3339(start + 80_000)))
            #expect(try await client.expect(.ok, .get, "/v1/events?type=job.checkpoint_requested")["items"]?.array.count == 1)
            // Two nodes lost, two replacements; the survivors are not replaced.
            let provisioning = try await client.expect(.ok, .get, "/v1/provisioning-requests")["items"]?.array ?? []
            #expect(Set(provisioning.compactMap { $0["replaces_node_id"]?.string }) == ["a0", "a1"])

            try await client.expect(
                .accepted, .post, "/v1/interruptions", #"{"node_id":"a3","kind":"termination","notice_seconds":40,"event_id":"e3"}"#)
            try await env.step()
            job = try await client.expect(.ok, .get, "/v1/jobs/train")
            #expect(job["checkpoint_deadline"] == .string(TimeFormat.rfc3339(start + 30_000)))
            // A later notice with a later deadline changes nothing.
            try await client.expect(
                .accepted, .post, "/v1/interruptions", #"{"node_id":"a2","kind":"termination","notice_seconds":100,"event_id":"e2"}"#)
            try await env.step()
            job = try await client.expect(.ok, .get, "/v1/jobs/train")
            #expect(job["checkpoint_deadline"] == .string(TimeFormat.rfc3339(start + 30_000)))
            // The deadline passes without a checkpoint: one requeue of the gang (the same pass places it again, on the
            // replacements booted meanwhile: on-demand nodes of the survivors' zone, the only other pool there).
            try await env.advance(31)
            job = try await client.expect(.ok, .get, "/v1/jobs/train")
            #expect(job["requeue_count"] == .int(1))
            #expect(job["attempt"] == .int(2))
            #expect(try await client.expect(.ok, .get, "/v1/events?type=job.requeued")["items"]?.array.count == 1)
            try await expectFleetConsistent(client)
        }
    }

    /// Premium protection stops a best-effort gang only whole, and picks victims by least lost work.
    @Test func premiumProtectionEvictsAGangWholeAndByLeastLostWork() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od", "on_demand", zone: "z", price: 98))
            for index in 0..<3 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("o\(index)", pool: "od")) }
            // A best-effort gang on o0 and o1 (full nodes), started an hour ago and checkpointed a minute ago; a
            // single best-effort job on o2 started an hour ago with no checkpoint.
            try await client.expect(.created, .post, "/v1/jobs", gang("gang", nodes: 2))
            try await client.expect(.created, .post, "/v1/placements", #"{"job_id":"gang"}"#)
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("lone", tier: "best_effort", gpus: 8))
            try await client.expect(.created, .post, "/v1/placements", #"{"job_id":"lone"}"#)
            env.clock.advance(seconds: 3540)
            try await client.expect(.ok, .post, "/v1/jobs/gang/checkpoints", #"{"uri":"s3://c/gang/1","step":1}"#)
            env.clock.advance(seconds: 60)
            // Lost work: the gang 16 GPUs x 60 s = 960; the lone job 8 x 3600 = 28800. The gang yields, whole.
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("vip", tier: "premium", gpus: 8))
            let refused = try await client.expectProblem(.conflict, .post, "/v1/placements", #"{"job_id":"vip"}"#)
            #expect(refused["detail"]?.string?.contains("preempting 1 best-effort job(s)") == true, "\(refused.text)")
            let gang = try await client.expect(.ok, .get, "/v1/jobs/gang")
            #expect(gang["state"] == .string("checkpointing"))
            #expect(try await client.expect(.ok, .get, "/v1/jobs/lone")["state"] == .string("running"))
            try await client.expect(.ok, .post, "/v1/jobs/gang/checkpoints", #"{"uri":"s3://c/gang/2","step":2,"attempt":1}"#)
            #expect(try await client.expect(.ok, .get, "/v1/jobs/gang")["state"] == .string("queued"))
            // Both members are free; the premium job lands on one of them.
            #expect(try await client.expect(.ok, .get, "/v1/nodes/o0")["gpus_allocated"] == .int(0))
            #expect(try await client.expect(.ok, .get, "/v1/nodes/o1")["gpus_allocated"] == .int(0))
            let vip = try await client.expect(.created, .post, "/v1/placements", #"{"job_id":"vip"}"#)
            #expect(["o0", "o1"].contains(vip["node_id"]?.string ?? ""))
            try await expectFleetConsistent(client)
        }
    }

    /// A premium gang finds room by stopping best-effort work on enough nodes of one zone.
    @Test func aPremiumGangIsMadeRoomForInOneZone() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od-x", "on_demand", zone: "x", price: 98))
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od-y", "on_demand", zone: "y", price: 98))
            // Zone x: one busy node (x0, the older one: placements pack tightest, then oldest) and one free; zone y:
            // one busy node.
            for id in ["x0", "x1"] { try await client.expect(.created, .post, "/v1/nodes", Seed.node(id, pool: "od-x")) }
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("y0", pool: "od-y"))
            for (job, node) in [("bx", "x0"), ("by", "y0")] {
                try await client.expect(.created, .post, "/v1/jobs", Seed.job(job, tier: "best_effort", gpus: 8))
                let placed = try await client.expect(.created, .post, "/v1/placements", #"{"job_id":"\#(job)"}"#)
                #expect(placed["node_id"] == .string(node))
            }
            try await client.expect(.created, .post, "/v1/jobs", gang("vip", nodes: 2, tier: "premium", checkpointable: false))
            let refused = try await client.expectProblem(.conflict, .post, "/v1/placements", #"{"job_id":"vip"}"#)
            #expect(refused["detail"]?.string?.contains("preempting 1 best-effort job(s) on node(s) x0, x1") == true, "\(refused.text)")
            // Zone y could give one node only: its job keeps running.
            #expect(try await client.expect(.ok, .get, "/v1/jobs/bx")["state"] == .string("queued"))
            #expect(try await client.expect(.ok, .get, "/v1/jobs/by")["state"] == .string("running"))
            let vip = try await client.expect(.created, .post, "/v1/placements", #"{"job_id":"vip"}"#)
            #expect(vip["node_ids"]?.array.compactMap(\.string).sorted() == ["x0", "x1"])
            try await expectFleetConsistent(client)
        }
    }
}
