/// Why the store refused a change. The store speaks only these; the HTTP layer maps each to a problem.
public enum StoreError: Error, Equatable, Sendable {
    /// The thing named does not exist.
    case notFound(what: String, id: String)
    /// A duplicate, or a state the change does not apply to.
    case conflict(String)
    /// A report for an attempt that is no longer the job's current one.
    case staleAttempt(String)
    /// A field names something that does not exist.
    case unknownReference(field: String, what: String, id: String)
    /// A field breaks a rule the schema cannot express.
    case unprocessable(field: String, String)
    /// No capacity for a job; why, pool by pool.
    case noCapacity(String, reasons: [String: String])
    /// This process no longer holds the worker lease: a workflow write was refused.
    case fenced
    /// The database cannot be reached (PostgreSQL restarting, say): nothing was changed; try again shortly.
    case unavailable(String)
}
