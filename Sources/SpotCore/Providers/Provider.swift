import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// Where nodes come from and where they go back: the simulated cloud, or an external provisioner over HTTP.
public protocol Provider: Sendable {
    /// Moves one pending request forward, with at most one call to the provisioner.
    func advance(_ request: ProvisioningRequest, pool: Pool, now: Millis) async -> ProviderStep
    /// Asks for a node to be given back; idempotent by `release.idempotencyKey` (a release of an instance that is
    /// already gone is acknowledged).
    func release(_ release: NodeRelease, pool: Pool?, now: Millis) async -> ReleaseStep
}

/// What came of asking for a release.
public enum ReleaseStep: Sendable, Equatable {
    case acknowledged
    /// Not acknowledged this time (an error, a timeout, a 5xx): asked again after a backoff.
    case retry(String)
}

/// The cloud the simulated provider plays: a table of instances (`sim_instances`), kept by the store so that it
/// outlives a restart and tests can count what is still running.
public protocol SimulatedCloud: Sendable {
    /// Starts an instance (again: nothing happens).
    func launchInstance(_ id: String, pool: String, at now: Millis) async throws
    /// Stops an instance; an unknown or stopped one is fine.
    func releaseInstance(_ id: String, at now: Millis) async throws
    /// Instances running now.
    func liveInstances() async throws -> Int
}

/// The embedded provider: a node appears in the asked pool after the boot time, unless the pool is in stockout.
public struct SimulatedProvider: Provider {
    /// How a failed call for a pool in stockout begins: metrics count it apart (outcome `unavailable`), since on spot it
    /// is expected and falls back to on-demand.
    static let stockout = "stockout"

    public var bootSeconds: Double
    public let cloud: any SimulatedCloud

    public init(bootSeconds: Double, cloud: any SimulatedCloud) {
        self.bootSeconds = bootSeconds
        self.cloud = cloud
    }

    /// The instance (and node) id of what a request launches.
    static func instanceId(_ request: ProvisioningRequest) -> String { "sim-\(request.id.dropFirst(5))" }

    public func advance(_ request: ProvisioningRequest, pool: Pool, now: Millis) async -> ProviderStep {
        guard Double(now - request.createdAt) >= bootSeconds * 1000 else { return .wait }
        if pool.stockout { return .failed("\(Self.stockout): pool \(pool.name) has no \(pool.capacityType.rawValue) capacity") }
        let id = Self.instanceId(request)
        do {
            try await cloud.launchInstance(id, pool: pool.name, at: now)
        } catch {
            return .retry("simulated cloud: \(error)")
        }
        return .fulfilled(nodeId: id, gpus: pool.gpusPerNode)
    }

    public func release(_ release: NodeRelease, pool: Pool?, now: Millis) async -> ReleaseStep {
        do {
            try await cloud.releaseInstance(release.nodeId, at: now)
            return .acknowledged
        } catch {
            return .retry("simulated cloud: \(error)")
        }
    }
}

/// Calls an external provisioner (`webhooks:` in openapi.yaml): `create` and `release`, each a signed POST to one
/// URL with an `Idempotency-Key` that is the same on every retry. A create answered 2xx is taken, and the
/// provisioner registers the node itself (`POST /v1/nodes` with `provisioning_request_id`); a timeout, a transport
/// error, a 429 or a 5xx is retried with backoff; another 4xx fails the request at once. A release answered 2xx or
/// 404 (no such instance) is acknowledged; anything else is retried.
public struct WebhookProvider: Provider {
    public var url: URL
    public var secret: String?
    /// With no node registered this long after the provisioner took the request, the request fails.
    public var bootTimeoutSeconds: Double
    /// How long one call may take.
    public var callTimeoutSeconds: Double
    let client: HTTPClient

    public init(url: URL, secret: String?, bootTimeoutSeconds: Double, callTimeoutSeconds: Double, client: HTTPClient = .shared) {
        self.url = url
        self.secret = secret
        self.bootTimeoutSeconds = bootTimeoutSeconds
        self.callTimeoutSeconds = callTimeoutSeconds
        self.client = client
    }

