/// Subscriptions: the event log is their outbox, each holds a cursor into it.
extension SpotStore {
    static let subscriptionColumns = """
        seq, id, url, events, format, secret, cursor, delivered, attempts, next_attempt_at, last_attempt_at, last_status, last_error,
        last_delivered_at, created_at, created_by
        """

    static func subscription(_ row: Row) -> Subscription {
        Subscription(
            id: row["id"], url: row["url"],
            events: (row["events"] as String).split(separator: ",").compactMap { EventPattern(String($0)) },
            format: Subscription.Format(rawValue: row["format"]) ?? .json, secret: row["secret"], cursor: row["cursor"],
            delivered: row["delivered"], attempts: row["attempts"], nextAttemptAt: row["next_attempt_at"],
            lastAttemptAt: row["last_attempt_at"], lastStatus: row["last_status"], lastError: row["last_error"],
            lastDeliveredAt: row["last_delivered_at"], createdAt: row["created_at"], createdBy: row["created_by"])
    }

    /// A new subscription, delivering what is committed after it (its cursor is the newest event now).
    func createSubscription(url: String, events: [EventPattern], format: Subscription.Format, actor: String) async throws
        -> Subscription
    {
        try await write { [self] db in
            let now = clock.now()
            let count = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM subscriptions") ?? 0
            guard count < Self.maxSubscriptions else {
                throw StoreError.conflict("at most \(Self.maxSubscriptions) subscriptions may exist; delete one first")
            }
            let cursor = try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(id), 0) FROM events") ?? 0
            let subscription = Subscription(
                id: Ids.new("sub"), url: url, events: events, format: format, secret: "whsec_" + Ids.secret(), cursor: cursor,
                delivered: 0, attempts: 0, nextAttemptAt: 0, createdAt: now, createdBy: actor)
            try db.execute(
                sql: """
                    INSERT INTO subscriptions (id, url, events, format, secret, cursor, created_at, created_by)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    subscription.id, url, events.map(\.text).joined(separator: ","), format.rawValue, subscription.secret, cursor, now,
                    actor,
                ])
            try db.appendEvent(
                "subscription.created", subject: "subscriptions/\(subscription.id)", actor: actor, at: now,
                data: [
                    "url": .string(subscription.redactedURL), "events": .array(events.map { .string($0.text) }),
                    "format": .string(format.rawValue),
                ])
            // What it delivers starts after its own creation.
            let created = try Int64.fetchOne(db, sql: "SELECT MAX(id) FROM events") ?? cursor
            try db.execute(sql: "UPDATE subscriptions SET cursor = ? WHERE id = ?", arguments: [created, subscription.id])
            var result = subscription
            result.cursor = created
            return result
        }
    }

    static let maxSubscriptions = 100

    func listSubscriptions(_ page: PageRequest) async throws -> Page<Subscription> {
        try await read { db in
            Self.page(
                try Row.fetchAll(
                    db, sql: "SELECT \(Self.subscriptionColumns) FROM subscriptions WHERE seq > ? ORDER BY seq LIMIT ?",
                    arguments: [page.after, page.limit + 1]), limit: page.limit, map: Self.subscription)
        }
    }

    func subscription(_ id: String) async throws -> Subscription? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT \(Self.subscriptionColumns) FROM subscriptions WHERE id = ?", arguments: [id])
                .map(Self.subscription)
        }
    }

    func deleteSubscription(_ id: String, actor: String) async throws {
        try await write { [self] db in
            try db.execute(sql: "DELETE FROM subscriptions WHERE id = ?", arguments: [id])
            guard db.changesCount == 1 else { throw StoreError.notFound(what: "subscription", id: id) }
            try db.appendEvent("subscription.deleted", subject: "subscriptions/\(id)", actor: actor, at: clock.now(), data: [:])
        }
    }

    /// Subscriptions whose next try is due.
    func dueSubscriptions(now: Millis) async throws -> [Subscription] {
        try await read { db in
            try Row.fetchAll(
                db, sql: "SELECT \(Self.subscriptionColumns) FROM subscriptions WHERE next_attempt_at <= ? ORDER BY seq",
                arguments: [now]
            ).map(Self.subscription)
        }
    }

    /// Records a delivery's outcome under the worker lease: the cursor moves to `cursor` (events up to it are dealt
    /// with), and a failure schedules the next try. False when the subscription is gone (deleted meanwhile).
    @discardableResult
    func recordDelivery(_ id: String, _ outcome: DeliveryOutcome, lease: Lease) async throws -> Bool {
        try await write { [self] db in
            let now = clock.now()
            try Self.checkFence(db, lease, now: now)
            switch outcome {
            case .passed(let cursor):
                try db.execute(sql: "UPDATE subscriptions SET cursor = MAX(cursor, ?) WHERE id = ?", arguments: [cursor, id])
            case .delivered(let cursor, let status):
                try db.execute(
                    sql: """
                        UPDATE subscriptions SET cursor = MAX(cursor, ?), delivered = delivered + 1, attempts = 0, next_attempt_at = 0,
                            last_attempt_at = ?, last_status = ?, last_error = NULL, last_delivered_at = ?
                        WHERE id = ?
                        """, arguments: [cursor, now, status, now, id])
            case .failed(let status, let error):
                let attempts = (try Int64.fetchOne(db, sql: "SELECT attempts FROM subscriptions WHERE id = ?", arguments: [id]) ?? 0) + 1
                try db.execute(
                    sql: """
                        UPDATE subscriptions SET attempts = ?, next_attempt_at = ?, last_attempt_at = ?, last_status = ?, last_error = ?
                        WHERE id = ?
                        """,
                    arguments: [attempts, now + Deliveries.retryDelay(afterAttempt: attempts), now, status, String(error.prefix(512)), id])
            }
            return db.changesCount > 0
        }
    }

    static func failingSubscriptions(_ db: Database) throws -> Int {
        try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM subscriptions WHERE attempts > 0") ?? 0
    }
}

/// What became of a delivery.
enum DeliveryOutcome: Sendable, Equatable {
    /// Events up to `cursor` did not match: nothing to send.
    case passed(cursor: Int64)
    /// The event `cursor` was delivered (the receiver answered `status`, 2xx).
    case delivered(cursor: Int64, status: Int)
    /// The receiver answered `status` (nil: no answer) or could not be reached.
    case failed(status: Int?, error: String)
}
