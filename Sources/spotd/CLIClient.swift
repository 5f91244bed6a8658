import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import SpotCore

// MARK: - Failures and exit codes

/// Why a CLI command failed, in words, with the exit code a script can test.
struct CLIFailure: Error {
    enum Kind: Int32 {
        /// The server refused the request (a 4xx other than 401/403: not found, invalid, conflict).
        case refused = 1
        /// Bad flags, arguments or settings (`SPOTD_URL`, `SPOTD_TOKEN`).
        case usage = 2
        /// The server could not be reached, did not answer in time, failed (5xx) or answered what cannot be read.
        case unreachable = 3
        /// Authentication or permission (401/403).
        case auth = 4
    }

    var kind: Kind
    var message: String

    init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// The exit codes, for each command's help.
    static let exitCodes = """
        Reads SPOTD_URL (default http://127.0.0.1:8080) and SPOTD_TOKEN; --url and --token override them.

        Exit codes:
          0  done
          1  the server refused the request (not found, invalid, conflict)
          2  usage error (bad flags or arguments, SPOTD_URL, SPOTD_TOKEN)
          3  cannot reach the server, or it failed (5xx, timeout, an answer not JSON)
          4  authentication or permission (401, 403)
        Errors go to standard error, as `spotd: <what went wrong>`.
        """
}

// MARK: - Options every CLI verb takes

/// How the CLI prints what the server answers.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table
    case json
}

/// Where the server is, who calls it, and how to print the answer.
struct ClientOptions: ParsableArguments {
    @Option(help: "spotd's URL (env SPOTD_URL; default http://127.0.0.1:8080).") var url: String?
    @Option(help: "API token, sent as a bearer token (env SPOTD_TOKEN; default none).") var token: String?
    @Option(
        name: [.short, .customLong("output")],
        help: "table (for people) or json (the server's JSON, for scripts) (env SPOTD_OUTPUT; default table).")
    var outputFlag: OutputFormat?

    /// The flag, else `SPOTD_OUTPUT`, else a table (a wrong `SPOTD_OUTPUT` is refused by `resolve`).
    var output: OutputFormat { outputFlag ?? env("SPOTD_OUTPUT").flatMap { OutputFormat(rawValue: $0) } ?? .table }

    static let defaultURL = "http://127.0.0.1:8080"

    /// The server's base URL (no trailing slash) and the token, from the flags or the environment.
    func resolve() throws -> (base: String, token: String?) {
        let (text, source) = url.map { ($0, "--url \($0)") } ?? env("SPOTD_URL").map { ($0, "SPOTD_URL=\($0)") } ?? (Self.defaultURL, "")
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty, components.query == nil,
            components.fragment == nil
        else {
            throw CLIFailure(.usage, "\(Render.clean(source)) is not an http(s) URL (e.g. \(Self.defaultURL))")
        }
        if outputFlag == nil, let variable = env("SPOTD_OUTPUT"), OutputFormat(rawValue: variable) == nil {
            throw CLIFailure(.usage, "SPOTD_OUTPUT=\(Render.clean(variable)) must be table or json")
        }
        var base = text
        while base.hasSuffix("/") { base.removeLast() }
        let token = token ?? env("SPOTD_TOKEN")
        if let token {
            let name = self.token != nil ? "--token" : "SPOTD_TOKEN"
            guard !token.isEmpty, token.utf8.count <= 512, token.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F })
            else {
                throw CLIFailure(.usage, "\(name) must be 1 to 512 printable ASCII characters, no spaces or newlines")
            }
        }
        return (base, token)
    }

    /// Runs `body` with a client for the server these options name, then shuts the client down; a failure is printed
    /// to standard error and becomes the exit code.
    func run(_ body: (SpotdClient) async throws -> Void) async throws {
        do {
            let (base, token) = try resolve()
            let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: SpotdClient.configuration)
            var failure: (any Error)?
            do {
                try await body(SpotdClient(base: base, token: token, http: http))
            } catch {
                failure = error
            }
            try? await http.shutdown()
            if let failure { throw failure }
        } catch let failure as CLIFailure {
            CLIOutput.note(failure.message)
            throw ExitCode(failure.kind.rawValue)
        } catch let error as ExitCode {
            throw error
        } catch {
            CLIOutput.note(Render.clean(String(describing: error)))
            throw ExitCode(CLIFailure.Kind.unreachable.rawValue)
        }
    }
}

