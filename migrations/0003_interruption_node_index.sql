-- Looks up a node's interruptions without scanning every open one.
CREATE INDEX interruptions_node ON interruptions(node_id, state);
