/// Ready nodes of each pool bucketed by free GPUs, so the tightest fit is found without scanning.
/// Each bucket keeps its node indexes sorted, so the tie-break (the oldest node, as the SQL path's `ORDER BY seq`)
/// is its first element; `nodes` must come in `seq` order.
struct CapacityIndex {
    private(set) var nodes: [Node]
    /// pool name -> free GPUs (capped at 64) -> node indexes, ascending.
    private var buckets: [String: [[Int]]] = [:]

    /// Whether any node has a free GPU.
    var hasFreeCapacity: Bool { buckets.values.contains { $0.contains { !$0.isEmpty } } }

    init(nodes: [Node]) {
        self.nodes = nodes
        for (index, node) in nodes.enumerated() where node.state.schedulable && node.gpusFree > 0 {
            buckets[node.pool, default: Array(repeating: [], count: 65)][min(node.gpusFree, 64)].append(index)
        }
    }

    /// The index of the node of `pool` with the fewest free GPUs that still fits `gpus`.
    func bestIndex(pool: String, gpus: Int) -> Int? {
        guard let pool = buckets[pool], gpus <= 64 else { return nil }
        for free in max(gpus, 1)...64 {
            if let first = pool[free].first { return first }
        }
        return nil
    }

    /// Up to `limit` node indexes of `pool` that fit `gpus`, tightest first (then oldest).
    func fittingIndexes(pool: String, gpus: Int, limit: Int) -> [Int] {
        guard let pool = buckets[pool], gpus <= 64, limit > 0 else { return [] }
        var found: [Int] = []
        for free in max(gpus, 1)...64 {
            for index in pool[free] {
                found.append(index)
                if found.count == limit { return found }
            }
        }
        return found
    }

    /// The node of `pool` with the fewest free GPUs that still fits `gpus`.
    func bestNode(pool: String, gpus: Int) -> Node? {
        bestIndex(pool: pool, gpus: gpus).map { nodes[$0] }
    }

    /// Records an allocation made on the node at `index`.
    mutating func allocate(index: Int, gpus: Int) {
        let node = nodes[index]
        guard node.state.schedulable else { return }
        if node.gpusFree > 0 { Self.remove(index, from: &buckets[node.pool]![min(node.gpusFree, 64)]) }
        nodes[index].gpusAllocated += gpus
        let free = nodes[index].gpusFree
        if free > 0 { Self.insert(index, into: &buckets[node.pool]![min(free, 64)]) }
    }

    private static func position(of index: Int, in bucket: [Int]) -> Int {
        var low = 0
        var high = bucket.count
        while low < high {
            let middle = (low + high) / 2
            if bucket[middle] < index { low = middle + 1 } else { high = middle }
        }
        return low
    }

    private static func insert(_ index: Int, into bucket: inout [Int]) {
        bucket.insert(index, at: position(of: index, in: bucket))
    }

    private static func remove(_ index: Int, from bucket: inout [Int]) {
        let at = position(of: index, in: bucket)
        if at < bucket.count && bucket[at] == index { bucket.remove(at: at) }
    }
}
