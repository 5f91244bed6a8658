import Crypto
import Foundation

/// AWS credentials: an access key, its secret, and a session token for temporary credentials.
public struct AWSCredentials: Sendable, Equatable {
    public var accessKeyId: String
    public var secretAccessKey: String
    public var sessionToken: String?

    public init(accessKeyId: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyId = accessKeyId
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }
}

/// AWS Signature Version 4 (no AWS SDK for Swift is in this machine's package copy): the canonical request, the
/// string to sign, the derived key and the `Authorization` header, as AWS documents them. Checked against AWS's
/// published test vectors (`SigV4Tests`).
public struct SigV4: Sendable {
    public var region: String
    public var service: String

    public init(region: String, service: String) {
        self.region = region
        self.service = service
    }

    /// A request to sign. `path` is as it goes on the wire (already encoded, `/` when empty); `query` holds the
    /// decoded parameters; `headers` are every header to sign (at least `host`), names in any case.
    public struct Request: Sendable {
        public var method: String
        public var path: String
        public var query: [(String, String)]
        public var headers: [(String, String)]
        public var body: Data

        public init(method: String, path: String, query: [(String, String)] = [], headers: [(String, String)], body: Data = Data()) {
            self.method = method
            self.path = path
            self.query = query
            self.headers = headers
            self.body = body
        }
    }

    /// `20150830T123600Z` for a time in milliseconds.
    public static func amzDate(_ millis: Millis) -> String {
        var seconds = time_t(millis / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(
            format: "%04d%02d%02dT%02d%02d%02dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
            Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
    }

    /// RFC 3986 percent-encoding of everything but the unreserved characters (`A-Z a-z 0-9 - _ . ~`), as SigV4 wants
    /// it (a space is `%20`, never `+`).
    public static func encode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case 0x41...0x5A, 0x61...0x7A, 0x30...0x39, 0x2D, 0x5F, 0x2E, 0x7E: out.unicodeScalars.append(UnicodeScalar(byte))
            default: out += String(format: "%%%02X", byte)
            }
        }
        return out
    }

    public static func hex(_ bytes: some Sequence<UInt8>) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    static func sha256Hex(_ data: Data) -> String { hex(SHA256.hash(data: data)) }

    /// The derived signing key: HMAC chain over the date, region, service and `aws4_request`.
    public static func signingKey(secret: String, date: String, region: String, service: String) -> [UInt8] {
        func hmac(_ key: [UInt8], _ text: String) -> [UInt8] {
            Array(HMAC<SHA256>.authenticationCode(for: Data(text.utf8), using: SymmetricKey(data: key)))
        }
        let kDate = hmac(Array("AWS4\(secret)".utf8), date)
        return hmac(hmac(hmac(kDate, region), service), "aws4_request")
    }

    /// The canonical request, and the signed header names (`;`-joined).
    public static func canonicalRequest(_ request: Request, payloadHash: String) -> (text: String, signedHeaders: String) {
        let pairs: [(key: String, value: String)] = request.query.map { (key: encode($0.0), value: encode($0.1)) }
        let sorted = pairs.sorted { left, right in left.key == right.key ? left.value < right.value : left.key < right.key }
        let query = sorted.map { "\($0.key)=\($0.value)" }.joined(separator: "&")
        var headers: [String: String] = [:]
        for (name, value) in request.headers {
            let trimmed = value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            let key = name.lowercased()
            headers[key] = headers[key].map { "\($0),\(trimmed)" } ?? trimmed
        }
        let names = headers.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(headers[$0]!)\n" }.joined()
        let signed = names.joined(separator: ";")
        let text = [request.method, request.path.isEmpty ? "/" : request.path, query, canonicalHeaders, signed, payloadHash]
            .joined(separator: "\n")
        return (text, signed)
    }

    /// The headers to add to `request` (which must hold `host`): `X-Amz-Date`, `X-Amz-Security-Token` for
    /// temporary credentials, and `Authorization`. `payloadHash` defaults to the body's SHA-256.
    public func sign(_ request: Request, credentials: AWSCredentials, at now: Millis, payloadHash: String? = nil) -> [(String, String)] {
        let amzDate = Self.amzDate(now)
        let date = String(amzDate.prefix(8))
        var request = request
        var added: [(String, String)] = [("X-Amz-Date", amzDate)]
        if let token = credentials.sessionToken { added.append(("X-Amz-Security-Token", token)) }
        request.headers += added
        let hash = payloadHash ?? Self.sha256Hex(request.body)
        let (canonical, signedHeaders) = Self.canonicalRequest(request, payloadHash: hash)
        let scope = "\(date)/\(region)/\(service)/aws4_request"
        let stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, Self.sha256Hex(Data(canonical.utf8))].joined(separator: "\n")
        let key = Self.signingKey(secret: credentials.secretAccessKey, date: date, region: region, service: service)
        let signature = Self.hex(HMAC<SHA256>.authenticationCode(for: Data(stringToSign.utf8), using: SymmetricKey(data: key)))
        added.append(
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyId)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
            ))
        return added
    }
}
