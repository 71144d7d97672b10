-- What the cluster last saw of each connection's session, written by the coordinator when it
-- changes: connecting / connected / disconnected / failed, and since when.
ALTER TABLE scada_connections ADD COLUMN state text;
ALTER TABLE scada_connections ADD COLUMN state_changed_at timestamptz;
