import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@testable import SpotCore

@Suite("Drills")
struct DrillTests {
    /// The reference fleet: 20 spot nodes (spot-a) run 40 best-effort jobs (half checkpointable), 4 on-demand nodes
    /// run 6 premium jobs, and spot-b has room for replacements.
    func referenceFleet(_ env: TestEnv, _ client: some TestClientProtocol) async throws {
        try await Seed.standardPools(client)
        for index in 0..<20 {
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("i-spot\(String(format: "%02d", index))", pool: "spot-a"))
        }
        for index in 0..<4 { try await client.expect(.created, .post, "/v1/nodes", Seed.node("i-od\(index)", pool: "od")) }
        for index in 0..<40 {
            try await client.expect(
                .created, .post, "/v1/jobs",
                Seed.job("train-\(String(format: "%02d", index))", tier: "best_effort", gpus: 4, checkpointable: index % 2 == 0))
        }
        for index in 0..<6 { try await client.expect(.created, .post, "/v1/jobs", Seed.job("premium-\(index)", tier: "premium", gpus: 4)) }
        try await env.step()
        #expect(try await client.call(.get, "/v1/jobs?state=queued")["items"]?.array.isEmpty == true)
    }

    /// A drill on 5 of the 20 spot nodes: the dry run names the nodes, the jobs hit and the replacements and changes
    /// nothing (the event log included); the real drill then does what the dry run said, with the reference
    /// scenario's outcome (5 cordoned at once, their jobs checkpointed or requeued, 5 replacements in the other spot
    /// pool, no premium job touched, every job running again), and its report says so.
    @Test func aDrillOnFiveOfTwentyNodes() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await referenceFleet(env, client)
            env.clock.advance(seconds: 600)
            let premium = try await client.call(.get, "/v1/jobs?tier=premium")["items"]?.array.map { $0["node_id"]?.string } ?? []

            let before = try env.digest()
            let lastEvent = try await client.call(.get, "/v1/events?limit=1000")["items"]?.array.last?["id"]?.int
            let plan = try await client.expect(.ok, .post, "/v1/drills", #"{"pool":"spot-a","count":5,"dry_run":true}"#)
            #expect(try env.digest() == before, "a dry run changes nothing")
            #expect(try await client.call(.get, "/v1/events?limit=1000")["items"]?.array.last?["id"]?.int == lastEvent)
            let planned = plan["node_ids"]?.array.compactMap(\.string) ?? []
            #expect(planned == ["i-spot00", "i-spot01", "i-spot02", "i-spot03", "i-spot04"])
            let hits = plan["jobs_hit"]?.array ?? []
            #expect(hits.count == 10 && plan["summary"]?["premium_jobs"]?.int == 0)
            #expect(Set(hits.compactMap { $0["action"]?.string }) == ["checkpoint", "requeue"])
            #expect(plan["replacements"]?.array.compactMap { $0["pool"]?.string } == Array(repeating: "spot-b", count: 5))

            let started = try await client.expect(.created, .post, "/v1/drills", #"{"pool":"spot-a","count":5,"notice_seconds":120}"#)
            let id = try #require(started["id"]?.string)
            #expect(started["node_ids"]?.array.compactMap(\.string) == planned, "the drill takes the nodes the dry run named")
            for node in planned {
                #expect(try await client.call(.get, "/v1/nodes/\(node)")["state"]?.string == "cordoned", "cordoned before the answer")
            }
            let interruptions = try await client.call(.get, "/v1/interruptions")["items"]?.array ?? []
            #expect(interruptions.count == 5 && interruptions.allSatisfy { $0["source"]?.string == "drill" })

            // The workflow runs for real: checkpoints are reported, replacements boot, the nodes go at their deadline.
            try await env.step()
            for job in try await client.call(.get, "/v1/jobs?state=checkpointing")["items"]?.array ?? [] {
                let jobId = try #require(job["id"]?.string)
                try await client.expect(.ok, .post, "/v1/jobs/\(jobId)/checkpoints", #"{"uri":"s3://c/\#(jobId)","step":100}"#)
            }
            let requests = try await client.call(.get, "/v1/provisioning-requests")["items"]?.array ?? []
            #expect(requests.compactMap { $0["pool"]?.string } == Array(repeating: "spot-b", count: 5), "as the dry run planned")
            for _ in 0..<30 { try await env.advance(5) }
            let report = try await client.expect(.ok, .get, "/v1/drills/\(id)")
            #expect(report["state"]?.string == "completed")
            let outcome = report["outcome"]
            #expect(outcome?["time_to_cordon_seconds"]?.number == 0)
            #expect(outcome?["jobs_requeued"]?.int == 10)
            #expect(outcome?["premium_jobs_requeued"]?.int == 0)
            #expect(outcome?["replacements_ready"]?.int == 5)
            #expect(outcome?["time_to_full_capacity_seconds"]?.number.map { $0 >= 5 && $0 <= 15 } == true, "\(report.text)")
            // The 5 jobs that could not checkpoint lose 10 minutes of 4 GPUs each; the others lose nothing.
            #expect(outcome?["gpu_minutes_lost"]?.number == 200)
            let steps = report["timeline"]?.array.compactMap { $0["step"]?.string } ?? []
            #expect(steps.filter { $0 == "cordoned" }.count == 5 && steps.filter { $0 == "requeued" }.count == 10)
            #expect(
                Set(hits.compactMap { $0["job_id"]?.string }) == Set(report["timeline"]?.array.compactMap { $0["job_id"]?.string } ?? []))
            // Each job did what the dry run said: the checkpointable ones were asked to checkpoint, the others were not.
            let action = { (name: String) in Set(hits.filter { $0["action"]?.string == name }.compactMap { $0["job_id"]?.string }) }
            let asked = Set(
                report["timeline"]?.array.filter { $0["step"]?.string == "checkpoint_requested" }.compactMap { $0["job_id"]?.string } ?? [])
            #expect(action("checkpoint") == asked && asked.count == 5 && action("requeue").isDisjoint(with: asked))
            // Nothing premium moved; every job runs again.
            #expect(try await client.call(.get, "/v1/jobs?tier=premium")["items"]?.array.map { $0["node_id"]?.string } == premium)
            #expect(try await client.call(.get, "/v1/jobs?state=running&limit=1000")["items"]?.array.count == 46)
            #expect(try await client.call(.get, "/v1/drills")["items"]?.array.first?["id"]?.string == id)
        }
    }

    /// Refusals name the problem and change nothing.
    @Test func badDrillsAreRefused() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            let before = try env.digest()
            for (status, body) in [
                (HTTPResponse.Status.badRequest, #"{"pool":"spot-a"}"#), (.badRequest, #"{"pool":"spot-a","count":1,"fraction":0.5}"#),
                (.badRequest, #"{"pool":"spot-a","fraction":0}"#), (.badRequest, #"{"pool":"spot-a","fraction":1.5}"#),
                (.badRequest, #"{"pool":"spot-a","count":0}"#), (.badRequest, #"{"pool":"spot-a","count":99999999999999999999}"#),
                (.badRequest, #"{"pool":"spot-a","count":1,"notice_seconds":0}"#), (.badRequest, #"{"pool":"Spot A","count":1}"#),
                (.notFound, #"{"pool":"nope","count":1}"#), (.unprocessableContent, #"{"pool":"spot-a","count":2}"#),
                (.unprocessableContent, #"{"pool":"spot-b","fraction":0.5}"#),
            ] {
                try await client.expectProblem(status, .post, "/v1/drills", body)
            }
            #expect(try env.digest() == before)
            // A fraction rounds to whole nodes, at least one.
            let drill = try await client.expect(.created, .post, "/v1/drills", #"{"pool":"spot-a","fraction":0.01}"#)
            #expect(drill["node_ids"]?.array.compactMap(\.string) == ["s1"])
            try await client.expect(.notFound, .get, "/v1/drills/drill-nope")
        }
    }
}
