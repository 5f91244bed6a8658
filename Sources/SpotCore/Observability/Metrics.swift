import CoreMetrics
import Hummingbird
import Metrics
import Prometheus
import Synchronization

/// spotd's metrics, through swift-metrics, exported as Prometheus text. Each runtime has its own registry, so that
/// what `/metrics` shows (and what a test reads) is this server's alone.
public final class SpotMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    let factory: PrometheusMetricsFactory
    private let requestMetrics = Mutex<[RequestKey: (CoreMetrics.Counter, CoreMetrics.Timer)]>([:])

    public init() {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.valueHistogramBuckets["spotd_drain_duration_seconds"] = [1, 5, 10, 20, 30, 60, 90, 120, 300]
        factory.durationHistogramBuckets["spotd_cordon_latency_seconds"] = [
            1, 2, 5, 10, 20, 50, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 2000, 5000,
        ].map { Duration.milliseconds($0) }
        factory.durationHistogramBuckets["spotd_http_request_duration_seconds"] = [
            1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000,
        ].map { Duration.milliseconds($0) }
        self.registry = registry
        self.factory = factory
    }

    func notice(source: String, kind: String) {
        CoreMetrics.Counter(label: "spotd_notices_total", dimensions: [("source", source), ("kind", kind)], factory: factory).increment()
    }

    func cordonLatency(_ elapsed: Duration) {
        CoreMetrics.Timer(label: "spotd_cordon_latency_seconds", factory: factory).recordNanoseconds(
            elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
    }

    func drainDuration(seconds: Double) {
        CoreMetrics.Recorder(label: "spotd_drain_duration_seconds", aggregate: true, factory: factory).record(seconds)
    }

    func placement(_ outcome: String, count: Int = 1) {
        guard count > 0 else { return }
        CoreMetrics.Counter(label: "spotd_placements_total", dimensions: [("outcome", outcome)], factory: factory).increment(by: count)
    }

    /// SQS messages by what became of them: recorded, duplicate, unparseable.
    func sqsMessage(_ outcome: String) {
        CoreMetrics.Counter(label: "spotd_sqs_messages_total", dimensions: [("outcome", outcome)], factory: factory).increment()
    }

    func provisioning(_ outcome: String) {
        CoreMetrics.Counter(label: "spotd_provisioning_total", dimensions: [("outcome", outcome)], factory: factory).increment()
    }

    func queueDepth(tier: String, depth: Int) {
        CoreMetrics.Gauge(label: "spotd_queue_depth", dimensions: [("tier", tier)], factory: factory).record(depth)
    }

    func eventStreams(_ count: Int) {
        CoreMetrics.Gauge(label: "spotd_event_streams", factory: factory).record(count)
    }

    /// Counts what a commit wrote to the event log, by event type: the requeue count is the number of
    /// `job.requeued` events committed, whichever path requeued the job (drain, checkpoint report, deadline, delete).
    func committed(_ events: [String: Int]) {
        for (type, count) in events where count > 0 {
            CoreMetrics.Counter(label: "spotd_events_total", dimensions: [("type", type)], factory: factory).increment(by: count)
            if type == "job.requeued" {
                CoreMetrics.Counter(label: "spotd_requeues_total", factory: factory).increment(by: count)
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
            let dimensions = [("route", route), ("method", method.rawValue), ("status", String(status))]
            let made = (
                CoreMetrics.Counter(label: "spotd_http_requests_total", dimensions: dimensions, factory: factory),
                CoreMetrics.Timer(label: "spotd_http_request_duration_seconds", dimensions: dimensions, factory: factory)
            )
            cache[key] = made
            return made
        }
        counter.increment()
        timer.recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
    }

    func render() -> String {
        registry.emitToString()
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
