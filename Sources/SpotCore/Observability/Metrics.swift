import CoreMetrics
import Metrics
import Prometheus

/// spotd's metrics, through swift-metrics, exported as Prometheus text.
enum SpotMetrics {
    /// The process-wide registry; swift-metrics is bootstrapped with it once.
    static let registry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.valueHistogramBuckets["spotd_drain_duration_seconds"] = [1, 5, 10, 20, 30, 60, 90, 120, 300]
        factory.durationHistogramBuckets["spotd_cordon_latency_seconds"] = [
            1, 2, 5, 10, 20, 50, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 2000, 5000,
        ].map {
            Duration.milliseconds($0)
        }
        MetricsSystem.bootstrap(factory)
        return registry
    }()

    /// Makes sure the registry is bootstrapped before any metric is created.
    static func bootstrap() { _ = registry }

    static func notice(source: String, kind: String) {
        Counter(label: "spotd_notices_total", dimensions: [("source", source), ("kind", kind)]).increment()
    }

    static func cordonLatency(nanoseconds: Int64) {
        Metrics.Timer(label: "spotd_cordon_latency_seconds").recordNanoseconds(nanoseconds)
    }

    static func drainDuration(seconds: Double) {
        Recorder(label: "spotd_drain_duration_seconds", aggregate: true).record(seconds)
    }

    static func requeues(_ count: Int) {
        guard count > 0 else { return }
        Counter(label: "spotd_requeues_total").increment(by: count)
    }

    static func placement(_ outcome: String, count: Int = 1) {
        guard count > 0 else { return }
        Counter(label: "spotd_placements_total", dimensions: [("outcome", outcome)]).increment(by: count)
    }

    static func provisioning(_ outcome: String) {
        Counter(label: "spotd_provisioning_total", dimensions: [("outcome", outcome)]).increment()
    }

    static func queueDepth(tier: String, depth: Int) {
        Gauge(label: "spotd_queue_depth", dimensions: [("tier", tier)]).record(depth)
    }

    static func render() -> String {
        registry.emitToString()
    }
}
