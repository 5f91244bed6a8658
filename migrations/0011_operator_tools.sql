-- Operator tools (issue 17): subscriptions and drills; and the node agent's role.

-- The `agent` role (PRODUCT.md, roles for part two): a node agent posts notices, reads nodes and jobs, and reports
-- checkpoints, completions, failures and replica readiness. SQLite cannot change a CHECK constraint: the table is
-- rebuilt, its rows, ids and sequence numbers kept.
CREATE TABLE tokens_next (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'scheduler', 'notifier', 'viewer', 'agent')),
    secret_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
INSERT INTO tokens_next (seq, id, name, role, secret_hash, created_at, revoked_at)
SELECT seq, id, name, role, secret_hash, created_at, revoked_at FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_next RENAME TO tokens;
CREATE UNIQUE INDEX tokens_name ON tokens(name COLLATE NOCASE);

-- A subscription delivers matching events to a URL, in event order, at least once. The event log is its outbox:
-- `cursor` is the id of the last event it has dealt with (delivered, or skipped as not matching), moved on only
-- after the receiver answered 2xx, so a crash or a receiver that is down loses nothing. `secret` signs deliveries
-- (HMAC-SHA256; shown once, at creation). `attempts` counts failed tries of the event at the head.
CREATE TABLE subscriptions (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    format TEXT NOT NULL CHECK (format IN ('json', 'slack')),
    secret TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_attempt_at INTEGER,
    last_status INTEGER,
    last_error TEXT,
    last_delivered_at INTEGER,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
);

-- A drill: termination notices injected on some of a pool's nodes (source 'drill'), or, dry, only the plan.
-- `node_ids` and `interruption_ids` are comma-separated; `after_event` is the newest event id before the drill, so
-- that its report reads only the events since (through the `events_type` index).
CREATE TABLE drills (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    pool TEXT NOT NULL,
    node_count INTEGER NOT NULL,
    notice_seconds INTEGER NOT NULL,
    node_ids TEXT NOT NULL,
    interruption_ids TEXT NOT NULL,
    after_event INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
