-- Inference services (issue 13): a service asks for `replicas` replicas of `gpus_per_replica` GPUs each; spotd
-- places them, keeps `min_available` of them ready through reclaims (make-before-break), keeps `base_on_demand` of
-- them on on-demand capacity and moves the rest back to spot when spot returns.
CREATE TABLE services (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tier TEXT NOT NULL CHECK (tier IN ('premium', 'standard', 'best_effort')),
    replicas INTEGER NOT NULL CHECK (replicas BETWEEN 1 AND 1000),
    gpus_per_replica INTEGER NOT NULL CHECK (gpus_per_replica BETWEEN 1 AND 64),
    gpu_type TEXT,
    -- NULL: the default, replicas - 1 (so it follows the replica count).
    min_available INTEGER CHECK (min_available BETWEEN 0 AND replicas),
    base_on_demand INTEGER NOT NULL DEFAULT 0 CHECK (base_on_demand BETWEEN 0 AND replicas),
    -- The number of the next replica (replica ids are r1, r2, ... within a service, never reused).
    next_replica INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- One row per replica, from `pending` (no node yet) through `starting` (placed, GPUs allocated), `ready` (serving),
-- `draining` (leaving: its replacement serves) to `gone`. A replica whose node got a termination notice, or that
-- moves back to spot, is `doomed`: a surge replica (`replaces` = its id) is placed at once, and the doomed one keeps
-- serving until the surge is ready.
CREATE TABLE service_replicas (
    seq INTEGER PRIMARY KEY,
    service_id TEXT NOT NULL,
    id TEXT NOT NULL,
    node_id TEXT,
    pool TEXT,
    capacity_type TEXT CHECK (capacity_type IN ('spot', 'on_demand', 'reserved')),
    state TEXT NOT NULL CHECK (state IN ('pending', 'starting', 'ready', 'draining', 'gone')),
    replaces TEXT,
    doomed_at INTEGER,
    doomed_reason TEXT,
    drain_until INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    ready_at INTEGER,
    gone_at INTEGER,
    UNIQUE (service_id, id),
    CHECK ((state IN ('starting', 'ready', 'draining')) = (node_id IS NOT NULL) OR state = 'gone')
);
-- Exactly one surge replica per doomed replica, however often a pass is retried after a crash.
CREATE UNIQUE INDEX service_replicas_one_surge ON service_replicas(service_id, replaces) WHERE replaces IS NOT NULL;
CREATE INDEX service_replicas_live ON service_replicas(service_id, state) WHERE state <> 'gone';
CREATE INDEX service_replicas_node ON service_replicas(node_id) WHERE state IN ('starting', 'ready', 'draining');
CREATE INDEX service_replicas_gone_at ON service_replicas(gone_at) WHERE gone_at IS NOT NULL;
