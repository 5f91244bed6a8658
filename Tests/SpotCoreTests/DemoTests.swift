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
        /// Premium jobs' events after their first placement (anything at all means one was touched).
        var premiumEventsAfterPlacement: [String]
        var jobs: [(id: String, state: String, requeues: Int64)]
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
                premiumEventsAfterPlacement: try String.fetchAll(
                    db,
                    sql: """
                        SELECT e.type FROM events e JOIN jobs j ON e.subject = 'jobs/' || j.id
                        WHERE j.tier = 'premium' AND e.type NOT IN ('job.submitted', 'job.placed')
                        """),
                jobs: try Row.fetchAll(db, sql: "SELECT id, state, requeue_count FROM jobs").map {
                    ($0["id"], $0["state"], $0["requeue_count"])
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
}
