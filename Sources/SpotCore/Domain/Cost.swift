/// Cost and lost work: usage is rolled up per hour (`usage_hourly`) as intervals close, and the report adds the
/// intervals still open. Pure helpers: splitting an interval over hours, and the report's arithmetic.

enum Usage {
    static let hour: Millis = 3_600_000

    /// The hour (its first millisecond) that `at` falls in.
    static func hourStart(_ at: Millis) -> Millis { at - ((at % hour) + hour) % hour }

    /// `[from, to)` cut at hour boundaries: each piece's hour and length. Empty when `to <= from`.
    static func split(from: Millis, to: Millis) -> [(hour: Millis, ms: Millis)] {
        guard to > from else { return [] }
        var pieces: [(hour: Millis, ms: Millis)] = []
        var start = from
        while start < to {
            let bucket = hourStart(start)
            let end = min(to, bucket + hour)
            pieces.append((bucket, end - start))
            start = end
        }
        return pieces
    }

    /// The length of `[from, to)` inside `[since, until)`.
    static func overlap(from: Millis, to: Millis, since: Millis, until: Millis) -> Millis {
        max(0, min(to, until) - max(from, since))
    }
}

/// One line of the cost report, for a pool or a tier.
struct CostLine: Sendable, Equatable {
    var nodeMillis: Millis = 0
    /// GPU time of the pool's nodes (pool lines) or of the tier's work (tier lines), in GPU-milliseconds.
    var gpuMillis: Millis = 0
    /// GPU time used by work on the pool's nodes (pool lines).
    var usedGPUMillis: Millis = 0
    var cost = 0.0
    var interruptions = 0
    var lostGPUMillis: Millis = 0
    /// What the same GPU time would have cost on the cheapest on-demand pool of its GPU type; nil when there is none.
    var onDemandCost: Double? = 0

    static func + (lhs: CostLine, rhs: CostLine) -> CostLine {
        CostLine(
            nodeMillis: lhs.nodeMillis + rhs.nodeMillis, gpuMillis: lhs.gpuMillis + rhs.gpuMillis,
            usedGPUMillis: lhs.usedGPUMillis + rhs.usedGPUMillis, cost: lhs.cost + rhs.cost,
            interruptions: lhs.interruptions + rhs.interruptions, lostGPUMillis: lhs.lostGPUMillis + rhs.lostGPUMillis,
            onDemandCost: lhs.onDemandCost.flatMap { left in rhs.onDemandCost.map { left + $0 } })
    }

    /// The saving against on-demand: what the GPU time would have cost there, less what it cost.
    var saving: Double? { onDemandCost.map { $0 - cost } }
}

extension Usage {
    /// The cheapest on-demand price per GPU-hour for each GPU type.
    static func onDemandGPUPrice(_ pools: [Pool]) -> [String: Double] {
        var prices: [String: Double] = [:]
        for pool in pools where pool.capacityType == .onDemand && pool.gpusPerNode > 0 {
            let perGPU = pool.hourlyPrice / Double(pool.gpusPerNode)
            prices[pool.gpuType] = min(prices[pool.gpuType] ?? perGPU, perGPU)
        }
        return prices
    }

    /// The price of `ms` of `gpus` GPUs of `pool`, at its hourly price.
    static func gpuCost(_ pool: Pool, gpuMillis: Millis) -> Double {
        guard pool.gpusPerNode > 0 else { return 0 }
        return pool.hourlyPrice / Double(pool.gpusPerNode) * Double(gpuMillis) / Double(hour)
    }

    static func nodeCost(_ pool: Pool, nodeMillis: Millis) -> Double { pool.hourlyPrice * Double(nodeMillis) / Double(hour) }
}
