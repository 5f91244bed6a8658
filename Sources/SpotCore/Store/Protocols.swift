/// The store behind protocols shaped by what uses it: the API's resources, the event log, the tokens, and the
/// workflows. Each method is one transaction. `SpotStore` implements them all, on SQLite or PostgreSQL (the same
/// transactions, through `SQL.swift`); nothing outside `Store/` names it, but where the application is assembled.

/// The reads and writes behind the HTTP API's resources.
protocol ResourceStore: Sendable {
    // Pools and policies
    func createPool(_ pool: Pool, actor: String) async throws -> Pool
    func listPools(_ page: PageRequest) async throws -> Page<Pool>
    func pool(_ name: String) async throws -> Pool?
    func updatePool(_ name: String, _ patch: PoolPatch, actor: String) async throws -> Pool
    func deletePool(_ name: String, actor: String) async throws
    func poolStats() async throws -> [String: PoolStats]
    func policies() async throws -> [Policy]
    func putPolicy(_ policy: Policy, actor: String) async throws -> Policy

    // Nodes
    func registerNode(id: String, pool: String, gpus: Int?, provisioningRequestId: String?, actor: String) async throws -> NodeDetail
    func listNodes(_ filter: NodeFilter, _ page: PageRequest) async throws -> Page<NodeDetail>
    func node(_ id: String) async throws -> NodeDetail?
    func cordon(_ id: String, actor: String) async throws -> NodeDetail
    func uncordon(_ id: String, actor: String) async throws -> NodeDetail
    func drain(nodeId: String, deadline: Millis, actor: String) async throws -> (InterruptionDetail, Bool)
    func deleteNode(_ id: String, actor: String) async throws -> NodeDetail

    // Jobs and placements
    func submitJob(_ submission: JobSubmission, actor: String) async throws -> Job
    func listJobs(_ filter: JobFilter, _ page: PageRequest) async throws -> Page<Job>
    func job(_ id: String) async throws -> (Job, [Event])?
    func reportCheckpoint(jobId: String, uri: String, step: Int64, attempt: Int64?, actor: String) async throws -> Job
    func finishJob(_ jobId: String, outcome: JobOutcome, attempt: Int64?, reason: String?, actor: String) async throws -> Job
    func place(jobId: String, dryRun: Bool, actor: String) async throws -> PlacementResult

    // Inference services
    func createService(_ submission: ServiceSubmission, actor: String) async throws -> ServiceDetail
    func listServices(_ page: PageRequest) async throws -> Page<ServiceDetail>
    func service(_ id: String) async throws -> ServiceDetail?
    func updateService(_ id: String, _ patch: ServicePatch, actor: String) async throws -> ServiceDetail
    func deleteService(_ id: String, actor: String) async throws
    func replicaReady(service: String, replica: String, actor: String) async throws -> ServiceDetail

    // Interruptions and provisioning
    func recordNotices(_ notices: [Notice], ignored: [IgnoredNotice], replayKey: String?, actor: String) async throws -> NoticeOutcome
    func listInterruptions(_ filter: InterruptionFilter, _ page: PageRequest) async throws -> Page<InterruptionDetail>
    func interruption(_ id: String) async throws -> InterruptionDetail?
    func activeInterruptions(limit: Int, steps: Int) async throws -> (items: [InterruptionDetail], more: Bool)
    func listProvisioningRequests(state: ProvisioningState?, _ page: PageRequest) async throws -> Page<ProvisioningRequest>
    func provisioningRequest(_ id: String) async throws -> ProvisioningRequest?

    // Operations
    func summary() async throws -> StoreSummary
    func costReport(since: Millis, until: Millis) async throws -> CostReport
    func isReady() async -> Bool
    /// "sqlite" or "postgres".
    var kind: String { get }
}

/// The append-only event log, as the event list and the event streams read it.
protocol EventLog: Sendable {
    /// Events after `since` (an event id), optionally of one type, oldest first.
    func events(since: Int64, type: String?, limit: Int) async throws -> [Event]
    func lastEventId() async throws -> Int64
}

/// API tokens: what authentication and the token routes need.
protocol AccessStore: Sendable {
    func createToken(name: String, role: Role, actor: String) async throws -> (Token, String)
    func listTokens(_ page: PageRequest) async throws -> Page<Token>
    func revokeToken(_ id: String, actor: String) async throws
    /// The live token whose secret this is.
    func token(secret: String) async throws -> Token?
}

