/// This build's version, printed by `spotd --version` and logged at start.
public enum SpotVersion {
    public static let current = "0.3.0"
    /// The newest store schema (migration number) this build knows.
    public static var schema: Int { Migration.embedded.map(\.version).max() ?? 0 }
}
