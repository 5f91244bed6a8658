-- Multi-node jobs (issue 13): a job asks for `nodes` nodes with `gpus` GPUs on each, placed all or nothing.
-- `node_id` stays the first member (single-node clients read it); `node_ids` lists every member, comma-separated
-- (ids never hold a comma), while the job is on nodes. `job_nodes` finds a gang from any member's node: it holds
-- every member of every gang on nodes (a single-node job needs no row: `jobs.node_id` is indexed).
ALTER TABLE jobs ADD COLUMN nodes INTEGER NOT NULL DEFAULT 1 CHECK (nodes BETWEEN 1 AND 64);
ALTER TABLE jobs ADD COLUMN node_ids TEXT;

CREATE TABLE job_nodes (
    job_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    member INTEGER NOT NULL,
    PRIMARY KEY (job_id, member)
) WITHOUT ROWID;
CREATE INDEX job_nodes_node ON job_nodes(node_id);