/// What the background workflows read and write. Each write takes the decision it applies as a pure function from
/// `Domain/`, and reads, decides and writes in one transaction.
///
/// The lease contract, which every implementation keeps:
/// - `acquireLease` returns the lease when `owner` holds it (taken, or renewed while unexpired), nil while another
///   live owner does. A renewal keeps the token; a new holder, or the same owner after its lease expired, gets the
///   previous token plus one. `releaseLease` expires the lease now and keeps the token.
/// - Every workflow write checks, in its own transaction, that its lease is still held, unexpired, with its token,
///   and commits nothing otherwise (`StoreError.fenced`). The check must be serialized with `acquireLease`: SQLite
///   has one writer; on PostgreSQL the check reads the lease row `FOR SHARE` (the lease itself is written on its
///   own connection, outside the store's write lock, so that its renewal never waits behind API writes).
protocol WorkflowStore: EventLog {
    func acquireLease(_ name: String, owner: String, ttlMillis: Millis) async throws -> Lease?
    func releaseLease(_ lease: Lease) async throws
    /// Whether `lease` is held now (a read; a write still checks for itself): a worker asks before a provider call.
    func holdsLease(_ lease: Lease) async throws -> Bool

    func startDrains(
        limit: Int, lease: Lease, actor: String, decide: @escaping @Sendable ([DrainCase], CapacityView, Millis) -> [DrainDecision]
    ) async throws -> DrainReport
    func expireCheckpoints(lease: Lease, actor: String, reason: @escaping @Sendable (Job) -> String) async throws -> Int
    func advanceInterruptions(
        lease: Lease, actor: String, close: @escaping @Sendable (InterruptionFacts, Millis) -> [Drain.CloseStep]
    ) async throws -> InterruptionStepsReport

    func pendingProvisioning() async throws -> [(ProvisioningRequest, Pool?)]
    func applyProvisioning(
        _ requestId: String, _ step: ProviderStep, maxAttempts: Int, lease: Lease, actor: String,
        fallback: @escaping @Sendable (_ lostPool: String, _ tried: Set<String>, CapacityView) -> Pool?
    ) async throws -> Bool
    func dueReleases(limit: Int) async throws -> [(NodeRelease, Pool?)]
    func applyRelease(_ nodeId: String, _ step: ReleaseStep, lease: Lease, actor: String) async throws -> Bool
    func ensureMinimums(lease: Lease, actor: String, decide: @escaping @Sendable ([FloorFacts]) -> [(pool: String, count: Int)])
        async throws -> Int
    func scaleDown(
        idleSeconds: Int64, lease: Lease, actor: String,
        decide: @escaping @Sendable ([IdleFallback], _ spotFree: [String: Int], _ liveNodes: [String: Int]) -> [String]
    ) async throws -> Int

    func placeQueued(
        limits: SchedulingLimits, lease: Lease, actor: String, makePlanner: @escaping @Sendable (SchedulingInput) -> SchedulingPlanner,
        protect: @escaping @Sendable (Job, Policy, [Placement.PreemptionSite], Millis) -> Placement.PreemptionChoice?
    ) async throws -> SchedulingReport

    func reconcileServices(lease: Lease, actor: String, plan: @escaping @Sendable (ServiceInput, Millis) -> ServicePlanner)
        async throws -> ServiceReport

    func planDemand(lease: Lease, actor: String, autoPlace: Bool, plan: @escaping @Sendable (DemandInput) -> DemandPlan)
        async throws -> DemandReport
    func releaseIdle(idleSeconds: Int64, lease: Lease, actor: String, decide: @escaping @Sendable ([IdleNode]) -> [(String, String)])
        async throws -> Int

    func pruneExpired(before cutoff: Millis, replaysBefore replayCutoff: Millis, batch: Int, lease: Lease) async throws -> PruneReport
}

/// Subscriptions: the API's resource, and the outbox the delivery loop reads (the event log) and moves through.
protocol SubscriptionStore: EventLog {
    func createSubscription(url: String, events: [EventPattern], format: Subscription.Format, actor: String) async throws -> Subscription
    func listSubscriptions(_ page: PageRequest) async throws -> Page<Subscription>
    func subscription(_ id: String) async throws -> Subscription?
    func deleteSubscription(_ id: String, actor: String) async throws
    func dueSubscriptions(now: Millis) async throws -> [Subscription]
    /// Under the worker lease (`StoreError.fenced` otherwise); false when the subscription is gone.
    @discardableResult
    func recordDelivery(_ id: String, _ outcome: DeliveryOutcome, lease: Lease) async throws -> Bool
}

/// Drills: notices spotd injects itself, a dry run's plan, and the report.
protocol DrillStore: Sendable {
    func startDrill(_ request: DrillRequest, actor: String) async throws -> Drill
    func planDrill(_ request: DrillRequest, decide: @escaping @Sendable ([DrainCase], CapacityView, Millis) -> [DrainDecision])
        async throws -> DrillPlan
    func listDrills(_ page: PageRequest) async throws -> Page<Drill>
    func drillReport(_ id: String) async throws -> DrillReport?
}

extension SpotStore: ResourceStore, AccessStore, WorkflowStore, SubscriptionStore, DrillStore {}
