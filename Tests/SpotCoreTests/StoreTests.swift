import Foundation
import GRDB
import Synchronization
import Testing

@testable import SpotCore

@Suite("Row layouts")
struct RowLayoutTests {
    /// Rows are decoded by position; every SELECT of a model names `columns`, so their order must match the tables.
    @Test(.enabled(if: TestStore.isSQLite, "reads SQLite's prepared statements"))
    func modelColumnsNameRealColumnsInTheDecodedOrder() throws {
        let env = try TestEnv()
        let layouts: [(String, String)] = [
            (Pool.columns, "pools"), (Node.columns, "nodes"), (Job.columns, "jobs"), (Interruption.columns, "interruptions"),
            (ProvisioningRequest.columns, "provisioning_requests"),
        ]
        let writer = try #require(env.store.sqliteWriter, "reads SQLite's statements")
        try writer.read { db in
            for (columns, table) in layouts {
                let names = try db.makeStatement(sql: "SELECT \(columns) FROM \(table)").columnNames
                #expect(names == columns.split(separator: ",").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) })
                #expect(names.first == "seq")
            }
        }
    }
}

@Suite("Catalog cache")
struct CatalogTests {
    /// The cached pools and policies follow every committed change, and never keep one that was rolled back.
    @Test func followsChangesAndForgetsRolledBackOnes() async throws {
        let env = try TestEnv()
        let store = env.store
        let before = try await store.read { db in try store.catalog.current(db) }
        #expect(before.pools.isEmpty)
        _ = try await store.createPool(Table.pool("a", .spot), actor: "test")
        #expect(try await store.read { db in try store.catalog.current(db) }.pools.map(\.name) == ["a"])

        // A write that fails after adding a pool: the cache saw it inside the transaction, then it was rolled back.
        await #expect(throws: Problem.self) {
            try await store.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO pools (name, capacity_type, gpu_type, gpus_per_node, zone, instance_type, hourly_price,
                            min_nodes, max_nodes, stockout, created_at, updated_at)
                        VALUES ('b', 'spot', 'H100', 8, 'z', 't', 1, 0, 10, 0, 0, 0)
                        """)
                #expect(try store.catalog.current(db).pools.map(\.name) == ["a", "b"])
                throw Problem.conflict("roll it back")
            }
        }
        #expect(try await store.read { db in try store.catalog.current(db) }.pools.map(\.name) == ["a"])

        // A policy change is seen by the next placement decision.
        var policy = Table.policy(.bestEffort)
        policy.capacityTypes = [.onDemand]
        _ = try await store.putPolicy(policy, actor: "test")
        let stored = try await store.read { db in try store.catalog.current(db) }.policies.first { $0.tier == .bestEffort }
        #expect(stored?.capacityTypes == [.onDemand])
    }
}

@Suite("Commit observation")
struct CommitObservationTests {
    /// Counting a batch's events must read only that batch's rows: a `GROUP BY type` once made SQLite walk every
    /// event ever written on every commit (placements fell from 12,000/s to 3,000/s at 16 connections).
    @Test(.enabled(if: TestStore.isSQLite, "a SQLite query plan"))
    func batchEventsAreReadByRowidRange() async throws {
        let env = try TestEnv()
        let plan = try await env.store.read { db in
            try SpotCore.Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + WriteBatcher.batchEventTypesSQL, arguments: [0]).map {
                $0["detail"] as String
            }
        }
        #expect(plan.count == 1 && plan[0].contains("INTEGER PRIMARY KEY"), "\(plan)")
    }

    /// A node's jobs are found through the node lookups (node_id, then gang membership), never by reading every
    /// running job through the state index: at 20,000 running jobs that was 200 times slower, on every drain.
    @Test(.enabled(if: TestStore.isSQLite, "a SQLite query plan"))
    func jobsOnANodeAreFoundByNode() async throws {
        let env = try TestEnv()
        let plan = try await env.store.read { db in
            try SpotCore.Row.fetchAll(
                db, sql: "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE \(SpotCore.Database.onNode) AND \(SpotCore.Database.holdsGPUs)",
                arguments: ["n", "n"]
            ).map { $0["detail"] as String }
        }
        #expect(plan.contains("MULTI-INDEX OR") && !plan.contains { $0.contains("jobs_state_order") }, "\(plan)")
    }

    /// Observers hear, after each commit, how many events of each type it wrote; a write that rolled back its
    /// savepoint counts for nothing.
    @Test func observersCountCommittedEventsOnly() async throws {
        let env = try TestEnv()
        final class Seen: Sendable { let counts = Mutex<[String: Int]>([:]) }
        let seen = Seen()
        env.store.observeCommits { events in seen.counts.withLock { $0.merge(events, uniquingKeysWith: +) } }
        try await env.store.write { db in
            try db.appendEvent("test.kept", subject: "x", actor: "test", at: 0)
            try db.appendEvent("test.kept", subject: "y", actor: "test", at: 0)
        }
        await #expect(throws: Problem.self) {
            try await env.store.write { db in
                try db.appendEvent("test.rolled-back", subject: "z", actor: "test", at: 0)
                throw Problem.badRequest("no")
            }
        }
        #expect(seen.counts.withLock { $0 } == ["test.kept": 2])
    }
}
