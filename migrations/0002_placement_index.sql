-- Finds the tightest-fitting ready node of a pool in one index seek.
CREATE INDEX nodes_free ON nodes(pool, state, gpus - gpus_allocated, seq);
