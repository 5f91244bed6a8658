import Logging

/// Keeps the store from growing forever: finished records and events older than `--retention-days` go, a bounded
/// batch per transaction so that no write waits long behind it. Live records are never touched.
struct Retention: Sendable {
    let store: any WorkflowStore
    let days: Int64
    /// Rows of each kind per transaction.
    var batch = 2000
    /// Most transactions per run; the next run (a minute later) goes on.
    var maxBatches = 50
    /// How long to leave the writer to others between two batches.
    var pause: Duration = .milliseconds(20)

    /// Removes what is due; returns how much went.
    func run(now: Millis, lease: Lease, logger: Logger) async throws -> PruneReport {
        // `days` is validated to 1...3650 at start: the product fits easily.
        let cutoff = now - days * 86_400_000
        // A signed notice is taken while its timestamp is within 5 minutes of now, so the same request can arrive up
        // to 10 minutes after the first; its record is kept a minute longer than that.
        let replayCutoff = now - (2 * Signature.maxSkewSeconds + 60) * 1000
        var total = PruneReport()
        for _ in 0..<maxBatches {
            let report = try await store.pruneExpired(before: cutoff, replaysBefore: replayCutoff, batch: batch, lease: lease)
            total.events += report.events
            total.jobs += report.jobs
            total.interruptions += report.interruptions
            total.provisioningRequests += report.provisioningRequests
            total.nodes += report.nodes
            total.replays += report.replays
            total.replicas += report.replicas
            total.releases += report.releases
            let full = [
                report.events, report.jobs, report.interruptions, report.provisioningRequests, report.nodes, report.replays,
                report.replicas, report.releases,
            ]
            .contains(batch)
            if !full { break }
            try await Task.sleep(for: pause)
        }
        if total.total > 0 {
            logger.info(
                "retention removed old records",
                metadata: [
                    "events": "\(total.events)", "jobs": "\(total.jobs)", "interruptions": "\(total.interruptions)",
                    "provisioning_requests": "\(total.provisioningRequests)", "nodes": "\(total.nodes)",
                ])
        }
        return total
    }
}
