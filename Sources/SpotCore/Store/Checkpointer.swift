import GRDB
import Logging
import ServiceLifecycle

/// Moves WAL pages into the database file from its own connection, a few times a second, so that the single
/// writer never pays for a checkpoint in the middle of a commit (SQLite's automatic checkpoint runs inside the
/// commit that crosses the threshold, and held every request of that batch for its page copies and fsync).
/// A PASSIVE checkpoint never blocks the writer or readers. The writer keeps a high automatic threshold as a
/// safety net for when this service is not running (`spotd migrate`, tests that step the worker by hand).
struct Checkpointer: Service {
    let path: String
    let interval: Duration
    let logger: Logger

    func run() async throws {
        var configuration = Configuration()
        configuration.label = "spotd.checkpointer"
        configuration.busyMode = .timeout(1)
        let connection = try DatabaseQueue(path: path, configuration: configuration)
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                try await connection.writeWithoutTransaction { db in _ = try db.checkpoint(.passive) }
            } catch {
                logger.warning("WAL checkpoint failed", metadata: ["error": "\(error)"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
        try connection.close()
    }
}
