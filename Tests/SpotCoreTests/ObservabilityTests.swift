import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Synchronization
import Testing

@testable import SpotCore

@Suite("Metrics and logs")
struct ObservabilityTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Runs a program, returning its exit status and output.
    static func run(_ arguments: [String], stdin: Data? = nil) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.currentDirectoryURL = root
        let output = Pipe()
        let input = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = input
        try process.run()
        if let stdin { input.fileHandleForWriting.write(stdin) }
        try input.fileHandleForWriting.close()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    static var promtool: Bool {
        ["/usr/bin/promtool", "/usr/local/bin/promtool"].contains { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Every family has HELP and TYPE, counters end in `_total`; the store's gauges (nodes by pool and state, pool
    /// GPUs, pending provisioning, leader) are right at scrape time; deadline misses and notices for unknown nodes
    /// are counted. With promtool: `promtool check metrics` accepts the scrape, and `scripts/check-deploy.sh` finds
    /// every metric the dashboard and the alert rules name in it.
    @Test func metricsFollowPrometheusConventions() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            for id in ["s1", "s2"] { try await client.expect(.created, .post, "/v1/nodes", Seed.node(id, pool: "spot-a")) }
            try await client.expect(.created, .post, "/v1/jobs", Seed.job("ckpt", tier: "best_effort", gpus: 8, checkpointable: true))
            try await env.step()
            try await client.expect(.accepted, .post, "/v1/interruptions", #"{"node_id":"ghost","kind":"termination","notice_seconds":60}"#)
            let node = try #require(try await client.call(.get, "/v1/jobs/ckpt")["node_id"]?.string)
            try await client.expect(
                .accepted, .post, "/v1/interruptions", #"{"node_id":"\#(node)","kind":"termination","notice_seconds":60}"#)
            try await env.step()
            // The checkpoint is not reported: its deadline passes.
            try await env.advance(61)
            let scrape = try await client.call(.get, "/metrics").text
            let lines = scrape.split(separator: "\n").map(String.init)
            var help: Set<String> = []
            var types: [String: String] = [:]
            for line in lines {
                let parts = line.split(separator: " ", maxSplits: 3).map(String.init)
                if line.hasPrefix("# HELP "), parts.count >= 4 { help.insert(parts[2]) }
                if line.hasPrefix("# TYPE "), parts.count >= 4 { types[parts[2]] = parts[3] }
            }
            for line in lines where !line.hasPrefix("#") && !line.isEmpty {
                var name = String(line.prefix { $0 != "{" && $0 != " " })
                for suffix in ["_bucket", "_sum", "_count"] where types[name] == nil && name.hasSuffix(suffix) {
                    name = String(name.dropLast(suffix.count))
                }
                #expect(help.contains(name) && types[name] != nil, "\(name) has no HELP or TYPE")
                if types[name] == "counter" { #expect(name.hasSuffix("_total"), "counter \(name)") }
            }
            #expect(lines.contains(#"spotd_nodes{pool="spot-a",state="terminated"} 1"#), "the reclaimed node, at its deadline")
            #expect(lines.contains(#"spotd_nodes{pool="spot-a",state="ready"} 1"#))
            #expect(lines.contains(#"spotd_pool_gpus{pool="spot-a",kind="total"} 8"#))
            #expect(lines.contains(#"spotd_notices_unknown_node_total{source="generic"} 1"#))
            #expect(lines.contains("spotd_deadline_misses_total 1"))
            #expect(lines.contains("spotd_leader 1"))
            #expect(lines.contains("spotd_provisioning_pending 0"), "the replacement booted within the minute")
            #expect(lines.contains(#"spotd_provisioning_total{outcome="fulfilled"} 1"#))
            #expect(lines.contains(#"spotd_subscription_deliveries_total{outcome="failed"} 0"#), "known labels start at 0")
            // A generic notice names its own source: no caller can add a series per source.
            for index in 0..<20 {
                try await client.expect(
                    .accepted, .post, "/v1/interruptions",
                    #"{"node_id":"ghost-\#(index)","kind":"termination","notice_seconds":60,"source":"src-\#(index)"}"#)
            }
            let after = try await client.call(.get, "/metrics").text.split(separator: "\n")
            #expect(after.filter { $0.hasPrefix("spotd_notices_unknown_node_total{") }.count == 5, "aws, gcp, azure, generic, other")
            #expect(after.contains(#"spotd_notices_unknown_node_total{source="other"} 20"#))

            guard Self.promtool else {
                #expect(ProcessInfo.processInfo.environment["SPOTD_REQUIRE_PROMTOOL"] != "1", "SPOTD_REQUIRE_PROMTOOL=1 but no promtool")
                return
            }
            let (lint, lintOutput) = try Self.run(["promtool", "check", "metrics"], stdin: Data(scrape.utf8))
            #expect(lint == 0, "promtool check metrics: \(lintOutput)")
            let file = Self.root.appendingPathComponent(".build/metrics-scrape.txt")
            try Data(scrape.utf8).write(to: file)
            let (deploy, deployOutput) = try Self.run(["bash", "scripts/check-deploy.sh", file.path])
            #expect(deploy == 0, "scripts/check-deploy.sh: \(deployOutput)")
        }
    }

    /// A stockout is counted as `unavailable`, apart from failures (it is expected on spot, and the alert on
    /// failures must not fire for it).
    @Test func stockoutsAreUnavailableNotFailed() async throws {
        let env = try TestEnv()
        try await env.app().test(.router) { client in
            try await Seed.standardPools(client)
            try await client.expect(.ok, .patch, "/v1/pools/spot-b", #"{"stockout":true}"#)
            try await client.expect(.created, .post, "/v1/nodes", Seed.node("s1", pool: "spot-a"))
            try await client.expect(.accepted, .post, "/v1/interruptions", #"{"node_id":"s1","kind":"termination","notice_seconds":60}"#)
            // The simulated provider answers once the boot time (5 s here) has passed: a stockout.
            for _ in 0..<7 { try await env.advance(1) }
            let lines = try await client.call(.get, "/metrics").text.split(separator: "\n")
            #expect(lines.contains(#"spotd_provisioning_total{outcome="unavailable"} 1"#))
            #expect(lines.contains(#"spotd_provisioning_total{outcome="failed"} 0"#))
        }
    }

    /// A real server with `LOG_FORMAT=json` writes nothing but JSON objects, one per line.
    @Test func aServerWithJSONLogsWritesOnlyJSON() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spotd-json-log-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = SpotdProcess(directory: directory, port: freePort(), environment: ["LOG_FORMAT": "json", "LOG_LEVEL": "info"])
        try await server.start()
        #expect(try await server.request("POST", "/v1/pools", Seed.pool("spot-a", "spot")).0 == 201)
        #expect(try await server.eventually { try await server.request("GET", "/readyz").1["leader"]?.bool == true })
        server.kill(SIGTERM)
        let lines = try String(contentsOfFile: server.logPath, encoding: .utf8).split(separator: "\n")
        #expect(lines.count >= 3, "\(lines)")
        for line in lines {
            let object = try? JSONValue.parse(Data(line.utf8))
            #expect(object?["message"]?.string != nil && object?["level"]?.string != nil, "not a JSON log line: \(line)")
        }
        #expect(lines.contains { $0.contains(#""message":"spotd starting""#) && $0.contains(#""version":"\#(SpotVersion.current)""#) })
    }

    /// `LOG_FORMAT=json`: one parseable object per line, with the metadata beside the fixed keys.
    @Test func jsonLogsAreOneObjectPerLine() throws {
        let lines = Mutex<[String]>([])
        var logger = Logger(label: "spotd") { JSONLogHandler(label: $0) { line in lines.withLock { $0.append(line) } } }
        logger.logLevel = .info
        logger.info("worker took the lease", metadata: ["owner": "host:1", "message": "shadowed", "count": "\(3)"])
        logger.debug("not written")
        let written = lines.withLock { $0 }
        #expect(written.count == 1 && written[0].hasSuffix("\n") && written[0].filter { $0 == "\n" }.count == 1)
        let object = try JSONValue.parse(Data(written[0].utf8))
        #expect(object["message"]?.string == "worker took the lease" && object["level"]?.string == "info")
        #expect(object["logger"]?.string == "spotd" && object["owner"]?.string == "host:1" && object["meta.message"]?.string == "shadowed")
        #expect(object["time"]?.string.flatMap(TimeFormat.parseRFC3339) != nil)
        #expect((try? LogSettings.parse(format: "yaml", level: nil).get()) == nil)
        #expect((try? LogSettings.parse(format: nil, level: "loud").get()) == nil)
        #expect((try? LogSettings.parse(format: "JSON", level: "debug").get())?.0 == .json)
    }
}
