-- nodes_free (pool, state, free GPUs, seq) already serves every lookup by (pool, state); the older index only cost
-- writes (a mass reclaim changes a thousand nodes' state in one burst).
DROP INDEX nodes_pool_state;
