-- Capacity that follows demand and never leaks (issue 14).

-- Provisioning requests: calls to the provider are retried with backoff (`attempts`, `next_attempt_at`,
-- `last_error`), and a request whose demand went away ends 'cancelled'. SQLite cannot change a CHECK constraint:
-- the table is rebuilt (nothing references it).
CREATE TABLE provisioning_requests_next (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    pool TEXT NOT NULL,
    reason TEXT NOT NULL,
    interruption_id TEXT REFERENCES interruptions(id),
    replaces_node_id TEXT,
    attempt_number INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL CHECK (state IN ('pending', 'fulfilled', 'failed', 'cancelled')),
    node_id TEXT,
    error TEXT,
    created_at INTEGER NOT NULL,
    submitted_at INTEGER,
    resolved_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error TEXT
);
INSERT INTO provisioning_requests_next (seq, id, pool, reason, interruption_id, replaces_node_id, attempt_number, state, node_id,
    error, created_at, submitted_at, resolved_at, attempts)
SELECT seq, id, pool, reason, interruption_id, replaces_node_id, attempt_number, state, node_id, error, created_at, submitted_at,
    resolved_at, CASE WHEN submitted_at IS NULL THEN 0 ELSE 1 END
FROM provisioning_requests;
DROP TABLE provisioning_requests;
ALTER TABLE provisioning_requests_next RENAME TO provisioning_requests;
CREATE UNIQUE INDEX provisioning_once_per_lost_node ON provisioning_requests(replaces_node_id, attempt_number)
    WHERE replaces_node_id IS NOT NULL;
CREATE INDEX provisioning_state ON provisioning_requests(state);
CREATE INDEX provisioning_resolved_at ON provisioning_requests(resolved_at) WHERE resolved_at IS NOT NULL;
CREATE INDEX provisioning_interruption ON provisioning_requests(interruption_id) WHERE interruption_id IS NOT NULL;

-- Nodes spotd gives back: asked of the provider until it acknowledges, with the same Idempotency-Key each time.
-- The node is terminated once the release is acknowledged (a reclaimed node is terminated at its deadline, and
-- its release is sent too). Rows stay while their node does (retention deletes them with it).
CREATE TABLE node_releases (
    node_id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    reason TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'acknowledged')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    acknowledged_at INTEGER
) WITHOUT ROWID;
CREATE INDEX node_releases_pending ON node_releases(next_attempt_at) WHERE state = 'pending';

-- The simulated provider's cloud: every instance it launched, or that was registered while it is the provider,
-- until it is released. Tests count the live ones against the live nodes.
CREATE TABLE sim_instances (
    id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    launched_at INTEGER NOT NULL,
    released_at INTEGER
) WITHOUT ROWID;

-- Why a queued job waits, one sentence, written by the demand pass when it changes.
ALTER TABLE jobs ADD COLUMN pending_reason TEXT;

-- Usage rolled up per hour (start of the hour, ms), per pool and tier ('' for the pool's own rows: node time and
-- notices). Retention never deletes it, so the cost report can cover any period. Open intervals (live nodes,
-- running work) are added at report time from the live rows.
CREATE TABLE usage_hourly (
    hour INTEGER NOT NULL,
    pool TEXT NOT NULL,
    tier TEXT NOT NULL,
    node_ms INTEGER NOT NULL DEFAULT 0,
    gpu_ms INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    interruptions INTEGER NOT NULL DEFAULT 0,
    lost_gpu_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, pool, tier)
) WITHOUT ROWID;

-- When a replica got its node (its GPU time counts from then).
ALTER TABLE service_replicas ADD COLUMN started_at INTEGER;
