-- What changed in the rollups, for the readers' caches (ingest.read.rollup_cache).
--
-- Every transaction that writes rollup rows (a refresh pass, a time zone change, retention
-- dropping rollup chunks) first bumps rollup_state.version (the row lock orders them: a reader's
-- snapshot that sees version V sees every change up to V and none after) and records, per table,
-- the earliest bucket it touched. A reader holding rows of version V re-reads only what lies at or
-- after the earliest change since V. The log keeps the last 1,000 versions; a reader older than
-- that starts over.
ALTER TABLE rollup_state ADD COLUMN version int8 NOT NULL DEFAULT 0;
CREATE TABLE rollup_changes (
    version    int8 NOT NULL,
    table_name text NOT NULL,
    lo         timestamptz NOT NULL,
    PRIMARY KEY (version, table_name)
);
