import Foundation
import HummingbirdTesting
import Testing

@testable import SpotCore

@Suite("Interruption workflow through HTTP")
struct InterruptionWorkflowTests {
    /// One spot node with a checkpointable and a non-checkpointable job, placed by the loop.
    func seeded(_ env: TestEnv, _ client: some TestClientProtocol) async throws {
        try await Seed.standardPools(client)
        try await client.expect(.created, .post, "/v1/nodes", Seed.node("i-0abc", pool: "spot-a"))
        try await client.expect(.created, .post, "/v1/jobs", Seed.job("train", tier: "best_effort", gpus: 4, checkpointable: true))
        try await client.expect(.created, .post, "/v1/jobs", Seed.job("infer", tier: "best_effort", gpus: 2))
        try await env.step()
        let node = try await client.expect(.ok, .get, "/v1/nodes/i-0abc")
        #expect(node["gpus_allocated"] == .int(6))
    }

    @Test func awsNoticeCordonsInTheAnswerAndTheWorkflowCompletes() async throws {
        let env = try TestEnv { $0.drainMarginSeconds = 10 }
        try await env.app().test(.router) { client in
            try await seeded(env, client)
            let body = try filled("aws-spot-interruption.json", now: env.clock.now(), instances: ["i-0abc"])
            let reply = try await client.expect(.accepted, .post, "/v1/interruptions/aws", body)
            #expect(reply["state"] == .string("received"))
            #expect(reply["timeline"]?.array.map { $0["step"]?.string } == ["received", "cordoned"])
            // The cordon is durable before the answer: read it back from the store.
            #expect(try await env.store.node("i-0abc")?.node.state == .cordoned)
            let id = try #require(reply["id"]?.string)

            // Same event again: the same record, 200, nothing new.
            let before = try env.snapshot()
            let again = try await client.expect(.ok, .post, "/v1/interruptions/aws", body)
            #expect(again["id"] == .string(id))
            #expect(try env.snapshot() == before)

            try await env.step()
            let train = try await client.expect(.ok, .get, "/v1/jobs/train")
            #expect(train["state"] == .string("checkpointing"))
            // The notice's time plus 120 s, less the 10 s margin: written by hand, not by the formatter under test.
            #expect(train["checkpoint_deadline"] == .string("2027-01-15T08:01:50.000Z"))
            let infer = try await client.expect(.ok, .get, "/v1/jobs/infer")
            #expect(infer["state"] == .string("queued"))
            #expect(infer["attempt"] == .int(2))

            // A stale attempt cannot report; the current one can.
            try await client.expectProblem(.conflict, .post, "/v1/jobs/infer/complete", #"{"attempt":1}"#)
            try await client.expect(.ok, .post, "/v1/jobs/train/checkpoints", #"{"uri":"s3://ckpt/train/500","step":500,"attempt":1}"#)
            let requeued = try await client.expect(.ok, .get, "/v1/jobs/train")
            #expect(requeued["state"] == .string("queued"))
            #expect(requeued["resume_from"]?["uri"] == .string("s3://ckpt/train/500"))
            #expect(requeued["resume_from"]?["step"] == .int(500))

            try await env.step()
            #expect(try await env.store.node("i-0abc")?.node.state == .drained)
            // The replacement boots (5 s), jobs land on it, the node goes at the deadline.
            try await env.advance(6)
            try await env.advance(120)
            let done = try await client.expect(.ok, .get, "/v1/interruptions/\(id)")
            #expect(done["state"] == .string("completed"))
            let steps = done["timeline"]!.array.compactMap { $0["step"]?.string }
            for step in [
                "received", "cordoned", "checkpoint_requested", "requeued", "drain_started", "replacement_requested",
                "checkpoint_acknowledged", "node_drained", "replacement_ready", "node_terminated", "completed",
            ] {
                #expect(steps.contains(step), "timeline lacks \(step): \(steps)")
            }
            #expect(steps.filter { $0 == "requeued" }.count == 2)
            let jobs = try await client.expect(.ok, .get, "/v1/jobs?state=running")
            #expect(jobs["items"]?.array.count == 2)
            #expect(jobs["items"]?.array.allSatisfy { $0["node_id"]?.string?.hasPrefix("sim-") == true } == true)
            let metrics = try await client.expect(.ok, .get, "/metrics").text
            for name in [
                #"spotd_notices_total{source="aws",kind="termination"}"#, "spotd_cordon_latency_seconds", "spotd_drain_duration_seconds",
                "spotd_requeues_total", "spotd_provisioning_total",
            ] {
                #expect(metrics.contains(name), "metrics lack \(name)")
            }
        }
    }

    @Test func checkpointDeadlinePassingRequeuesFromNewestCheckpoint() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await seeded(env, client)
            try await client.expect(.ok, .post, "/v1/jobs/train/checkpoints", #"{"uri":"s3://c/1","step":1}"#)
            try await client.expect(
                .accepted, .post, "/v1/interruptions", #"{"node_id":"i-0abc","kind":"termination","notice_seconds":30,"event_id":"e1"}"#)
            try await env.step()
            #expect(try await client.call(.get, "/v1/jobs/train")["state"] == .string("checkpointing"))
            try await env.advance(19)
            #expect(try await client.call(.get, "/v1/jobs/train")["state"] == .string("checkpointing"))
            try await env.advance(2)
            let job = try await client.call(.get, "/v1/jobs/train")
            #expect(job["resume_from"]?["uri"] == .string("s3://c/1"))
            #expect(job["requeue_count"] == .int(1))
            let events = try await client.call(.get, "/v1/events?type=job.requeued")
            #expect(events["items"]?.array.filter { $0["subject"] == .string("jobs/train") }.count == 1)
        }
    }

    @Test func gcpAndAzureNoticesAndUnknownNodes() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            for id in ["gke-gpu-1", "vm-a", "vm-b"] { try await client.expect(.created, .post, "/v1/nodes", Seed.node(id, pool: "spot-a")) }
            let gcp = try await client.expect(
                .accepted, .post, "/v1/interruptions/gcp", try filled("gcp-metadata.json", now: env.clock.now(), instances: ["gke-gpu-1"]))
            #expect(gcp["deadline"] == .string("2027-01-15T08:00:30.000Z"))
            // A second termination notice for the same node, from another source, returns the first.
            let second = try await client.expect(
                .ok, .post, "/v1/interruptions", #"{"node_id":"gke-gpu-1","kind":"termination","source":"agent","event_id":"x"}"#)
            #expect(second["id"] == gcp["id"])

            let azure = try await client.expect(
                .accepted, .post, "/v1/interruptions/azure",
                try filled("azure-preempt.json", now: env.clock.now(), instances: ["vm-a", "vm-b", "vm-c"]))
            #expect(azure["items"]?.array.count == 2)
            #expect(azure["ignored"]?[0]?["event_type"] == .string("Freeze"))
            #expect(try await env.store.node("vm-a")?.node.state == .cordoned)
            #expect(try await env.store.node("vm-b")?.node.state == .cordoned)

            let unknown = try await client.expect(
                .accepted, .post, "/v1/interruptions/aws",
                try filled("aws-spot-interruption.json", now: env.clock.now(), instances: ["i-nobody"]))
            #expect(unknown["state"] == .string("unmatched"))
            let listed = try await client.expect(.ok, .get, "/v1/interruptions?state=unmatched")
            #expect(listed["items"]?.array.count == 1)
        }
    }

    @Test func malformedNoticesStoreNothing() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("i-0abc", pool: "spot-a"))
            let before = try env.snapshot()
            let good = try filled("aws-spot-interruption.json", now: env.clock.now(), instances: ["i-0abc"])
            try await client.expectProblem(.badRequest, .post, "/v1/interruptions/aws", String(good.dropLast(3)))
            try await client.expectProblem(
                .badRequest, .post, "/v1/interruptions/aws", good.replacingOccurrences(of: "\"instance-id\"", with: "\"instance\""),
                field: "detail.instance-id")
            try await client.expectProblem(.badRequest, .post, "/v1/interruptions/gcp", #"{"zone":"us-central1-a","preempted":true}"#)
            try await client.expectProblem(.badRequest, .post, "/v1/interruptions/azure", #"{"DocumentIncarnation":"two","Events":[]}"#)
            try await client.expectProblem(
                .badRequest, .post, "/v1/interruptions", #"{"node_id":"i-0abc","kind":"termination","deadline":"soon"}"#)
            try await client.expectProblem(.badRequest, .post, "/v1/interruptions", #"[1,2,3]"#)
            #expect(try env.snapshot() == before)
            #expect(try await env.store.node("i-0abc")?.node.state == .ready)
        }
    }

    @Test func rebalanceCordonsAndRaisesRiskButJobsKeepRunning() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await seeded(env, client)
            try await client.expect(
                .accepted, .post, "/v1/interruptions/aws", try filled("aws-rebalance.json", now: env.clock.now(), instances: ["i-0abc"]))
            try await env.step()
            #expect(try await client.call(.get, "/v1/jobs/train")["state"] == .string("running"))
            #expect(try await client.call(.get, "/v1/nodes/i-0abc")["state"] == .string("cordoned"))
            let pool = try await client.call(.get, "/v1/pools/spot-a")
            #expect(pool["rebalance_signals"] == .int(1))
            #expect((pool["interruption_rate"].flatMap { if case .double(let rate) = $0 { rate } else { nil } } ?? 0) > 0)
        }
    }

