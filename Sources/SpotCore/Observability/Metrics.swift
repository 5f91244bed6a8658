import Hummingbird
import Prometheus
import Synchronization

/// spotd's metrics, exported as Prometheus text with HELP and TYPE lines, units in the names (`_seconds`) and
/// `_total` on counters. Each runtime has its own registry, so that what `/metrics` shows (and what a test reads) is
/// this server's alone. Gauges that describe the store (nodes by pool and state, pending provisioning) are read from
/// it at scrape time (`snapshot`), so they are right on every replica, leader or not.
public final class SpotMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let requestMetrics = Mutex<[RequestKey: (Counter, DurationHistogram)]>([:])
    /// Whether this process holds the worker lease (runs the workflows).
    let leader = Atomic<Bool>(false)

    /// Every family this registry emits: name → (unit suffix, help). One place, so a family always has one help
    /// text (the registry stops the process on two different ones).
    enum Family: String, CaseIterable {
        case httpRequests = "spotd_http_requests"
        case httpDuration = "spotd_http_request_duration"
        case notices = "spotd_notices"
        case unknownNodeNotices = "spotd_notices_unknown_node"
        case deadlineMisses = "spotd_deadline_misses"
        case cordonLatency = "spotd_cordon_latency"
        case drainDuration = "spotd_drain_duration"
        case placements = "spotd_placements"
        case requeues = "spotd_requeues"
        case events = "spotd_events"
        case provisioning = "spotd_provisioning"
        case sqsMessages = "spotd_sqs_messages"
        case deliveries = "spotd_subscription_deliveries"
        case eventStreams = "spotd_event_streams"

        var unit: String {
            switch self {
            case .httpDuration, .cordonLatency, .drainDuration: "seconds"
            case .eventStreams: ""
            default: "total"
            }
        }

        var help: String {
            switch self {
            case .httpRequests: "HTTP requests answered, by route template, method and status."
            case .httpDuration: "Time to answer an HTTP request, by route template, method and status."
            case .notices: "Interruption notices recorded (new interruptions), by source and kind."
            case .unknownNodeNotices: "Notices for a node spotd does not know (recorded as unmatched), by source."
            case .deadlineMisses: "Jobs requeued because their checkpoint deadline passed without a checkpoint report."
            case .cordonLatency: "Time from a notice's arrival to its node being cordoned (the notice's transaction)."
            case .drainDuration: "Time from a notice to its node being drained (every job checkpointed or requeued)."
            case .placements: "Placements by outcome (placed, no_capacity, ...), through the API and the scheduling loop."
            case .requeues: "Jobs put back in the queue, by any path (drain, deadline, checkpoint report, delete)."
            case .events: "Events committed to the event log, by type."
            case .provisioning: "Provider calls, by outcome (fulfilled, failed, unavailable: a stockout, retried, released)."
            case .sqsMessages: "Messages read from the AWS SQS queue, by outcome (recorded, duplicate, unparseable)."
            case .deliveries: "Subscription deliveries, by outcome (delivered, failed)."
            case .eventStreams: "Event streams open now."
            }
        }

        var descriptor: MetricNameDescriptor { MetricNameDescriptor(metricName: rawValue, unitName: unit, helpText: help) }
    }

    /// Families with a known set of labels start at zero, so that a scrape shows them before their first event
    /// (and `increase()` sees the first one).
    public init() {
        for family in [Family.requeues, .deadlineMisses] { _ = counter(family) }
        for outcome in ["delivered", "failed"] { _ = counter(.deliveries, [("outcome", outcome)]) }
        for outcome in ["fulfilled", "failed", "unavailable", "retried", "released"] { _ = counter(.provisioning, [("outcome", outcome)]) }
        for outcome in ["placed", "no_capacity", "dry_run"] { _ = counter(.placements, [("outcome", outcome)]) }
        for outcome in ["recorded", "duplicate", "unparseable"] { _ = counter(.sqsMessages, [("outcome", outcome)]) }
        for source in ["aws", "gcp", "azure", "generic"] { _ = counter(.unknownNodeNotices, [("source", source)]) }
        eventStreams(0)
        _ = cordonLatencyHistogram
        _ = drainDurationHistogram
    }

    private var cordonLatencyHistogram: DurationHistogram {
        registry.makeDurationHistogram(
            descriptor: Family.cordonLatency.descriptor, labels: [],
            buckets: [1, 2, 5, 10, 20, 50, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 2000, 5000].map { Duration.milliseconds($0) })
    }

    private var drainDurationHistogram: ValueHistogram {
        registry.makeValueHistogram(descriptor: Family.drainDuration.descriptor, labels: [], buckets: [1, 5, 10, 20, 30, 60, 90, 120, 300])
    }

    func counter(_ family: Family, _ labels: [(String, String)] = []) -> Counter {
        registry.makeCounter(descriptor: family.descriptor, labels: labels)
    }

    /// The sources a label may carry; a generic notice names its own source, which becomes `other` here, so that
    /// no caller can grow the scrape (and the server's memory) one series per source.
    static let sources: Set<String> = [
        "aws", "gcp", "azure", "generic", "drill", "aws-imds", "gcp-metadata", "azure-scheduled-events", "aws-sqs",
    ]

    static func sourceLabel(_ source: String) -> String { sources.contains(source) ? source : "other" }

    func notice(source: String, kind: String) {
        counter(.notices, [("source", Self.sourceLabel(source)), ("kind", kind == "rebalance" ? kind : "termination")]).increment()
    }

    func unknownNodeNotice(source: String) {
        counter(.unknownNodeNotices, [("source", Self.sourceLabel(source))]).increment()
    }

    func deadlineMisses(_ count: Int) {
        counter(.deadlineMisses).increment(by: Int64(max(0, count)))
    }

    func cordonLatency(_ elapsed: Duration) {
        cordonLatencyHistogram.record(elapsed)
    }

    func drainDuration(seconds: Double) {
        drainDurationHistogram.record(seconds)
    }

    func placement(_ outcome: String, count: Int = 1) {
        guard count > 0 else { return }
        counter(.placements, [("outcome", outcome)]).increment(by: Int64(count))
    }

    /// SQS messages by what became of them: recorded, duplicate, unparseable.
    func sqsMessage(_ outcome: String) {
        counter(.sqsMessages, [("outcome", outcome)]).increment()
    }

    func provisioning(_ outcome: String) {
        counter(.provisioning, [("outcome", outcome)]).increment()
    }

    func delivery(_ outcome: String) {
        counter(.deliveries, [("outcome", outcome)]).increment()
    }

    func eventStreams(_ count: Int) {
        registry.makeGauge(descriptor: Family.eventStreams.descriptor, labels: []).set(Int64(count))
    }

    /// Counts what a commit wrote to the event log, by event type: the requeue count is the number of
    /// `job.requeued` events committed, whichever path requeued the job (drain, checkpoint report, deadline, delete).
    func committed(_ events: [String: Int]) {
        for (type, count) in events where count > 0 {
            counter(.events, [("type", type)]).increment(by: Int64(count))
            if type == "job.requeued" {
                counter(.requeues).increment(by: Int64(count))
            }
        }
    }

    fileprivate struct RequestKey: Hashable {
        var route: String
        var method: HTTPRequest.Method
        var status: Int
    }

    /// One answered request, by route template (never the raw path: its values are the client's).
    func request(route: String, method: HTTPRequest.Method, status: Int, elapsed: Duration) {
        let key = RequestKey(route: route, method: method, status: status)
        let (counter, timer) = requestMetrics.withLock { cache in
            if let found = cache[key] { return found }
            let labels = [("route", route), ("method", method.rawValue), ("status", String(status))]
            let made = (
                self.counter(.httpRequests, labels),
                registry.makeDurationHistogram(
                    descriptor: Family.httpDuration.descriptor, labels: labels,
                    buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000].map { Duration.milliseconds($0) })
            )
            cache[key] = made
            return made
        }
        counter.increment()
        timer.record(elapsed)
    }

    /// The exposition: the registry's families, then the gauges read from the store at scrape time.
    func render(_ snapshot: Snapshot) -> String {
        registry.emitToString() + snapshot.text(leader: leader.load(ordering: .relaxed))
    }

    /// What the store says now, as gauges. Rendered by hand rather than registered: a pool or a state that goes away
    /// must go away from the scrape too, not linger at its last value.
    struct Snapshot {
        var nodes: [(pool: String, state: String, count: Int)] = []
        var gpus: [(pool: String, total: Int, free: Int)] = []
        var queueDepth: [(tier: String, depth: Int)] = []
        var activeInterruptions = 0
        var pendingProvisioning = 0
        var failingSubscriptions = 0

        func text(leader: Bool) -> String {
            var out = ""
            func family(_ name: String, _ help: String, _ samples: [(labels: [(String, String)], value: Int)]) {
                out += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n"
                for sample in samples {
                    let labels = sample.labels.map { "\($0.0)=\"\(Self.escape($0.1))\"" }.joined(separator: ",")
                    out += labels.isEmpty ? "\(name) \(sample.value)\n" : "\(name){\(labels)} \(sample.value)\n"
                }
            }
            family("spotd_nodes", "Nodes by pool and state.", nodes.map { ([("pool", $0.pool), ("state", $0.state)], $0.count) })
            family(
                "spotd_pool_gpus", "GPUs of a pool's live nodes, total and free.",
                gpus.flatMap { [([("pool", $0.pool), ("kind", "total")], $0.total), ([("pool", $0.pool), ("kind", "free")], $0.free)] })
            family("spotd_queue_depth", "Jobs queued, by tier.", queueDepth.map { ([("tier", $0.tier)], $0.depth) })
            family("spotd_interruptions_active", "Interruptions received and not yet completed.", [([], activeInterruptions)])
            family(
                "spotd_provisioning_pending", "Provisioning requests not yet fulfilled, failed or cancelled.", [([], pendingProvisioning)])
            family("spotd_subscriptions_failing", "Subscriptions whose last delivery attempt failed.", [([], failingSubscriptions)])
            family("spotd_leader", "1 when this replica holds the worker lease and runs the workflows, else 0.", [([], leader ? 1 : 0)])
            family("spotd_build_info", "Always 1; the version in a label.", [([("version", SpotVersion.current)], 1)])
            return out
        }

        /// A label value as the text format wants it: backslash, quote and newline escaped.
        static func escape(_ value: String) -> String {
            var escaped = ""
            for character in value {
                switch character {
                case "\\": escaped += "\\\\"
                case "\"": escaped += "\\\""
                case "\n": escaped += "\\n"
                default: escaped.append(character)
                }
            }
            return escaped
        }
    }
}

/// Counts every answered request and its duration by route template and status.
struct RequestMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: SpotMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let started = ContinuousClock.now
        do {
            let response = try await next(request, context)
            metrics.request(
                route: context.endpointPath ?? "unmatched", method: request.method, status: Int(response.status.code),
                elapsed: ContinuousClock.now - started)
            return response
        } catch {
            let status = (error as? any HTTPResponseError)?.status.code ?? 500
            metrics.request(
                route: context.endpointPath ?? "unmatched", method: request.method, status: Int(status),
                elapsed: ContinuousClock.now - started)
            throw error
        }
    }
}
