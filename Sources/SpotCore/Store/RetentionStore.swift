extension SpotStore {
    /// Removes, in one transaction, at most `batch` rows of each kind that are finished and older than `cutoff`:
    /// events (whole, oldest first), finished jobs, completed or unmatched interruptions with their timelines,
    /// resolved provisioning requests, terminated nodes that nothing points at, service replicas gone, acknowledged releases (and the simulated cloud's released instances), drills; and replay
    /// records older than `replayCutoff`. Live records are never touched. Callers repeat while a kind filled its batch.
    func pruneExpired(before cutoff: Millis, replaysBefore replayCutoff: Millis, batch: Int, lease: Lease) async throws -> PruneReport {
        try await write { [self] db in
            try Self.checkFence(db, lease, now: clock.now())
            var report = PruneReport()
            // Events are append-only and written in id order with their time: the oldest ids go first, and the scan
            // stops at the first one inside the window (no index on `at` to maintain on every write).
            try db.cachedStatement(
                sql: "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?) AND at < ?"
            ).execute(arguments: [batch, cutoff])
            report.events = db.changesCount
            try db.cachedStatement(
                sql: """
                    DELETE FROM jobs WHERE seq IN (
                        SELECT seq FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?
                            AND state IN ('completed', 'failed', 'cancelled') LIMIT ?)
                    """
            ).execute(arguments: [cutoff, batch])
            report.jobs = db.changesCount
            try db.cachedStatement(
                sql: """
                    DELETE FROM provisioning_requests WHERE seq IN (
                        SELECT seq FROM provisioning_requests WHERE resolved_at IS NOT NULL AND resolved_at < ?
                            AND state <> 'pending' LIMIT ?)
                    """
            ).execute(arguments: [cutoff, batch])
            report.provisioningRequests = db.changesCount
            let interruptions = try String.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT i.id FROM interruptions i WHERE i.state IN ('completed', 'unmatched') AND i.received_at < ?
                            AND COALESCE(i.completed_at, i.received_at) < ?
                            AND NOT EXISTS (SELECT 1 FROM provisioning_requests p WHERE p.interruption_id = i.id)
                        LIMIT ?
                        """), arguments: [cutoff, cutoff, batch])
            for id in interruptions {
                try db.cachedStatement(sql: "DELETE FROM interruption_steps WHERE interruption_id = ?").execute(arguments: [id])
                try db.cachedStatement(sql: "DELETE FROM interruptions WHERE id = ?").execute(arguments: [id])
            }
            report.interruptions = interruptions.count
            try db.cachedStatement(
                sql: """
                    DELETE FROM nodes WHERE seq IN (
                        SELECT n.seq FROM nodes n WHERE n.terminated_at IS NOT NULL AND n.terminated_at < ? AND n.state = 'terminated'
                            AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.node_id = n.id) LIMIT ?)
                    """
            ).execute(arguments: [cutoff, batch])
            report.nodes = db.changesCount
            try db.cachedStatement(
                sql: "DELETE FROM notice_replays WHERE signature IN (SELECT signature FROM notice_replays WHERE received_at < ? LIMIT ?)"
            ).execute(arguments: [replayCutoff, batch])
            report.replays = db.changesCount
            try db.cachedStatement(
                sql: """
                    DELETE FROM service_replicas WHERE seq IN (
                        SELECT seq FROM service_replicas WHERE gone_at IS NOT NULL AND gone_at < ? AND state = 'gone' LIMIT ?)
                    """
            ).execute(arguments: [cutoff, batch])
            report.replicas = db.changesCount
            try db.cachedStatement(
                sql: """
                    DELETE FROM node_releases WHERE node_id IN (
                        SELECT node_id FROM node_releases WHERE state = 'acknowledged' AND acknowledged_at < ? LIMIT ?)
                    """
            ).execute(arguments: [cutoff, batch])
            report.releases = db.changesCount
            try db.cachedStatement(
                sql: "DELETE FROM sim_instances WHERE id IN (SELECT id FROM sim_instances WHERE released_at < ? LIMIT ?)"
            ).execute(arguments: [cutoff, batch])
            report.releases += db.changesCount
            // A drill's report reads its interruptions: it goes with them, once it is older than the window.
            try db.cachedStatement(
                sql: "DELETE FROM drills WHERE seq IN (SELECT seq FROM drills WHERE started_at < ? LIMIT ?)"
            ).execute(arguments: [cutoff, batch])
            report.drills = db.changesCount
            return report
        }
    }
}
