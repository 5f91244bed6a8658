import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A small HTTP/1.1 load generator over plain sockets: one thread, `poll(2)`, keep-alive connections, requests
/// prepared as bytes. It is light on purpose: on a 2-core machine the client shares the CPU with the server, and
/// a heavy client (an NIO client per connection, as HummingbirdTesting's) would measure itself as much as spotd.
/// It understands exactly what spotd sends: responses with `Content-Length`.
enum LoadClient {
    /// A port the kernel says is free now (bound to port 0, then released); a random one could be some client's
    /// ephemeral port, or a previous run's still closing.
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        return withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw -> Int in
                guard bind(fd, raw, length) == 0, getsockname(fd, raw, &length) == 0 else { return Int.random(in: 20_000..<30_000) }
                return Int(UInt16(bigEndian: pointer.pointee.sin_port))
            }
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private final class Connection {
        let fd: Int32
        var output: [UInt8] = []
        var written = 0
        var input: [UInt8] = []
        var started: UInt64 = 0
        var busy = false

        init(fd: Int32) {
            self.fd = fd
        }
    }

    /// Opens `connections` sockets, then sends requests `make(0)`, `make(1)`, … as fast as they are answered, until
    /// `count` have been answered or `duration` seconds have passed. With `connections == count` every request is
    /// written before the first answer is read: a burst. With several `ports` (replicas), connections go round-robin.
    static func run(
        ports: [Int], connections: Int, count: Int?, duration: Double? = nil, make: (Int) -> (method: String, path: String, body: String?)
    ) throws -> LoadResult {
        var sockets: [Connection] = []
        defer { for connection in sockets { close(connection.fd) } }
        for index in 0..<connections { sockets.append(Connection(fd: try connect(port: ports[index % ports.count]))) }

        var next = 0
        var latencies: [Double] = []
        latencies.reserveCapacity(count ?? 100_000)
        var statuses: [Int: Int] = [:]
        let start = now()
        let deadline = duration.map { start + UInt64($0 * 1e9) }

        func issue(_ connection: Connection) {
            if let count, next >= count { return }
            if let deadline, now() >= deadline { return }
            let (method, path, body) = make(next)
            next += 1
            var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            if let body {
                text += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
            } else {
                text += "\r\n"
            }
            connection.output = Array(text.utf8)
            connection.written = 0
            connection.busy = true
            connection.started = now()
        }

        for connection in sockets { issue(connection) }
        for connection in sockets where connection.busy { try flush(connection) }

        var fds = [pollfd](repeating: pollfd(), count: sockets.count)
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while sockets.contains(where: \.busy) {
            for (index, connection) in sockets.enumerated() {
                let wantsWrite = connection.busy && connection.written < connection.output.count
                fds[index] = pollfd(fd: connection.fd, events: Int16(connection.busy ? (wantsWrite ? POLLOUT : POLLIN) : 0), revents: 0)
            }
            guard poll(&fds, nfds_t(fds.count), 30_000) > 0 else { throw Failure(description: "no answer within 30 s") }
            for (index, connection) in sockets.enumerated() where fds[index].revents != 0 {
                if connection.written < connection.output.count {
                    try flush(connection)
                    continue
                }
                let got = buffer.withUnsafeMutableBytes { read(connection.fd, $0.baseAddress, $0.count) }
                guard got > 0 else { throw Failure(description: "the server closed a connection (read returned \(got))") }
                connection.input.append(contentsOf: buffer[0..<got])
                while let (status, length) = try response(in: connection.input) {
                    connection.input.removeFirst(length)
                    latencies.append(Double(now() - connection.started) / 1e9)
                    statuses[status, default: 0] += 1
                    connection.busy = false
                    issue(connection)
                    if connection.busy { try flush(connection) }
                }
            }
        }
        return LoadResult(
            latencies: latencies, elapsed: Double(now() - start) / 1e9, statuses: statuses, firstSent: Double(start) / 1e9)
    }

    static func monotonicSeconds() -> Double { Double(now()) / 1e9 }

    private static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    private static func connect(port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket() failed: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            close(fd)
            throw Failure(description: "connect() failed: errno \(errno)")
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    private static func flush(_ connection: Connection) throws {
        while connection.written < connection.output.count {
            let sent = connection.output.withUnsafeBytes {
                write(connection.fd, $0.baseAddress! + connection.written, $0.count - connection.written)
            }
            if sent < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                throw Failure(description: "write() failed: errno \(errno)")
            }
            connection.written += sent
        }
    }

    /// The status and total length of the first complete response in `bytes`, or nil when it is still incomplete.
    private static func response(in bytes: [UInt8]) throws -> (Int, Int)? {
        guard bytes.count >= 12 else { return nil }
        var headerEnd: Int?
        var index = 3
        while index < bytes.count {
            if bytes[index] == 0x0A && bytes[index - 1] == 0x0D && bytes[index - 2] == 0x0A && bytes[index - 3] == 0x0D {
                headerEnd = index + 1
                break
            }
            index += 1
        }
        guard let headerEnd else { return nil }
        let head = String(decoding: bytes[0..<headerEnd], as: UTF8.self)
        let lines = head.split(separator: "\r\n")
        guard let statusLine = lines.first, statusLine.hasPrefix("HTTP/1.1 "),
            let status = Int(statusLine.dropFirst(9).prefix(3))
        else { throw Failure(description: "not an HTTP/1.1 response: \(head.prefix(80))") }
        guard
            let lengthLine = lines.first(where: { $0.lowercased().hasPrefix("content-length:") }),
            let length = Int(lengthLine.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces))
        else { throw Failure(description: "a response without Content-Length: \(head.prefix(200))") }
        return bytes.count >= headerEnd + length ? (status, headerEnd + length) : nil
    }
}