// MARK: - The HTTP helper

/// What a call does, for messages: `cordon` `node n1`.
struct Target {
    var verb: String
    var subject: String
}

/// One HTTP client for the CLI: JSON in and out, every answer checked, every failure in words.
struct SpotdClient {
    let base: String
    let token: String?
    let http: HTTPClient

    static let timeout: TimeAmount = .seconds(30)
    /// The longest answer read (a 1000-item page of interruptions with their timelines is a few MiB).
    static let maxAnswerBytes = 64 << 20

    static var configuration: HTTPClient.Configuration {
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .disallow, timeout: .init(connect: .seconds(10), read: timeout))
        // A refused connection fails at once (the default retries until the deadline: 30 s of nothing).
        configuration.connectionPool.retryConnectionEstablishment = false
        return configuration
    }

    /// A server answer: its status, its bytes and its JSON.
    struct Answer {
        var status: Int
        var bytes: [UInt8]
        var json: JSONValue
    }

    /// Sends a request and returns a 2xx answer read as JSON; anything else is a `CLIFailure` naming the problem.
    func send(_ method: HTTPMethod, _ path: String, body: JSONValue? = nil, _ target: Target) async throws -> Answer {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: "spotd-cli/\(SpotVersion.current)")
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body.serialized))
        }
        let call = "\(method.rawValue) \(path)"
        let status: Int
        let bytes: [UInt8]
        do {
            // The whole exchange within the timeout, the body too: a server that trickles its answer a byte at a time
            // (each byte resets the client's read timeout) must not hold the CLI.
            let http = self.http
            let prepared = request
            (status, bytes) = try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { group in
                group.addTask {
                    let response = try await http.execute(prepared, timeout: Self.timeout)
                    return (Int(response.status.code), Array(buffer: try await response.body.collect(upTo: Self.maxAnswerBytes)))
                }
                group.addTask {
                    try await Task.sleep(for: .seconds(Self.timeout.nanoseconds / 1_000_000_000))
                    throw CLIFailure(
                        .unreachable, "no whole answer to \(call) from \(base) within \(Self.timeout.nanoseconds / 1_000_000_000) s")
                }
                defer { group.cancelAll() }
                return try await group.next()!
            }
        } catch let failure as CLIFailure {
            throw failure
        } catch let error as NIOTooManyBytesError {
            _ = error
            throw CLIFailure(.unreachable, "the answer to \(call) is larger than \(Self.maxAnswerBytes >> 20) MiB")
        } catch {
            throw unreachable(error, call: call)
        }
        guard (200..<300).contains(status) else { throw refusal(status: status, bytes: bytes, target, call: call) }
        switch JSONValue.read(bytes, subject: "the answer to \(call)") {
        case .success(let json): return Answer(status: status, bytes: bytes, json: json)
        case .failure(let error): throw CLIFailure(.unreachable, "\(error.description); is \(base) spotd?")
        }
    }

    /// Every item of a list, following `next_cursor`, up to `limit`; `more` says whether the server has more.
    func list(_ path: String, query: [String: String] = [:], limit: Int, pageSize: Int = 1000, _ target: Target) async throws -> (
        items: [JSONValue], more: Bool
    ) {
        var items: [JSONValue] = []
        var cursor: String?
        var seen: Set<String> = []
        while items.count < limit {
            var parameters = query
            parameters["limit"] = String(min(pageSize, limit - items.count))
            if let cursor { parameters["cursor"] = cursor }
            let answer = try await send(.GET, path + "?" + Self.query(parameters), target)
            guard case .array(let page)? = answer.json.field("items") else {
                throw CLIFailure(.unreachable, "the answer to GET \(path) has no items list; is \(base) spotd?")
            }
            items.append(contentsOf: page.prefix(limit - items.count))
            guard case .string(let next)? = answer.json.field("next_cursor") else { return (items, false) }
            guard !page.isEmpty, seen.insert(next).inserted else {
                throw CLIFailure(.unreachable, "the pages of GET \(path) do not advance (cursor \(Render.clean(next)) again)")
            }
            cursor = next
        }
        return (items, true)
    }

    /// A path segment, percent-encoded.
    static func segment(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: unreserved) ?? text
    }

    static let unreserved = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")

    static func query(_ parameters: [String: String]) -> String {
        parameters.sorted { $0.key < $1.key }.map { "\($0.key)=\(segment($0.value))" }.joined(separator: "&")
    }

    // MARK: - Failures in words

    /// A non-2xx answer as a failure: the problem's detail, and the exit code of its class.
    func refusal(status: Int, bytes: [UInt8], _ target: Target, call: String) -> CLIFailure {
        let problem = try? JSONValue.read(bytes, subject: "problem").get()
        let title = problem?.field("title")?.text.map(Render.clean)?.lowercased()
        let type = problem?.field("type")?.text
        var detail = problem?.field("detail")?.text.map(Render.clean)
        if problem == nil, !bytes.isEmpty {
            // Not problem+json (a proxy's page, say): its first line, so that the reader sees who answered.
            let text = String(decoding: bytes.prefix(200), as: UTF8.self)
            detail = text.split(whereSeparator: \.isNewline).first.map { Render.clean(String($0)) }
        }
        let suffix = detail.map { ": \($0)" } ?? ""
        let code = "\(status)\(title.map { " \($0)" } ?? "")"
        switch status {
        case 401:
            let hint = token == nil ? "no token was given: set SPOTD_TOKEN or --token" : "check SPOTD_TOKEN or --token"
            return CLIFailure(.auth, "not authenticated (401)\(suffix); \(hint)")
        case 403:
            return CLIFailure(.auth, "forbidden (403)\(suffix); use a token whose role may \(target.verb) \(target.subject)")
        case 404 where type == "urn:spotd:problem:no-route":
            return CLIFailure(
                .refused, "the server has no route for \(call) (404); is \(base) spotd's URL (no path), and is spotd up to date?")
        case 404:
            return CLIFailure(.refused, "\(target.subject) not found (404)\(suffix)")
        case 400..<500:
            return CLIFailure(.refused, "cannot \(target.verb) \(target.subject) (\(code))\(suffix)")
        case 500..<600:
            return CLIFailure(.unreachable, "the server failed to \(target.verb) \(target.subject) (\(code))\(suffix)")
        default:
            return CLIFailure(.unreachable, "unexpected answer \(status) to \(call)\(suffix)")
        }
    }

    /// A failure to get an answer at all, in words.
    func unreachable(_ error: any Error, call: String) -> CLIFailure {
        let hint = "is spotd serve running? set SPOTD_URL or --url"
        if let error = error as? HTTPClientError {
            switch error {
            case .deadlineExceeded, .readTimeout:
                return CLIFailure(.unreachable, "\(base) did not answer \(call) within \(Self.timeout.nanoseconds / 1_000_000_000) s")
            case .connectTimeout: return CLIFailure(.unreachable, "cannot reach \(base) (connect timed out); \(hint)")
            case .remoteConnectionClosed:
                return CLIFailure(.unreachable, "\(base) closed the connection before answering \(call); is it spotd?")
            default: break
            }
        }
        return CLIFailure(.unreachable, "cannot reach \(base) (\(Self.reason(error))); \(hint)")
    }

    /// The system's reason for a connection failure (`connection refused`), else the error as text.
    static func reason(_ error: any Error) -> String {
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        let text = String(describing: error)
        for (needle, reason) in [
            ("connectionRefused", "connection refused"), ("Connection refused", "connection refused"),
            ("UnknownHost", "the host name does not resolve"), ("dnsAError", "the host name does not resolve"),
            ("handshakeFailed", "the TLS handshake failed; does it serve https?"),
        ] where text.contains(needle) {
            return reason
        }
        return Render.clean(String(text.prefix(300)))
    }
}

extension JSONValue {
    /// The member `key` of an object; nil for anything else.
    func field(_ key: String) -> JSONValue? {
        if case .object(let fields) = self { return fields[key] }
        return nil
    }

    /// The string, when this is one.
    var text: String? { if case .string(let text) = self { return text } else { return nil } }
}
