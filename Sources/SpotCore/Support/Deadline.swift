import Synchronization

/// `body`'s result, or `fallback` if it has not returned within `seconds` (then it is cancelled and left behind: the
/// caller does not wait for it). For calls to other servers, which an HTTP client's own timeout does not always end
/// (a body trickling in, a connection pool stuck).
func boundedCall<T: Sendable>(seconds: Double, fallback: T, _ body: @escaping @Sendable () async -> T) async -> T {
    let once = Once()
    return await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
        let timer = Mutex<Task<Void, Never>?>(nil)
        let work = Task {
            let value = await body()
            if once.first() {
                // The timer has nothing left to do: it does not sleep out its time.
                timer.withLock { $0?.cancel() }
                continuation.resume(returning: value)
            }
        }
        let sleeper = Task {
            try? await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
            if once.first() {
                work.cancel()
                continuation.resume(returning: fallback)
            }
        }
        timer.withLock { $0 = sleeper }
        // The work may have ended before the timer was stored.
        if !once.pending { sleeper.cancel() }
    }
}

/// True the first time only.
final class Once: Sendable {
    private let done = Mutex(false)

    /// Whether `first()` has not been called yet.
    var pending: Bool { done.withLock { !$0 } }

    func first() -> Bool {
        done.withLock { done in
            defer { done = true }
            return !done
        }
    }
}
