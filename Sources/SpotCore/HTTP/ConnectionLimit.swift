import Foundation
import Logging
import NIOCore
import NIOHTTPTypes
import Synchronization

/// Open connections, over the whole server, against a cap below the process's file limit: past the cap a new
/// connection is closed at once, so that idle or slow clients cannot use up the descriptors the server needs.
public final class ConnectionLimiter: Sendable {
    let limit: Int
    private let open = Atomic<Int>(0)
    /// When a refusal was last logged (uptime ns): one line per 10 s, not one per connection.
    private let lastWarning = Atomic<UInt64>(0)
    private let logger: Logger

    init(limit: Int, logger: Logger) {
        self.limit = limit
        self.logger = logger
    }

    var count: Int { open.load(ordering: .relaxed) }

    /// Counts a new connection in; false (and not counted) when the server is at its cap.
    func admit() -> Bool {
        var current = open.load(ordering: .relaxed)
        while current < limit {
            let (exchanged, original) = open.compareExchange(
                expected: current, desired: current + 1, successOrdering: .acquiring, failureOrdering: .relaxed)
            if exchanged { return true }
            current = original
        }
        let now = DispatchTime.now().uptimeNanoseconds
        let last = lastWarning.load(ordering: .relaxed)
        if now &- last > 10_000_000_000, lastWarning.compareExchange(expected: last, desired: now, ordering: .relaxed).exchanged {
            logger.warning("connection limit reached: new connections are closed", metadata: ["limit": "\(limit)"])
        }
        return false
    }

    func release() { open.subtract(1, ordering: .releasing) }

    /// The default cap: 10,000, or less when the process may open fewer files (256 are kept for the store and logs).
    public static func defaultLimit() -> Int {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 else { return 1000 }
        let soft = limits.rlim_cur == rlim_t.max ? UInt64(1 << 20) : UInt64(limits.rlim_cur)
        return Int(min(10_000, max(64, soft > 256 ? soft - 256 : 64)))
    }

    /// Raises the soft file limit to the hard one, as servers do at start (the default soft limit is often 1,024).
    public static func raiseFileLimit() {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0, limits.rlim_cur < limits.rlim_max else { return }
        limits.rlim_cur = min(limits.rlim_max, 1 << 20)
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits)
    }
}

/// Counts each connection against the server's `ConnectionLimiter`, closing it at once when the server is full.
final class ConnectionLimitHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    let limiter: ConnectionLimiter
    private var counted = false

    init(limiter: ConnectionLimiter) {
        self.limiter = limiter
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if limiter.admit() {
            counted = true
        } else {
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        release()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        release()
    }

    private func release() {
        if counted {
            counted = false
            limiter.release()
        }
    }
}