    @Test func operatorDrainAndDeleteRequeueJobs() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await seeded(env, client)
            let drain = try await client.expect(.accepted, .post, "/v1/nodes/i-0abc/drain", #"{"notice_seconds":60}"#)
            #expect(drain["source"] == .string("operator"))
            try await client.expectProblem(.conflict, .post, "/v1/nodes/i-0abc/uncordon")
            try await env.step()
            let deleted = try await client.expect(.ok, .delete, "/v1/nodes/i-0abc")
            #expect(deleted["state"] == .string("terminated"))
            let train = try await client.call(.get, "/v1/jobs/train")
            #expect(train["state"] == .string("queued"))
            try await env.step()
            try await client.expectProblem(.notFound, .post, "/v1/nodes/nope/drain")
        }
    }

    @Test func drainPlanIsPure() {
        let now: Millis = 1_000_000
        var job = Job(
            id: "j", seq: 1, tier: .standard, gpus: 1, gpuType: nil, checkpointable: true, expectedDurationSeconds: nil, priority: 0,
            state: .running, nodeId: "n", attempt: 1, requeueCount: 0, submittedAt: 0, updatedAt: 0)
        #expect(Drain.plan(job: job, nodeDeadline: now + 120_000, now: now, marginSeconds: 10) == .checkpoint(deadline: now + 110_000))
        #expect(Drain.plan(job: job, nodeDeadline: now + 5_000, now: now, marginSeconds: 10) == .requeue)
        #expect(Drain.checkpointDeadline(nodeDeadline: now + 5_000, now: now, marginSeconds: 10) == now)
        #expect(Drain.plan(job: job, nodeDeadline: nil, now: now, marginSeconds: 10) == .requeue)
        job.checkpointable = false
        #expect(Drain.plan(job: job, nodeDeadline: now + 120_000, now: now, marginSeconds: 10) == .requeue)
    }
}
