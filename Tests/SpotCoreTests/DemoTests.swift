import Foundation
import GRDB
import Synchronization
import Testing

@testable import SpotCore

/// The demo is graded here from its store, not by its own verdict line.
@Suite("spotd demo", .serialized)
struct DemoTests {
    struct Outcome: Sendable {
        var output: String
        var interruptions: [(state: String, node: String)]
        var replacements: [(state: String, pool: String)]
        var fallbacks: [(state: String, pool: String)]
        /// Demand requests: none, since the requeued work fits the replacements on their way.
        var demand: Int
        /// Premium jobs' events after their first placement (anything at all means one was touched).
        var premiumEventsAfterPlacement: [String]
        var jobs: [(id: String, state: String, requeues: Int64)]
        /// Every event, oldest first.
        var events: [(type: String, subject: String, data: JSONValue)]
    }

    func run(_ configure: (inout Demo.Options) -> Void = { _ in }) async throws -> Outcome {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-demo-test-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        var options = Demo.Options()
        options.directory = directory
        configure(&options)
        let lines = Mutex<[String]>([])
        _ = try await Demo.run(options) { line in lines.withLock { $0.append(line) } }
        let queue = try DatabaseQueue(path: directory.appendingPathComponent("demo.sqlite").path)
        let output = lines.withLock { $0.joined(separator: "\n") }
        return try await queue.read { db in
            Outcome(
                output: output,
                interruptions: try Row.fetchAll(db, sql: "SELECT state, node_id FROM interruptions").map { ($0["state"], $0["node_id"]) },
                replacements: try Row.fetchAll(db, sql: "SELECT state, pool FROM provisioning_requests WHERE reason = 'replacement'")
                    .map { ($0["state"], $0["pool"]) },
                fallbacks: try Row.fetchAll(db, sql: "SELECT state, pool FROM provisioning_requests WHERE reason = 'fallback'")
                    .map { ($0["state"], $0["pool"]) },
                demand: try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM provisioning_requests WHERE reason = 'demand'") ?? 0,
                premiumEventsAfterPlacement: try String.fetchAll(
                    db,
                    sql: """
                        SELECT e.type FROM events e JOIN jobs j ON e.subject = 'jobs/' || j.id
                        WHERE j.tier = 'premium' AND e.type NOT IN ('job.submitted', 'job.placed')
                        """),
                jobs: try Row.fetchAll(db, sql: "SELECT id, state, requeue_count FROM jobs").map {
                    ($0["id"], $0["state"], $0["requeue_count"])
                },
                events: try Row.fetchAll(db, sql: "SELECT type, subject, data FROM events ORDER BY id").map {
                    let text: String = $0["data"]
                    return ($0["type"], $0["subject"], (try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))) ?? .null)
                })
        }
    }

    @Test func referenceScenarioLosesNothingAndTouchesNoPremiumJob() async throws {
        let started = Date()
        let outcome = try await run()
        #expect(Date().timeIntervalSince(started) < 60)
        // Five notices, each worked through to the end.
        #expect(outcome.interruptions.count == 5, "\(outcome.output)")
        #expect(outcome.interruptions.allSatisfy { $0.state == "completed" }, "\(outcome.interruptions)")
        // One replacement per lost node, each booted in the other spot pool.
        #expect(outcome.replacements.count == 5)
        #expect(outcome.replacements.allSatisfy { $0 == ("fulfilled", "spot-b") }, "\(outcome.replacements)")
        #expect(outcome.fallbacks.isEmpty)
        #expect(outcome.demand == 0, "the requeued work fits the replacements: nothing more is asked for")
        // No premium job was checkpointed, requeued or moved.
        #expect(outcome.premiumEventsAfterPlacement.isEmpty, "\(outcome.premiumEventsAfterPlacement)")
        #expect(outcome.jobs.filter { $0.id.hasPrefix("premium") }.allSatisfy { $0.state == "running" && $0.requeues == 0 })
        // Nothing lost: every job still exists and runs, each requeued at most once.
        #expect(outcome.jobs.count == 46)
        #expect(outcome.jobs.allSatisfy { $0.state == "running" && $0.requeues <= 1 }, "\(outcome.jobs.filter { $0.state != "running" })")
        #expect(outcome.jobs.filter { $0.requeues == 1 }.count > 0)
        #expect(outcome.output.contains("job.requeued") && outcome.output.contains("node.cordoned"))
    }

    @Test func stockoutFallsBackToOnDemand() async throws {
        let outcome = try await run { $0.stockout = true }
        #expect(outcome.interruptions.allSatisfy { $0.state == "completed" } && outcome.interruptions.count == 5)
        // The spot replacements fail in the stockout; each lost node gets exactly one on-demand fallback.
        #expect(
            outcome.replacements.count == 5 && outcome.replacements.allSatisfy { $0 == ("failed", "spot-b") }, "\(outcome.replacements)")
        #expect(outcome.fallbacks.count == 5 && outcome.fallbacks.allSatisfy { $0 == ("fulfilled", "on-demand") }, "\(outcome.fallbacks)")
        #expect(outcome.premiumEventsAfterPlacement.isEmpty)
        #expect(outcome.jobs.allSatisfy { $0.state == "running" })
    }

    /// `--workloads`: the gang and the service share the 20 spot nodes; the reclaim takes a gang member and two
    /// replica hosts. Graded from the event log: the gang is asked to checkpoint once and requeued once, each doomed
    /// replica gets one surge, and the number of ready replicas, replayed event by event, never drops below
    /// min_available once the service first served.
    @Test func workloadsScenarioKeepsTheGangWholeAndTheServiceServing() async throws {
        let outcome = try await run { $0.workloads = true }
        #expect(outcome.output.contains("result: OK"), "\(outcome.output)")
        #expect(
            outcome.interruptions.count == 5 && outcome.interruptions.allSatisfy { $0.state == "completed" }, "\(outcome.interruptions)")
        let gang = outcome.events.filter { $0.subject == "jobs/train-gang" }.map(\.type)
        #expect(gang.filter { $0 == "job.checkpoint_requested" }.count == 1, "\(gang)")
        #expect(gang.filter { $0 == "job.requeued" }.count == 1, "\(gang)")
        #expect(outcome.jobs.first { $0.id == "train-gang" }.map { $0.state == "running" && $0.requeues == 1 } == true)
        #expect(outcome.premiumEventsAfterPlacement.isEmpty, "\(outcome.premiumEventsAfterPlacement)")
        #expect(outcome.jobs.allSatisfy { $0.state == "running" && $0.requeues <= 1 })
        // One surge per replica on a reclaimed node.
        let surges = outcome.events.filter { $0.type == "service.replica_surged" }
        #expect(surges.filter { $0.data["reason"]?.string?.hasSuffix("(node reclaimed)") == true }.count == 2, "\(surges)")
        // Ready replicas, replayed from the log.
        var ready = Set<String>()
        var lowest: Int?
        var served = false
        for event in outcome.events where event.subject == "services/chat" {
            guard let replica = event.data["replica"]?.string else { continue }
            switch event.type {
            case "service.replica_ready": ready.insert(replica)
            case "service.replica_draining", "service.replica_gone": ready.remove(replica)
            default: continue
            }
            served = served || ready.count == 6
            if served { lowest = min(lowest ?? ready.count, ready.count) }
        }
        #expect(served)
        #expect((lowest ?? 0) >= 5, "ready replicas fell to \(lowest ?? 0)")
        #expect(ready.count == 6)
    }
}
