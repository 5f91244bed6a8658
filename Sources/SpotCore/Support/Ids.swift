/// Random ids: a prefix naming the kind, then 16 hex digits.
enum Ids {
    static func new(_ prefix: String) -> String {
        prefix + "-" + random(bytes: 8)
    }

    /// 32 random bytes in hex: a secret.
    static func secret() -> String { random(bytes: 32) }

    private static func random(bytes count: Int) -> String {
        var bytes = [UInt8](repeating: 0, count: count)
        var generator = SystemRandomNumberGenerator()
        for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255, using: &generator) }
        return Hex.encode(bytes)
    }
}
