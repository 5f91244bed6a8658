-- The worker lease carries a fencing token: each new holder gets the previous token plus one, a renewal keeps it,
-- and every workflow write checks, in its own transaction, that the lease it acts under is still held with its
-- token. A process that lost the lease (paused, or partitioned from a shared store) can commit no workflow step.
ALTER TABLE leases ADD COLUMN token INTEGER NOT NULL DEFAULT 0;
