-- Per-tag validation policy: what to do with an out-of-range value, and the anomaly threshold.
ALTER TABLE tag_mappings
    ADD COLUMN out_of_range text NOT NULL DEFAULT 'flag' CHECK (out_of_range IN ('flag', 'reject')),
    ADD COLUMN zscore_threshold float8 CHECK (zscore_threshold IS NULL OR zscore_threshold > 0);
