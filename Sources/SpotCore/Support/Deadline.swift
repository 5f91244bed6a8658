import Synchronization

/// `body`'s result, or `fallback` if it has not returned within `seconds` (then it is cancelled and left behind: the
/// caller does not wait for it). For calls to other servers, which an HTTP client's own timeout does not always end
/// (a body trickling in, a connection pool stuck).
func boundedCall<T: Sendable>(seconds: Double, fallback: T, _ body: @escaping @Sendable () async -> T) async -> T {
    let once = Once()
    return await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
        let work = Task {
            let value = await body()
            if once.first() { continuation.resume(returning: value) }
        }
        Task {
            try? await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
            if once.first() {
                work.cancel()
                continuation.resume(returning: fallback)
            }
        }
    }
}

/// True the first time only.
final class Once: Sendable {
    private let done = Mutex(false)

    func first() -> Bool {
        done.withLock { done in
            defer { done = true }
            return !done
        }
    }
}
