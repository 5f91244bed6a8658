import Foundation
import GRDB
import Testing

@testable import SpotCore

/// What a finished `spotd` command printed.
struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs the built `spotd` binary with `arguments`, killing it after `timeout` seconds.
func runSpotd(
    _ arguments: [String], environment: [String: String] = [:], in directory: URL? = nil, binary: URL = SpotdProcess.binary,
    timeout: Double = 20
) async throws -> CommandResult {
    let process = Process()
    process.executableURL = binary
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SPOTD_") }
    env.merge(environment) { $1 }
    process.environment = env
    if let directory { process.currentDirectoryURL = directory }
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
    if process.isRunning {
        process.terminate()
        process.waitUntilExit()
    }
    return CommandResult(
        status: process.terminationStatus,
        stdout: String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self),
        stderr: String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
}

@Suite("Startup: errors that name what is wrong", .serialized)
struct StartupTests {
    func tempDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-start-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test func versionIsPrinted() async throws {
        let result = try await runSpotd(["--version"])
        #expect(result.status == 0)
        #expect(
            result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
                == "spotd \(SpotVersion.current) (store schema \(SpotVersion.schema))")
    }

    /// Every numeric setting is range-checked at start, with the flag (or variable) named; nothing reaches arithmetic.
    @Test(
        arguments: [
            (["--scale-down-idle-seconds", "9223372036854775807"], [:], "--scale-down-idle-seconds"),
            (["--sim-boot-seconds", "nan"], [:], "--sim-boot-seconds"),
            (["--sim-boot-seconds", "inf"], [:], "--sim-boot-seconds"),
            (["--drain-margin-seconds=-1"], [:], "--drain-margin-seconds"),
            (["--replica-drain-seconds=3601"], [:], "--replica-drain-seconds"),
            (["--retention-days", "0"], [:], "--retention-days"),
            (["--max-event-streams=-5"], [:], "--max-event-streams"),
            (["--body-timeout-seconds", "0"], [:], "--body-timeout-seconds"),
            (["--max-buffered-body-mib", "9223372036854775807"], [:], "--max-buffered-body-mib"),
            (["--port", "70000"], [:], "--port"),
            ([], ["SPOTD_PORT": "80x"], "SPOTD_PORT"),
            ([], ["SPOTD_SCALE_DOWN_IDLE_SECONDS": "9223372036854775807"], "--scale-down-idle-seconds"),
            ([], ["SPOTD_SIM_BOOT_SECONDS": "nan"], "--sim-boot-seconds"),
            (["--host", "0.0.0.0"], [:], "--host"),
            ([], ["SPOTD_ADMIN_TOKEN": "admin-token-from-a-file-0123\n"], "--admin-token"),
            ([], ["SPOTD_WEBHOOK_SECRET": " secret"], "--webhook-secret"),
            (["--max-connections", "0"], [:], "--max-connections"),
            ([], ["LOG_FORMAT": "yaml"], "LOG_FORMAT"),
            ([], ["LOG_LEVEL": "loud"], "LOG_LEVEL"),
        ] as [([String], [String: String], String)])
    func badSettingsAreRefusedByName(arguments: [String], environment: [String: String], named: String) async throws {
        let directory = try tempDirectory()
        let result = try await runSpotd(
            ["serve", "--db", directory.appendingPathComponent("x.sqlite").path] + arguments, environment: environment, timeout: 10)
        #expect(result.status == 2, "\(arguments) \(environment): \(result.stderr)")
        #expect(result.stderr.contains(named), "\(arguments) \(environment): \(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("x.sqlite").path))
    }

    @Test func portInUseIsNamed() async throws {
        let port = freePort()
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(bound == 0 && listen(holder, 1) == 0)
        let directory = try tempDirectory()
        let result = try await runSpotd(["serve", "--port", "\(port)", "--db", directory.appendingPathComponent("x.sqlite").path])
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains("127.0.0.1:\(port)") && result.stderr.contains("already in use"), "\(result.stderr)")
    }

    @Test func unusableDatabasePathIsNamed() async throws {
        let directory = try tempDirectory()
        let missingFolder = directory.appendingPathComponent("no-such-folder/spotd.sqlite").path
        let result = try await runSpotd(["serve", "--port", "\(freePort())", "--db", missingFolder])
        #expect(result.status == 2)
        #expect(result.stderr.contains(missingFolder) && result.stderr.contains("cannot be opened"), "\(result.stderr)")
        let notADatabase = directory.appendingPathComponent("notes.txt")
        try Data(String(repeating: "not sqlite\n", count: 200).utf8).write(to: notADatabase)
        let second = try await runSpotd(["serve", "--port", "\(freePort())", "--db", notADatabase.path])
        #expect(second.status == 2)
        #expect(second.stderr.contains(notADatabase.path) && second.stderr.contains("not a SQLite database"), "\(second.stderr)")
    }

    @Test func migrationsFolderOverrideIsNamedWhenMissing() async throws {
        let directory = try tempDirectory()
        let result = try await runSpotd([
            "serve", "--port", "\(freePort())", "--db", directory.appendingPathComponent("x.sqlite").path, "--migrations", "/no/such/dir",
        ])
        #expect(result.status == 2)
        #expect(result.stderr.contains("/no/such/dir"), "\(result.stderr)")
    }

    @Test func brokenMigrationIsNamed() async throws {
        let directory = try tempDirectory()
        let folder = directory.appendingPathComponent("migrations")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        for migration in Migration.embedded {
            try Data(migration.sql.utf8).write(to: folder.appendingPathComponent(migration.name))
        }
        try Data("CREATE TABLE broken (".utf8).write(to: folder.appendingPathComponent("0099_broken.sql"))
        let result = try await runSpotd([
            "serve", "--port", "\(freePort())", "--db", directory.appendingPathComponent("x.sqlite").path, "--migrations", folder.path,
        ])
        #expect(result.status == 2)
        #expect(result.stderr.contains("0099_broken.sql"), "\(result.stderr)")
    }

    /// A store that a newer spotd migrated is refused, naming the path and the versions, and left as it was.
    @Test func newerSchemaIsRefused() async throws {
        let directory = try tempDirectory()
        let path = directory.appendingPathComponent("spotd.sqlite").path
        #expect(try await runSpotd(["migrate", "--db", path]).status == 0)
        try await DatabaseQueue(path: path).write { db in
            try db.execute(
                sql: "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (999, '0999_future.sql', 'x', 0)")
        }
        let result = try await runSpotd(["serve", "--port", "\(freePort())", "--db", path])
        #expect(result.status == 2)
        #expect(
            result.stderr.contains(path) && result.stderr.contains("newer spotd") && result.stderr.contains("0999_future.sql"),
            "\(result.stderr)")
        #expect(
            try await DatabaseQueue(path: path).read { db in try Int.fetchOne(db, sql: "SELECT MAX(version) FROM schema_migrations") }
                == 999)
    }

    /// Debug logs print the services started, never a secret: not the admin token, the webhook secret, AWS keys or
    /// the database password.
    @Test func debugLogsHoldNoSecret() async throws {
        let directory = try tempDirectory()
        var db = TestStore.location(in: directory)
        if var components = URLComponents(string: db), TestStore.isPostgres {
            components.password = "spotd"  // the throwaway cluster's; looked for below as it is in the URL
            db = components.string!
        }
        let result = try await runSpotd(
            [
                "serve", "--port", "\(freePort())", "--db", db, "--admin-token", "Sekret-admin-token-4711", "--webhook-secret",
                "whsec-Sekret-4711",
            ],
            environment: ["LOG_LEVEL": "debug", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "Sekret-aws-4711"], timeout: 4)
        #expect(result.stderr.contains("Starting service"), "\(result.stderr.prefix(2000))")
        #expect(!result.stderr.contains("Sekret"), "\(result.stderr)")
        if TestStore.isPostgres { #expect(!result.stderr.contains("spotd:spotd@"), "\(result.stderr)") }
    }

    /// The migrations are built in: a copy of the binary, run from a folder with no `migrations/`, starts and serves.
    @Test func copiedBinaryNeedsNoMigrationsFolder() async throws {
        let directory = try tempDirectory()
        let copy = directory.appendingPathComponent("spotd")
        try FileManager.default.copyItem(at: SpotdProcess.binary, to: copy)
        let server = SpotdProcess(directory: directory, port: freePort(), binary: copy, workingDirectory: directory)
        try await server.start()
        let (status, ready) = try await server.request("GET", "/readyz")
        #expect(status == 200, "\(ready)")
        #expect(ready["store"]?.string == (TestStore.isPostgres ? "postgres" : "sqlite"))
        // The only process: it takes the worker lease within a renewal or two.
        #expect(try await server.eventually { try await server.request("GET", "/readyz").1["leader"]?.bool == true })
        let store = try SpotStore(location: server.dbPath, connections: 1)
        let applied = try store.blockingRead { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM schema_migrations") }
        #expect(applied == (TestStore.isPostgres ? Migration.embeddedPostgres : Migration.embedded).count)
        try store.close()
        server.kill(SIGTERM)
    }

    /// SIGTERM with event streams open: the streams end and the process exits promptly.
    @Test func shutdownEndsOpenStreams() async throws {
        let directory = try tempDirectory()
        let server = SpotdProcess(directory: directory, port: freePort())
        try await server.start()
        let streams = try (0..<3).map { _ in try RawSocket(port: server.port) }
        for stream in streams {
            stream.send("GET /v1/events/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
            #expect(await stream.read(until: ": spotd event stream", timeoutSeconds: 5).hasPrefix("HTTP/1.1 200"))
        }
        let started = Date()
        server.kill(SIGTERM)
        #expect(Date().timeIntervalSince(started) < 5)
        for stream in streams { #expect(await stream.readUntilClosed(timeoutSeconds: 2)) }
    }

    @Test func embeddedMigrationsMatchTheFolder() throws {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("migrations").path
        let onDisk = try Migration.load(from: folder)
        #expect(onDisk == Migration.embedded, "run scripts/embed-migrations.py after changing migrations/")
        let postgres = try Migration.load(from: folder + "/postgres")
        #expect(postgres == Migration.embeddedPostgres, "run scripts/embed-migrations.py after changing migrations/postgres/")
    }
}
