import Crypto
import Foundation

/// HMAC-SHA256 signatures over `"<timestamp>.<raw body>"`: inbound notices and outbound provider calls.
enum Signature {
    /// A timestamp further than this from now is refused (stale or from a wrong clock).
    static let maxSkewSeconds: Int64 = 300

    static func hex(secret: String, timestamp: String, body: Data) -> String {
        Hex.encode(mac(secret: secret, timestamp: timestamp, body: body))
    }

    private static func mac(secret: String, timestamp: String, body: Data) -> HashedAuthenticationCode<SHA256> {
        var message = Data(timestamp.utf8)
        message.append(0x2E)
        message.append(body)
        return HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: Data(secret.utf8)))
    }

    /// Whether a signature header has the right shape: `sha256=` and 64 hex digits.
    static func wellFormed(_ signature: String) -> Bool {
        signature.hasPrefix("sha256=") && Data(hexString: String(signature.dropFirst(7)))?.count == 32
    }

    enum Verdict: Equatable {
        /// Valid; `digest` is the signature in lowercase hex, which identifies this exact signed request (replays).
        case valid(digest: String)
        case refused(String)
    }

    /// Checks a signature in constant time. The timestamp is plain decimal unix seconds (no sign, no leading zero,
    /// at most 18 digits), so it is range-checked before any arithmetic.
    static func verify(secret: String, timestamp: String?, signature: String?, body: Data, now: Millis) -> Verdict {
        guard let timestamp, let seconds = StrictInteger.parse(timestamp) else {
            return .refused("X-Spotd-Timestamp is missing or not unix seconds (decimal digits, no sign, no leading zero)")
        }
        guard let signature, wellFormed(signature), let given = Data(hexString: String(signature.dropFirst(7))) else {
            return .refused("X-Spotd-Signature is missing or not sha256= and 64 hex digits")
        }
        // `seconds` is below 10^18 and `now / 1000` near 2 * 10^9: the difference cannot overflow.
        guard abs(now / 1000 - seconds) <= maxSkewSeconds else { return .refused("X-Spotd-Timestamp is more than 5 minutes from now") }
        var message = Data(timestamp.utf8)
        message.append(0x2E)
        message.append(body)
        guard HMAC<SHA256>.isValidAuthenticationCode(given, authenticating: message, using: SymmetricKey(data: Data(secret.utf8)))
        else { return .refused("X-Spotd-Signature does not match the body") }
        return .valid(digest: Hex.encode(given))
    }
}
