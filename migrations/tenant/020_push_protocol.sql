-- Push ingest: tags whose values arrive over HTTP (POST /v1/ingest/realtime) belong to a
-- connection of protocol 'push' (one per well, named 'push:<well>'); the coordinator runs no
-- session for them. A pushed tag has no device address: it is named by its well and its name.
-- Numbered 020 to stay clear of the numbers other work in flight takes.
ALTER TABLE scada_connections DROP CONSTRAINT scada_connections_protocol_check;
ALTER TABLE scada_connections ADD CONSTRAINT scada_connections_protocol_check
    CHECK (protocol IN ('opcua', 'modbus', 'push'));
ALTER TABLE tag_mappings DROP CONSTRAINT tag_mappings_check;
ALTER TABLE tag_mappings ADD CONSTRAINT tag_mappings_address_check
    CHECK (node_id IS NOT NULL OR modbus_address IS NOT NULL OR well_id IS NOT NULL);
