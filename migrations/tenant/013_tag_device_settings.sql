-- Per-tag settings of the OPC UA monitored item (issue 13): how often the server samples, how many
-- changes it queues between publishes and which it drops when full, and the server-side
-- DataChangeFilter deadband (absolute, or percent of the node's EURange). NULL takes the session's
-- defaults (sampling interval 0 = as fast as the server can, queue 1000). Not the writer's own
-- ``deadband`` column, which drops repeats after the values arrive.
-- Numbered 013 (the issue) to stay clear of the numbers other work in flight takes.
ALTER TABLE tag_mappings
    ADD COLUMN sampling_interval_ms float8 CHECK (sampling_interval_ms >= 0),
    ADD COLUMN queue_size integer CHECK (queue_size BETWEEN 1 AND 100000),
    ADD COLUMN discard_oldest boolean NOT NULL DEFAULT true,
    ADD COLUMN deadband_type text CHECK (deadband_type IN ('absolute', 'percent')),
    ADD COLUMN deadband_value float8 NOT NULL DEFAULT 0 CHECK (deadband_value >= 0);
