/// The values the store protocols take and return, apart from the models of `Domain/`: no GRDB in them, so that a
/// second store implementation needs nothing of the first.

/// What a drain pass did; used by metrics, logs and tests.
struct DrainReport: Sendable, Equatable {
    var drainsStarted = 0
    var checkpointsRequested = 0
    var requeued = 0
    var provisioningRequested = 0
    /// More terminations were waiting than one pass takes: run the next pass at once.
    var moreWaiting = false
}

/// What closing interruptions did in one pass.
struct InterruptionStepsReport: Sendable, Equatable {
    var nodesTerminated = 0
    var nodesDrained = 0
    var interruptionsCompleted = 0
    var drainDurations: [Double] = []
}

/// Limits of one pass of the scheduling loop.
struct SchedulingLimits: Sendable {
    /// Most jobs one pass places: the single writer is never held long (notices and API calls interleave).
    var maxPlacements = 1000
    /// The queue is read a page at a time...
    var pageSize = 2000
    /// ...up to this many pages, so that a head that fits nowhere does not starve the jobs behind it.
    var maxPages = 10
}

/// What a pass of the scheduling loop did.
struct SchedulingReport: Sendable, Equatable {
    var placed = 0
    /// The newest event id when the pass started: a later event (a new job, a freed GPU) is something to look at.
    var seenEventId: Int64 = 0
    /// The pass stopped at its limit with more to place: run the next at once.
    var more = false
}

/// What one retention pass removed.
struct PruneReport: Sendable, Equatable {
    var events = 0
    var jobs = 0
    var interruptions = 0
    var provisioningRequests = 0
    var nodes = 0
    var replays = 0
    var replicas = 0
    /// Acknowledged releases, and instances the simulated cloud released.
    var releases = 0
    var drills = 0

    var total: Int { events + jobs + interruptions + provisioningRequests + nodes + replays + replicas + releases + drills }
}

/// What a provider did with a pending request.
public enum ProviderStep: Sendable, Equatable {
    case wait
    /// The request was handed to an external provisioner.
    case submitted
    /// The provider made a node; spotd registers it.
    case fulfilled(nodeId: String, gpus: Int)
    /// For good: the fallback, if any, starts.
    case failed(String)
    /// This call failed (a timeout, a transport error, a 5xx): tried again after a backoff, until the retries run out.
    case retry(String)
}