    /// The body of a create call.
    static func createBody(_ request: ProvisioningRequest, pool: Pool) -> JSONValue {
        .object([
            "action": .string("create"), "id": .string(request.id), "pool": .string(pool.name),
            "capacity_type": .string(pool.capacityType.rawValue), "gpu_type": .string(pool.gpuType),
            "gpus_per_node": .int(Int64(pool.gpusPerNode)), "zone": .string(pool.zone), "instance_type": .string(pool.instanceType),
            "reason": .string(request.reason), "attempt": .int(Int64(request.attempts + 1)),
        ])
    }

    /// The body of a release call.
    static func releaseBody(_ release: NodeRelease, pool: Pool?) -> JSONValue {
        .object([
            "action": .string("release"), "node_id": .string(release.nodeId), "pool": .string(release.pool),
            "capacity_type": pool.map { .string($0.capacityType.rawValue) } ?? .null, "zone": pool.map { .string($0.zone) } ?? .null,
            "instance_type": pool.map { .string($0.instanceType) } ?? .null, "reason": .string(release.reason),
            "attempt": .int(Int64(release.attempts + 1)),
        ])
    }

    public func advance(_ request: ProvisioningRequest, pool: Pool, now: Millis) async -> ProviderStep {
        if let submitted = request.submittedAt {
            return Double(now - submitted) >= bootTimeoutSeconds * 1000
                ? .failed("timeout: no node registered within \(Int(bootTimeoutSeconds)) s") : .wait
        }
        switch await call(Self.createBody(request, pool: pool), key: request.id, now: now) {
        case .answered(let status) where (200..<300).contains(status): return .submitted
        case .answered(let status) where status == 429 || status >= 500: return .retry("provisioner answered HTTP \(status)")
        case .answered(let status): return .failed("provisioner refused the request: HTTP \(status)")
        case .unreachable(let message): return .retry(message)
        }
    }

    public func release(_ release: NodeRelease, pool: Pool?, now: Millis) async -> ReleaseStep {
        switch await call(Self.releaseBody(release, pool: pool), key: release.idempotencyKey, now: now) {
        case .answered(let status) where (200..<300).contains(status) || status == 404: return .acknowledged
        case .answered(let status): return .retry("provisioner answered HTTP \(status)")
        case .unreachable(let message): return .retry(message)
        }
    }

    enum CallOutcome {
        case answered(Int)
        case unreachable(String)
    }

    /// One signed POST, bounded by `callTimeoutSeconds`; the answer's body is read (up to 64 KiB) and dropped.
    func call(_ body: JSONValue, key: String, now: Millis) async -> CallOutcome {
        let data = Data(body.jsonText.utf8)
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Idempotency-Key", value: key)
        if let secret {
            let timestamp = String(now / 1000)
            request.headers.add(name: "X-Spotd-Timestamp", value: timestamp)
            request.headers.add(
                name: "X-Spotd-Signature", value: "sha256=" + Signature.hex(secret: secret, timestamp: timestamp, body: data))
        }
        request.body = .bytes(ByteBuffer(data: data))
        do {
            let response = try await client.execute(request, timeout: .milliseconds(Int64(callTimeoutSeconds * 1000)))
            _ = try? await response.body.collect(upTo: 1 << 16)
            return .answered(Int(response.status.code))
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout {
            return .unreachable("provisioner timed out after \(callTimeoutSeconds) s")
        } catch {
            return .unreachable("provisioner unreachable: \(error)")
        }
    }
}

extension Data {
    init?(hexString: String) {
        guard hexString.utf8.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(hexString.utf8.count / 2)
        var iterator = hexString.utf8.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            guard let h = Self.nibble(high), let l = Self.nibble(low) else { return nil }
            bytes.append(h << 4 | l)
        }
        self.init(bytes)
    }

    private static func nibble(_ char: UInt8) -> UInt8? {
        switch char {
        case 0x30...0x39: char - 0x30
        case 0x61...0x66: char - 0x61 + 10
        case 0x41...0x46: char - 0x41 + 10
        default: nil
        }
    }
}
