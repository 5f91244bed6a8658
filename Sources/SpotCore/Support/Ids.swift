/// Fresh opaque ids: a prefix and 16 random hex digits (`job-1f2e3d4c5b6a7980`).
enum Ids {
    static func new(_ prefix: String) -> String {
        var bytes = [UInt8](repeating: 0, count: 8)
        var generator = SystemRandomNumberGenerator()
        for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255, using: &generator) }
        return prefix + "-" + Hex.encode(bytes)
    }
}
