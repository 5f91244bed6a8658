import Foundation
import Hummingbird

/// `GET /v1/reports/cost`: what the fleet cost, what spot saved, what interruptions lost.
struct ReportController {
    let store: any ResourceStore
    let clock: any SpotClock

    func register(on routes: RouteBook) {
        routes.add(.get, "/v1/reports/cost", .read, use: cost)
    }

    @Sendable func cost(_ request: Request, context: AppRequestContext) async throws -> Response {
        let query = try Query(request, allowed: ["since", "until"])
        func time(_ name: String) throws -> Millis? {
            guard let text = query.items[name] else { return nil }
            guard let value = TimeFormat.parseRFC3339(text) else {
                throw Problem.invalidQuery(name, "must be an RFC 3339 time such as 2026-11-30T00:00:00Z")
            }
            return value
        }
        let until = try time("until") ?? clock.now()
        let since = try time("since") ?? until - 86_400_000
        guard since < until else { throw Problem.unprocessable("since", "must be before until") }
        let report = try await store.costReport(since: since, until: until)
        return View.cost(report).response()
    }
}

extension View {
    static func hours(_ millis: Millis) -> JSONValue { .double(rounded(Double(millis) / 3_600_000)) }
    static func rounded(_ value: Double) -> Double { (value * 1_000_000).rounded() / 1_000_000 }
    static func money(_ value: Double?) -> JSONValue { value.map { .double(rounded($0)) } ?? .null }

    static func costLine(_ line: CostLine, pool: Bool) -> [String: JSONValue] {
        var fields: [String: JSONValue] = [
            "gpu_hours": hours(line.gpuMillis), "cost": money(line.cost), "interruptions": int(line.interruptions),
            "gpu_hours_lost": hours(line.lostGPUMillis), "saving": money(line.saving),
        ]
        if pool {
            fields["node_hours"] = hours(line.nodeMillis)
            fields["gpu_hours_used"] = hours(line.usedGPUMillis)
        }
        return fields
    }

    static func cost(_ report: CostReport) -> JSONValue {
        var total = costLine(report.total, pool: true)
        total.removeValue(forKey: "gpu_hours_used")
        total["gpu_hours_used"] = hours(report.total.usedGPUMillis)
        return .object([
            "since": time(report.since), "until": time(report.until),
            "pools": .array(
                report.pools.map { entry in
                    var fields = costLine(entry.line, pool: true)
                    fields["pool"] = .string(entry.name)
                    fields["capacity_type"] = string(entry.pool?.capacityType.rawValue)
                    fields["gpu_type"] = string(entry.pool?.gpuType)
                    return .object(fields)
                }),
            "tiers": .array(
                report.tiers.map { entry in
                    var fields = costLine(entry.line, pool: false)
                    fields["tier"] = .string(entry.tier.rawValue)
                    return .object(fields)
                }),
            "total": .object(total),
        ])
    }
}
