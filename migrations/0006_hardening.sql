-- Hardening (issue 11): unique token names, replay protection for signed notices, indexes for retention.

-- Token names are actors in the event log: unique among all tokens, revoked ones included, whatever their case,
-- and never one of spotd's own actors. Older stores may hold repeats or such names: those get their token id
-- appended (ids are unique, so the new names cannot collide).
UPDATE tokens SET name = name || '-' || id
WHERE seq NOT IN (SELECT MIN(seq) FROM tokens GROUP BY lower(name))
   OR lower(name) IN ('admin', 'anonymous', 'worker', 'autoscaler', 'provisioner', 'drill', 'cli', 'scheduler-loop', 'operator',
                      'system');
CREATE UNIQUE INDEX tokens_name ON tokens(name COLLATE NOCASE);

-- Signed notices already answered, by their signature: a replay of the same (timestamp, signature) records nothing
-- new and is answered with the first records. Kept a little longer than the 5-minute signature window.
CREATE TABLE notice_replays (
    signature TEXT PRIMARY KEY,
    interruption_ids TEXT NOT NULL,
    received_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX notice_replays_received ON notice_replays(received_at);

-- Retention finds finished records by age without scanning the live ones (events go oldest id first: no index).
CREATE INDEX jobs_finished_at ON jobs(finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX nodes_terminated_at ON nodes(terminated_at) WHERE terminated_at IS NOT NULL;
CREATE INDEX interruptions_finished ON interruptions(received_at) WHERE state IN ('completed', 'unmatched');
CREATE INDEX provisioning_resolved_at ON provisioning_requests(resolved_at) WHERE resolved_at IS NOT NULL;
-- Deleting an interruption checks the foreign key from provisioning requests: without this, a scan per row.
CREATE INDEX provisioning_interruption ON provisioning_requests(interruption_id) WHERE interruption_id IS NOT NULL;
