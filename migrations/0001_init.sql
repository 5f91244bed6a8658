-- spotd schema, version 1. Never edit a shipped migration: add a new file.
-- Times are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE pools (
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    capacity_type TEXT NOT NULL CHECK (capacity_type IN ('spot', 'on_demand', 'reserved')),
    gpu_type TEXT NOT NULL,
    gpus_per_node INTEGER NOT NULL CHECK (gpus_per_node BETWEEN 1 AND 64),
    zone TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    hourly_price REAL NOT NULL CHECK (hourly_price >= 0),
    min_nodes INTEGER NOT NULL DEFAULT 0 CHECK (min_nodes >= 0),
    max_nodes INTEGER NOT NULL CHECK (max_nodes >= min_nodes),
    stockout INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE nodes (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    pool TEXT NOT NULL,
    gpus INTEGER NOT NULL CHECK (gpus BETWEEN 1 AND 64),
    gpus_allocated INTEGER NOT NULL DEFAULT 0 CHECK (gpus_allocated >= 0 AND gpus_allocated <= gpus),
    state TEXT NOT NULL CHECK (state IN ('provisioning', 'ready', 'cordoned', 'draining', 'drained', 'terminated')),
    provisioning_request_id TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    idle_since INTEGER,
    terminated_at INTEGER
);
CREATE INDEX nodes_pool_state ON nodes(pool, state);
CREATE INDEX nodes_state ON nodes(state);

CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tier TEXT NOT NULL CHECK (tier IN ('premium', 'standard', 'best_effort')),
    gpus INTEGER NOT NULL CHECK (gpus BETWEEN 1 AND 64),
    gpu_type TEXT,
    checkpointable INTEGER NOT NULL,
    expected_duration_seconds INTEGER,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'checkpointing', 'completed', 'failed', 'cancelled')),
    node_id TEXT REFERENCES nodes(id),
    attempt INTEGER NOT NULL DEFAULT 0,
    requeue_count INTEGER NOT NULL DEFAULT 0,
    last_checkpoint_uri TEXT,
    last_checkpoint_step INTEGER,
    last_checkpoint_at INTEGER,
    resume_from_uri TEXT,
    resume_from_step INTEGER,
    resume_from_at INTEGER,
    checkpoint_deadline INTEGER,
    preempted_for TEXT,
    submitted_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    CHECK ((state IN ('running', 'checkpointing')) = (node_id IS NOT NULL))
);
CREATE INDEX jobs_state_order ON jobs(state, tier, priority, seq);
CREATE INDEX jobs_node ON jobs(node_id) WHERE node_id IS NOT NULL;
CREATE INDEX jobs_checkpoint_deadline ON jobs(checkpoint_deadline) WHERE state = 'checkpointing';

CREATE TABLE interruptions (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    node_id TEXT NOT NULL,
    pool TEXT,
    kind TEXT NOT NULL CHECK (kind IN ('termination', 'rebalance')),
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('received', 'draining', 'drained', 'completed', 'unmatched')),
    deadline INTEGER,
    received_at INTEGER NOT NULL,
    completed_at INTEGER,
    node_was_live INTEGER NOT NULL DEFAULT 1,
    UNIQUE (source, event_id, node_id)
);
-- At most one termination per known node: a second notice returns the first.
CREATE UNIQUE INDEX interruptions_one_termination ON interruptions(node_id)
    WHERE kind = 'termination' AND state <> 'unmatched';
CREATE INDEX interruptions_state ON interruptions(state);
CREATE INDEX interruptions_pool_time ON interruptions(pool, received_at);

CREATE TABLE interruption_steps (
    seq INTEGER PRIMARY KEY,
    interruption_id TEXT NOT NULL REFERENCES interruptions(id),
    step TEXT NOT NULL,
    at INTEGER NOT NULL,
    job_id TEXT,
    detail TEXT
);
CREATE INDEX interruption_steps_owner ON interruption_steps(interruption_id, seq);

CREATE TABLE provisioning_requests (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    pool TEXT NOT NULL,
    reason TEXT NOT NULL,
    interruption_id TEXT REFERENCES interruptions(id),
    replaces_node_id TEXT,
    attempt_number INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL CHECK (state IN ('pending', 'fulfilled', 'failed')),
    node_id TEXT,
    error TEXT,
    created_at INTEGER NOT NULL,
    submitted_at INTEGER,
    resolved_at INTEGER
);
-- Exactly one replacement (and one fallback after it) per lost node.
CREATE UNIQUE INDEX provisioning_once_per_lost_node ON provisioning_requests(replaces_node_id, attempt_number)
    WHERE replaces_node_id IS NOT NULL;
CREATE INDEX provisioning_state ON provisioning_requests(state);

CREATE TABLE policies (
    tier TEXT PRIMARY KEY CHECK (tier IN ('premium', 'standard', 'best_effort')),
    capacity_types TEXT NOT NULL,
    max_uncheckpointable_spot_seconds INTEGER NOT NULL,
    spot_requires_checkpointable INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    type TEXT NOT NULL,
    subject TEXT NOT NULL,
    actor TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_type ON events(type, id);
CREATE INDEX events_subject ON events(subject, id);

CREATE TABLE tokens (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'scheduler', 'notifier', 'viewer')),
    secret_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- Work leases: which process runs the background workflows.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
