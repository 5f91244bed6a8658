import Foundation
import Synchronization
import Testing

@testable import SpotCore

@Suite("spotd demo", .serialized)
struct DemoTests {
    @Test func referenceScenarioPassesWithNoPremiumJobTouched() async throws {
        let lines = Mutex<[String]>([])
        let started = Date()
        let passed = try await Demo.run(Demo.Options()) { line in lines.withLock { $0.append(line) } }
        let output = lines.withLock { $0.joined(separator: "\n") }
        #expect(passed, "\(output)")
        #expect(Date().timeIntervalSince(started) < 60)
        #expect(output.contains("premium jobs touched:     0"))
        #expect(output.contains("replacements fulfilled:   5 in spot-b"))
        #expect(output.contains("job.requeued"))
        #expect(output.contains("node.cordoned"))
    }

    @Test func stockoutFallsBackToOnDemand() async throws {
        let lines = Mutex<[String]>([])
        var options = Demo.Options()
        options.stockout = true
        let passed = try await Demo.run(options) { line in lines.withLock { $0.append(line) } }
        let output = lines.withLock { $0.joined(separator: "\n") }
        #expect(passed, "\(output)")
        #expect(output.contains("replacements fulfilled:   5 in on-demand"))
    }
}
