import Crypto
import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Where replacement nodes come from.
public protocol Provider: Sendable {
    /// Moves one pending request forward.
    func advance(_ request: ProvisioningRequest, pool: Pool, now: Millis) async -> ProviderStep
}

/// The embedded provider: a node appears in the asked pool after the boot time, unless the pool is in stockout.
public struct SimulatedProvider: Provider {
    public var bootSeconds: Double

    public init(bootSeconds: Double) { self.bootSeconds = bootSeconds }

    public func advance(_ request: ProvisioningRequest, pool: Pool, now: Millis) async -> ProviderStep {
        guard Double(now - request.createdAt) >= bootSeconds * 1000 else { return .wait }
        if pool.stockout { return .failed("stockout: pool \(pool.name) has no \(pool.capacityType.rawValue) capacity") }
        return .fulfilled(nodeId: "sim-\(request.id.dropFirst(5))", gpus: pool.gpusPerNode)
    }
}

/// POSTs each request, HMAC-signed, to an external provisioner, which registers the node with `provisioning_request_id`.
public struct WebhookProvider: Provider {
    public var url: URL
    public var secret: String?
    /// With no node registered within this time the request fails, and the fallback starts.
    public var timeoutSeconds: Double

    public init(url: URL, secret: String?, timeoutSeconds: Double) {
        self.url = url
        self.secret = secret
        self.timeoutSeconds = timeoutSeconds
    }

    public func advance(_ request: ProvisioningRequest, pool: Pool, now: Millis) async -> ProviderStep {
        if let submitted = request.submittedAt {
            return Double(now - submitted) >= timeoutSeconds * 1000
                ? .failed("timeout: no node registered within \(Int(timeoutSeconds)) s") : .wait
        }
        let body = JSONValue.object([
            "id": .string(request.id), "pool": .string(pool.name), "capacity_type": .string(pool.capacityType.rawValue),
            "gpu_type": .string(pool.gpuType), "gpus_per_node": .int(Int64(pool.gpusPerNode)), "zone": .string(pool.zone),
            "instance_type": .string(pool.instanceType), "reason": .string(request.reason),
        ])
        let data = Data(body.jsonText.utf8)
        var http = URLRequest(url: url, timeoutInterval: 10)
        http.httpMethod = "POST"
        http.httpBody = data
        http.setValue("application/json", forHTTPHeaderField: "Content-Type")
        http.setValue(request.id, forHTTPHeaderField: "Idempotency-Key")
        if let secret {
            let timestamp = String(now / 1000)
            http.setValue(timestamp, forHTTPHeaderField: "X-Spotd-Timestamp")
            http.setValue(
                "sha256=" + Signature.hex(secret: secret, timestamp: timestamp, body: data), forHTTPHeaderField: "X-Spotd-Signature")
        }
        do {
            let (_, response) = try await URLSession.shared.data(for: http)
            guard let status = (response as? HTTPURLResponse)?.statusCode, (200..<300).contains(status) else {
                let code = (response as? HTTPURLResponse)?.statusCode ?? 0
                return .failed("webhook answered HTTP \(code)")
            }
            return .submitted
        } catch {
            return .failed("webhook unreachable: \(error.localizedDescription)")
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
