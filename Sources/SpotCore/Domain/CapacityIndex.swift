/// Ready nodes of each pool bucketed by free GPUs, so the tightest fit is found without scanning.
struct CapacityIndex {
    private(set) var nodes: [Node]
    /// pool name -> free GPUs -> node indexes.
    private var buckets: [String: [Set<Int>]] = [:]

    init(nodes: [Node]) {
        self.nodes = nodes
        for (index, node) in nodes.enumerated() where node.state.schedulable && node.gpusFree > 0 {
            buckets[node.pool, default: Array(repeating: [], count: 65)][min(node.gpusFree, 64)].insert(index)
        }
    }

    /// The node of `pool` with the fewest free GPUs that still fits `gpus`.
    func bestNode(pool: String, gpus: Int) -> Node? {
        guard let pool = buckets[pool], gpus <= 64 else { return nil }
        for free in max(gpus, 1)...64 where !pool[free].isEmpty {
            return pool[free].min().map { nodes[$0] }
        }
        return nil
    }

    /// Records an allocation made on a node.
    mutating func allocate(nodeId: String, gpus: Int) {
        guard let index = nodes.firstIndex(where: { $0.id == nodeId }) else { return }
        allocate(index: index, gpus: gpus)
    }

    mutating func allocate(index: Int, gpus: Int) {
        let node = nodes[index]
        buckets[node.pool]?[min(node.gpusFree, 64)].remove(index)
        nodes[index].gpusAllocated += gpus
        let free = nodes[index].gpusFree
        if free > 0 { buckets[node.pool]?[min(free, 64)].insert(index) }
    }

    func index(of nodeId: String, pool: String, gpus: Int) -> Int? {
        guard let pool = buckets[pool] else { return nil }
        for free in max(gpus, 1)...64 {
            if let index = pool[free].first(where: { nodes[$0].id == nodeId }) { return index }
        }
        return nil
    }
}
