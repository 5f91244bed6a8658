import Foundation
import HummingbirdTesting
import Synchronization
import Testing

@testable import SpotCore

/// The items whose `key` is the string `value`.
func having(_ items: [JSONValue], _ key: String, _ value: String) -> [JSONValue] {
    items.filter { (item: JSONValue) -> Bool in item[key]?.string == value }
}

/// What a sampling task has seen.
final class Samples: Sendable {
    private let values = Mutex<[Int64]>([])
    func append(_ value: Int64) { values.withLock { $0.append(value) } }
    var count: Int { values.withLock { $0.count } }
    var all: [Int64] { values.withLock { $0 } }
}

@Suite("Inference services through HTTP")
struct ServiceTests {
    /// Spot in two zones (4 nodes each) and on-demand in the first zone (3 nodes), H100 x8.
    func fleet(_ client: some TestClientProtocol, spotNodes: Int = 4) async throws {
        try await Seed.standardPools(client)
        for index in 0..<spotNodes {
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("a\(index)", pool: "spot-a"))
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("b\(index)", pool: "spot-b"))
        }
        for index in 0..<3 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("o\(index)", pool: "od")) }
    }

    static let chat = #"{"id":"chat","tier":"standard","replicas":6,"gpus_per_replica":8,"base_on_demand":2}"#

    func members(_ service: Reply) -> [JSONValue] { service["members"]?.array ?? [] }

    /// Reports every starting replica ready.
    func readyAll(_ client: some TestClientProtocol, _ id: String = "chat") async throws {
        let service = try await client.expect(.ok, .get, "/v1/services/\(id)")
        for member in members(service) where member["state"] == .string("starting") {
            try await client.expect(.ok, .post, "/v1/services/\(id)/replicas/\(member["id"]!.string!)/ready")
        }
    }

    @Test func badServicesAreRefusedAndStoreNothing() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            let before = try env.digest()
            try await client.expectProblem(
                .unprocessableContent, .post, "/v1/services",
                #"{"id":"s","tier":"standard","replicas":3,"gpus_per_replica":8,"min_available":4}"#, field: "min_available")
            try await client.expectProblem(
                .unprocessableContent, .post, "/v1/services",
                #"{"id":"s","tier":"standard","replicas":3,"gpus_per_replica":8,"base_on_demand":4}"#, field: "base_on_demand")
            try await client.expectProblem(
                .badRequest, .post, "/v1/services", #"{"id":"s","tier":"standard","replicas":3,"gpus_per_replica":8,"surge":1}"#)
            for (field, value) in [
                ("replicas", "0"), ("replicas", "1001"), ("gpus_per_replica", "0"), ("gpus_per_replica", "65"), ("min_available", "-1"),
                ("replicas", "\"6\""), ("replicas", "2.5"), ("tier", "\"gold\""),
            ] {
                var fields = ["\"id\":\"s\"", "\"tier\":\"standard\"", "\"replicas\":3", "\"gpus_per_replica\":8"].filter {
                    !$0.hasPrefix("\"\(field)\"")
                }
                fields.append("\"\(field)\":\(value)")
                try await client.expectProblem(.badRequest, .post, "/v1/services", "{" + fields.joined(separator: ",") + "}", field: field)
            }
            try await client.expectProblem(
                .badRequest, .post, "/v1/services", #"{"id":"a/b","tier":"standard","replicas":1,"gpus_per_replica":8}"#, field: "id")
            #expect(try env.digest() == before)

            let created = try await client.expect(.created, .post, "/v1/services", Self.chat)
            #expect(created["min_available"] == .int(5))
            #expect(created["ready_replicas"] == .int(0))
            #expect(created.headers[.location] == "/v1/services/chat")
            try await client.expectProblem(.conflict, .post, "/v1/services", Self.chat)
            let patchedBefore = try env.digest()
            try await client.expectProblem(
                .unprocessableContent, .patch, "/v1/services/chat", #"{"min_available":7}"#, field: "min_available")
            try await client.expectProblem(.badRequest, .patch, "/v1/services/chat", #"{"tier":"premium"}"#, field: "tier")
            try await client.expectProblem(.notFound, .patch, "/v1/services/nope", #"{"replicas":2}"#)
            try await client.expectProblem(.notFound, .post, "/v1/services/chat/replicas/r99/ready")
            // A path id no record can have (a control character) is simply not found: the schema allows any string there.
            try await client.expectProblem(.notFound, .post, "/v1/services/chat/replicas/%00/ready")
            try await client.expectProblem(.notFound, .get, "/v1/nodes/a%01b")
            #expect(try env.digest() == patchedBefore)
            // The default min_available follows the replica count.
            let scaled = try await client.expect(.ok, .patch, "/v1/services/chat", #"{"replicas":3}"#)
            #expect(scaled["min_available"] == .int(2))
        }
    }

    /// `base_on_demand` replicas on on-demand, the rest on spot spread over zones and pools; each replica reports
    /// ready; the summary and the events count them.
    @Test func replicasArePlacedOnTheBaseAndSpreadOverSpot() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await fleet(client)
            try await client.expect(.created, .post, "/v1/services", Self.chat)
            try await env.step()
            var service = try await client.expect(.ok, .get, "/v1/services/chat")
            let placed = members(service)
            #expect(placed.count == 6)
            #expect(placed.allSatisfy { $0["state"]?.string == "starting" }, "\(placed)")
            let byPool = Dictionary(grouping: placed, by: { $0["pool"]?.string ?? "" }).mapValues(\.count)
            #expect(byPool == ["od": 2, "spot-a": 2, "spot-b": 2], "\(byPool)")
            #expect(Set(placed.compactMap { $0["node_id"]?.string }).count == 6)
            try await readyAll(client)
            service = try await client.expect(.ok, .get, "/v1/services/chat")
            #expect(service["ready_replicas"] == .int(6))
            // Ready again is answered as is; a replica that is not starting cannot become ready.
            try await client.expect(.ok, .post, "/v1/services/chat/replicas/r1/ready")
            let nodes = try await client.expect(.ok, .get, "/v1/nodes?limit=100")["items"]?.array ?? []
            #expect(nodes.reduce(0) { $0 + ($1["gpus_allocated"]?.int ?? 0) } == 48)
            let events = try await client.expect(.ok, .get, "/v1/events?limit=1000")["items"]?.array.compactMap { $0["type"]?.string } ?? []
            #expect(events.filter { $0 == "service.created" }.count == 1)
            #expect(events.filter { $0 == "service.replica_placed" }.count == 6)
            #expect(events.filter { $0 == "service.replica_ready" }.count == 6)
            let summary = try await client.expect(.ok, .get, "/v1/summary")
            #expect(summary["services"]?["count"] == .int(1))
            #expect(summary["services"]?["replicas"] == .int(6))
            #expect(summary["services"]?["ready_replicas"] == .int(6))

            // Scaling down drains the surplus (on-demand above the base is not touched: the base is exactly 2).
            try await client.expect(.ok, .patch, "/v1/services/chat", #"{"replicas":4}"#)
            try await env.step()
            service = try await client.expect(.ok, .get, "/v1/services/chat")
            #expect(service["ready_replicas"] == .int(4))
            #expect(having(members(service), "state", "draining").count == 2)
            #expect(having(having(members(service), "state", "ready"), "capacity_type", "on_demand").count == 2)
            try await env.advance(31)
            service = try await client.expect(.ok, .get, "/v1/services/chat")
            #expect(having(members(service), "state", "gone").count == 2)
            // Deleting the service gives every GPU back.
            try await client.expect(.noContent, .delete, "/v1/services/chat")
            try await client.expectProblem(.notFound, .get, "/v1/services/chat")
            let after = try await client.expect(.ok, .get, "/v1/nodes?limit=100")["items"]?.array ?? []
            #expect(after.allSatisfy { $0["gpus_allocated"] == .int(0) }, "\(after)")
        }
    }

    /// Two replica hosts reclaimed at once: each doomed replica gets one surge replica at once, keeps serving until
    /// its surge is ready, then drains and goes. `ready_replicas` is sampled every 100 ms from another client over
    /// real HTTP throughout, and never drops below `min_available`.
    @Test func makeBeforeBreakHoldsMinAvailableThroughATwoHostReclaim() async throws {
        let env = try TestEnv { $0.drainMarginSeconds = 10 }
        try await env.app().test(.live) { client in
            try await fleet(client)
            // Two spare spot nodes in a third zone give the surges somewhere to go.
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-c", "spot", zone: "us-east-1c", price: 31))
            for index in 0..<2 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("c\(index)", pool: "spot-c")) }
            try await client.expect(.created, .post, "/v1/services", Self.chat)
            try await env.step()
            try await readyAll(client)
            #expect(try await client.expect(.ok, .get, "/v1/services/chat")["ready_replicas"] == .int(6))

            let api = DemoClient(base: "http://127.0.0.1:\(try #require(client.port))")
            let samples = Samples()
            let sampling = Task {
                while !Task.isCancelled {
                    if let ready = try? await api.call("GET", "/v1/services/chat").1["ready_replicas"]?.int {
                        samples.append(ready)
                    }
                    try? await Task.sleep(for: .milliseconds(100))
                }
            }
            /// Lets the sampler see the state in between: waits (with a deadline) for three more samples.
            func pause() async throws {
                let target = samples.count + 3
                #expect(try await pollUntil(10) { samples.count >= target }, "the sampler stopped")
            }

            let hosts = having(members(try await client.expect(.ok, .get, "/v1/services/chat")), "capacity_type", "spot").prefix(2)
                .compactMap { $0["node_id"]?.string }
            #expect(hosts.count == 2)
            for (index, host) in hosts.enumerated() {
                try await client.expect(
                    .accepted, .post, "/v1/interruptions",
                    #"{"node_id":"\#(host)","kind":"termination","notice_seconds":120,"event_id":"mbb-\#(index)"}"#)
            }
            try await pause()
            try await env.step()
            try await pause()
            var service = try await client.expect(.ok, .get, "/v1/services/chat")
            let surges = members(service).filter { (member: JSONValue) -> Bool in member["replaces"]?.string != nil }
            #expect(surges.count == 2, "\(members(service))")
            #expect(surges.allSatisfy { $0["state"]?.string == "starting" && !hosts.contains($0["node_id"]?.string ?? "") })
            let doomed = members(service).filter { (member: JSONValue) -> Bool in hosts.contains(member["node_id"]?.string ?? "") }
            #expect(doomed.allSatisfy { $0["state"]?.string == "ready" && $0["leaving"]?.string == "node reclaimed" }, "\(doomed)")
            #expect(service["ready_replicas"] == .int(6))
            // A second pass (a retry after a crash would be the same) adds no surge.
            try await env.step()
            #expect(members(try await client.expect(.ok, .get, "/v1/services/chat")).count == 8)

            // Each surge reports ready: its doomed replica drains at once.
            for surge in surges {
                try await client.expect(.ok, .post, "/v1/services/chat/replicas/\(surge["id"]!.string!)/ready")
                try await pause()
            }
            service = try await client.expect(.ok, .get, "/v1/services/chat")
            #expect(having(members(service), "state", "draining").count == 2)
            #expect(service["ready_replicas"] == .int(6))
            try await env.advance(31)
            try await pause()
            service = try await client.expect(.ok, .get, "/v1/services/chat")
            #expect(having(members(service), "state", "gone").count == 2)
            #expect(service["ready_replicas"] == .int(6))
            // The nodes drain (no replica left) and go at their deadline.
            for host in hosts {
                #expect(try await client.expect(.ok, .get, "/v1/nodes/\(host)")["state"] == .string("drained"))
            }
            sampling.cancel()
            _ = await sampling.result
            let seen = samples.all
            #expect(seen.count >= 10, "only \(seen.count) samples")
            #expect(seen.allSatisfy { $0 >= 5 }, "ready_replicas dropped below min_available: \(seen)")
            let events = try await client.expect(.ok, .get, "/v1/events?limit=1000")["items"]?.array.compactMap { $0["type"]?.string } ?? []
            #expect(events.filter { $0 == "service.replica_surged" }.count == 2)
            #expect(events.filter { $0 == "service.replica_draining" }.count == 2)
            #expect(events.filter { $0 == "service.replica_gone" }.count == 2)
        }
    }

    /// A surge that is not ready by the node's deadline: the doomed replica goes with its node (capacity is lost
    /// for real), and the surge serves once ready.
    @Test func aDoomedReplicaGoesAtItsNodesDeadline() async throws {
        let env = try TestEnv { $0.drainMarginSeconds = 10 }
        try await env.app().test(.router) { client in
            try await fleet(client)
            try await client.expect(
                .created, .post, "/v1/services", #"{"id":"chat","tier":"best_effort","replicas":2,"gpus_per_replica":8}"#)
            try await env.step()
            try await readyAll(client)
            let host = try #require(members(try await client.expect(.ok, .get, "/v1/services/chat")).first?["node_id"]?.string)
            try await client.expect(
                .accepted, .post, "/v1/interruptions", #"{"node_id":"\#(host)","kind":"termination","notice_seconds":30,"event_id":"d"}"#)
            try await env.step()
            #expect(try await client.expect(.ok, .get, "/v1/services/chat")["ready_replicas"] == .int(2))
            try await env.advance(31)
            let service = try await client.expect(.ok, .get, "/v1/services/chat")
            #expect(service["ready_replicas"] == .int(1))
            let gone = having(members(service), "state", "gone")
            #expect(gone.map { $0["node_id"] } == [.string(host)])
            #expect(try await client.expect(.ok, .get, "/v1/nodes/\(host)")["state"] == .string("terminated"))
            try await readyAll(client)
            #expect(try await client.expect(.ok, .get, "/v1/services/chat")["ready_replicas"] == .int(2))
        }
    }

    /// Spot is out (stockout, no nodes): replicas go on-demand. When the stockout clears, the pool's floor
    /// brings spot nodes back and the on-demand replicas above the base move there, one at a time, make-before-break.
    @Test func replicasReturnToSpotAfterAStockoutClears() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("od", "on_demand", zone: "us-east-1a", price: 98))
            try await client.expect(.created, .post, "/v1/pools", Seed.pool("spot-a", "spot", zone: "us-east-1a", price: 30))
            try await client.expect(.ok, .patch, "/v1/pools/spot-a", #"{"stockout":true,"min_nodes":3}"#)
            for index in 0..<4 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("o\(index)", pool: "od")) }
            try await client.expect(
                .created, .post, "/v1/services", #"{"id":"chat","tier":"standard","replicas":4,"gpus_per_replica":8,"base_on_demand":1}"#)
            try await env.step()
            try await env.step()
            try await readyAll(client)
            var service = try await client.expect(.ok, .get, "/v1/services/chat")
            #expect(members(service).allSatisfy { $0["capacity_type"]?.string == "on_demand" }, "\(members(service))")
            #expect(service["ready_replicas"] == .int(4))
            // The floor asks for spot nodes, in vain while the stockout lasts (the simulated boot takes 5 s).
            try await env.advance(6)
            let failed = try await client.expect(.ok, .get, "/v1/provisioning-requests?state=failed")["items"]?.array ?? []
            #expect(failed.count == 3)
            #expect(try await client.expect(.ok, .get, "/v1/pools/spot-a")["nodes"]?["ready"] == .int(0))

            try await client.expect(.ok, .patch, "/v1/pools/spot-a", #"{"stockout":false}"#)
            // After the retry window the floor asks again; the nodes boot in 5 s.
            try await env.advance(61)
            try await env.advance(6)
            #expect(try await client.expect(.ok, .get, "/v1/pools/spot-a")["nodes"]?["ready"] == .int(3))
            var moves = 0
            for _ in 0..<12 {
                try await env.step()
                service = try await client.expect(.ok, .get, "/v1/services/chat")
                let current = members(service)
                let booting = having(current, "state", "starting")
                #expect(service["ready_replicas"]!.int! >= 3, "\(current)")
                if booting.isEmpty {
                    try await env.advance(31)
                    continue
                }
                #expect(booting.count == 1, "one move at a time: \(booting)")
                #expect(booting.allSatisfy { $0["capacity_type"]?.string == "spot" && $0["replaces"] != .null })
                try await readyAll(client)
                moves += 1
            }
            service = try await client.expect(.ok, .get, "/v1/services/chat")
            let serving = having(members(service), "state", "ready")
            #expect(moves == 3)
            #expect(having(serving, "capacity_type", "on_demand").count == 1, "\(serving)")
            #expect(having(serving, "capacity_type", "spot").count == 3, "\(serving)")
            #expect(service["ready_replicas"] == .int(4))
        }
    }
}

/// The service planner's decisions, on hand-built inputs.
@Suite("Service planner (pure)")
struct ServicePlannerTests {
    static func service(replicas: Int, base: Int, tier: Tier = .standard) -> InferenceService {
        InferenceService(
            id: "s", seq: 1, tier: tier, replicas: replicas, gpusPerReplica: 8, gpuType: nil, minAvailableSetting: nil, baseOnDemand: base,
            nextReplica: 100, createdAt: 0, updatedAt: 0)
    }

    static func replica(
        _ id: String, seq: Int64, node: String?, pool: String?, _ type: CapacityType?, state: ReplicaState = .ready,
        replaces: String? = nil, doomed: String? = nil
    ) -> ServiceReplica {
        ServiceReplica(
            serviceId: "s", id: id, seq: seq, nodeId: node, pool: pool, capacityType: type, state: state, replaces: replaces,
            doomedAt: doomed == nil ? nil : 1, doomedReason: doomed, createdAt: 0, updatedAt: 0)
    }

    static func input(
        _ service: InferenceService, _ replicas: [ServiceReplica], pools: [Pool], free: [Node], hosts: [String: ReplicaHost] = [:]
    ) -> ServiceInput {
        var allHosts = hosts
        for replica in replicas {
            if let node = replica.nodeId, allHosts[node] == nil {
                allHosts[node] = ReplicaHost(state: .ready, terminationDeadline: nil, hasTermination: false)
            }
        }
        return ServiceInput(
            services: [service], replicas: replicas, nodes: free, pools: pools, policies: Policy.defaults(admissionLimit: 3600, at: 0),
            stats: [:], hosts: allHosts)
    }

    /// Scaling down takes an on-demand replica above the base before a spot one, even from a pool with fewer.
    @Test func scaleDownTakesOnDemandAboveTheBaseFirst() {
        let pools = [Table.pool("od-a", .onDemand), Table.pool("od-b", .onDemand, zone: "b"), Table.pool("spot-a", .spot)]
        let replicas = [
            Self.replica("r1", seq: 1, node: "o1", pool: "od-a", .onDemand),
            Self.replica("r2", seq: 2, node: "o2", pool: "od-b", .onDemand),
            Self.replica("r3", seq: 3, node: "s1", pool: "spot-a", .spot),
            Self.replica("r4", seq: 4, node: "s2", pool: "spot-a", .spot),
        ]
        let plan = ServicePlanner.plan(Self.input(Self.service(replicas: 3, base: 1), replicas, pools: pools, free: []), now: 1000)
        #expect(plan.actions == [.drain(service: "s", replica: "r2", until: 1000 + ServicePlanner.defaultDrainSeconds * 1000)])
    }

    /// A surge avoids the doomed replica's pool when another has room; a replica leaving a reclaimed node drains no
    /// later than the node's deadline.
    @Test func aSurgeLeavesTheDoomedPoolAndItsDrainEndsByTheDeadline() {
        let pools = [Table.pool("spot-a", .spot), Table.pool("spot-b", .spot, zone: "b")]
        let replicas = [
            Self.replica("r1", seq: 1, node: "a1", pool: "spot-a", .spot, doomed: ServicePlanner.reclaimed),
            Self.replica("r2", seq: 2, node: "b1", pool: "spot-b", .spot),
        ]
        // spot-a's free node is listed first and prices are equal; the surge still goes to spot-b.
        let free = [Table.node("a2", pool: "spot-a"), Table.node("b2", pool: "spot-b")]
        let hosts = ["a1": ReplicaHost(state: .draining, terminationDeadline: 20_000, hasTermination: true)]
        let plan = ServicePlanner.plan(
            Self.input(Self.service(replicas: 2, base: 0), replicas, pools: pools, free: free, hosts: hosts), now: 1000)
        let placed = plan.actions.compactMap { action -> String? in
            if case .place(_, "r100", let node, _, _, _) = action { return node }
            return nil
        }
        #expect(placed == ["b2"], "\(plan.actions)")
        let leave = ServicePlanner.leaveAction(replicas[0], host: hosts["a1"], drainSeconds: 30, now: 1000)
        #expect(leave == .drain(service: "s", replica: "r1", until: 20_000))
    }

    /// A reclaimed replica of a service scaled down under it gets no surge when the replicas staying are enough: it
    /// drains. Replica numbers far past a million do not trap.
    @Test func aDoomedReplicaOfAScaledDownServiceLeavesWithoutASurge() {
        let pools = [Table.pool("spot-a", .spot), Table.pool("spot-b", .spot, zone: "b")]
        var service = Self.service(replicas: 2, base: 0)
        service.nextReplica = 5_000_000_000
        let replicas = [
            Self.replica("r1", seq: 1, node: "a1", pool: "spot-a", .spot, doomed: ServicePlanner.reclaimed),
            Self.replica("r2", seq: 2, node: "b1", pool: "spot-b", .spot),
            Self.replica("r3", seq: 3, node: "b2", pool: "spot-b", .spot),
        ]
        let hosts = ["a1": ReplicaHost(state: .draining, terminationDeadline: 20_000, hasTermination: true)]
        let free = [Table.node("b3", pool: "spot-b")]
        let plan = ServicePlanner.plan(Self.input(service, replicas, pools: pools, free: free, hosts: hosts), now: 1000)
        #expect(plan.actions == [.drain(service: "s", replica: "r1", until: 20_000)], "\(plan.actions)")
        // With one more wanted, it surges, numbered past five billion.
        service.replicas = 3
        let surging = ServicePlanner.plan(Self.input(service, replicas, pools: pools, free: free, hosts: hosts), now: 1000)
        #expect(
            surging.actions.first == .create(service: "s", replica: "r5000000000", replaces: "r1", reason: "surge for r1 (node reclaimed)"))
    }

    /// Back to spot one replica at a time: with a move under way (a surge starting), no second one starts.
    @Test func returnToSpotMovesOneReplicaAtATime() {
        let pools = [Table.pool("od", .onDemand), Table.pool("spot-a", .spot)]
        let settled = (1...3).map { Self.replica("r\($0)", seq: Int64($0), node: "o\($0)", pool: "od", .onDemand) }
        let free = (1...3).map { Table.node("s\($0)", pool: "spot-a") }
        let first = ServicePlanner.plan(Self.input(Self.service(replicas: 3, base: 1), settled, pools: pools, free: free), now: 1000)
        #expect(first.actions.filter { if case .doom = $0 { true } else { false } }.count == 1, "\(first.actions)")
        var moving = settled
        moving[2].doomedAt = 1000
        moving[2].doomedReason = ServicePlanner.returnToSpot
        moving.append(Self.replica("r100", seq: 100, node: "s1", pool: "spot-a", .spot, state: .starting, replaces: "r3"))
        let second = ServicePlanner.plan(
            Self.input(Self.service(replicas: 3, base: 1), moving, pools: pools, free: Array(free.dropFirst())), now: 2000)
        #expect(second.actions.isEmpty, "\(second.actions)")
    }
}
