-- 10-second partials of the 1-minute rollup, kept by the refresher (ingest/read/rollups.py).
--
-- A pass rebuilt every minute its ledger rows touched whole from raw, so the open minute of a
-- steady stream was read again at every pass while it filled (at 80,000 readings/s, half a core
-- for half a second each time, and the closed minute at its end). The refresher now rebuilds from
-- raw only the 10-second buckets the ledger says rows landed in, and sums a minute's partials.
-- Not read by queries; dropped with the raw rows (retention), whose partial it is.
CREATE TABLE rollup_10s (LIKE rollup_1m INCLUDING ALL);
SELECT create_hypertable('rollup_10s', by_range('bucket', INTERVAL '1 day'));

-- Minutes from here on are summed from their partials; earlier ones (data written before this
-- migration, whose partials were never made) are rebuilt from raw as before. A database with no
-- readings yet has partials for everything it will get. Otherwise: the next minute after both now
-- and the newest reading the ledger knows of (a clock ahead of ours may have stamped it later).
ALTER TABLE rollup_state ADD COLUMN partials_from timestamptz NOT NULL DEFAULT '-infinity';
UPDATE rollup_state SET partials_from = date_trunc('minute', greatest(now(), (SELECT max(max_time) FROM ingest_ledger)))
                                        + INTERVAL '1 minute'
WHERE EXISTS (SELECT 1 FROM scada_readings) OR EXISTS (SELECT 1 FROM ingest_ledger);
