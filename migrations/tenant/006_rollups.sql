-- The read side: rollups at 1 minute, 1 hour and 1 day, kept by the refresher (ingest/read).
--
-- These are plain hypertables, not continuous aggregates: the Apache edition has none, and one
-- code path for every edition keeps the tests honest.

-- Which transaction wrote each ledger row. The refresher takes ledger rows of transactions older
-- than every still-running one (pg_snapshot_xmin), so a batch whose transaction commits late is
-- never skipped; a sequence number alone would be (a higher number can commit first).
ALTER TABLE ingest_ledger ADD COLUMN xact int8 NOT NULL DEFAULT (pg_current_xact_id()::text::int8);
CREATE INDEX ingest_ledger_xact ON ingest_ledger (xact);

-- One row per tag and bucket. n/sum/min/max/first/last cover readings whose quality is not Bad
-- (StatusCode severity bit clear: stored int4 >= 0) with a number; gap markers are Bad too.
-- bad counts Bad readings, gap markers not included.
CREATE TABLE rollup_1m (
    tag_id      int4 NOT NULL,
    bucket      timestamptz NOT NULL,
    n           int8 NOT NULL,
    sum         float8,
    min         float8,
    max         float8,
    first_time  timestamptz,
    first_value float8,
    last_time   timestamptz,
    last_value  float8,
    bad         int8 NOT NULL,
    PRIMARY KEY (tag_id, bucket)
);
CREATE TABLE rollup_1h (LIKE rollup_1m INCLUDING ALL);
CREATE TABLE rollup_1d (LIKE rollup_1m INCLUDING ALL);
-- 1-day buckets starting at the tenant's local midnight (23 and 25 hours at DST changes).
CREATE TABLE rollup_1d_local (LIKE rollup_1m INCLUDING ALL);
SELECT create_hypertable('rollup_1m', by_range('bucket', INTERVAL '7 days'));
SELECT create_hypertable('rollup_1h', by_range('bucket', INTERVAL '180 days'));
SELECT create_hypertable('rollup_1d', by_range('bucket', INTERVAL '3650 days'));
SELECT create_hypertable('rollup_1d_local', by_range('bucket', INTERVAL '3650 days'));

-- Refresher progress: every ledger row of a transaction below done_below is in rollup_pending
-- or rolled up already.
CREATE TABLE rollup_state (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    done_below int8 NOT NULL DEFAULT 0
);
INSERT INTO rollup_state DEFAULT VALUES;

-- Minute-aligned ranges [lo, hi) still to roll up, taken a bounded amount per pass.
CREATE TABLE rollup_pending (
    lo timestamptz NOT NULL,
    hi timestamptz NOT NULL CHECK (hi > lo)
);

-- Read-side settings of the tenant (the API changes them): time zone of 1-day buckets, retention,
-- and how far retention has dropped data (queries say so; the refresher never rebuilds below it).
INSERT INTO tenant_meta (key, value) VALUES
    ('timezone', 'UTC'),
    ('raw_retention_days', '90'),
    ('rollup_retention_days', '730')
ON CONFLICT (key) DO NOTHING;

-- Where retention dropped whole chunks: below dropped_before a table holds nothing any more, so
-- queries say so and the refresher never rebuilds a coarser level from an emptied finer one.
CREATE TABLE retention_horizon (
    table_name     text PRIMARY KEY,
    dropped_before timestamptz NOT NULL
);
