-- Tenant database: assets, device connections, tag mappings, readings, ingest ledger.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE wells (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    external_id text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE UNIQUE INDEX wells_name_live ON wells (name) WHERE deleted_at IS NULL;

CREATE TABLE scada_connections (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                    text NOT NULL,
    protocol                text NOT NULL CHECK (protocol IN ('opcua', 'modbus')),
    endpoint                text NOT NULL,
    security_mode           text NOT NULL DEFAULT 'None'
                            CHECK (security_mode IN ('None', 'Sign', 'SignAndEncrypt')),
    security_policy         text NOT NULL DEFAULT 'None',
    auto_accept_server_cert boolean NOT NULL DEFAULT false,
    username                text,
    password_enc            bytea,          -- Fernet ciphertext
    publishing_interval_ms  integer NOT NULL DEFAULT 1000 CHECK (publishing_interval_ms >= 10),
    enabled                 boolean NOT NULL DEFAULT true,
    last_connected_at       timestamptz,
    last_error              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz
);
CREATE UNIQUE INDEX scada_connections_name_live ON scada_connections (name) WHERE deleted_at IS NULL;

CREATE TABLE tag_mappings (
    tag_id           serial PRIMARY KEY,      -- compact int4: what every reading row carries
    connection_id    uuid NOT NULL REFERENCES scada_connections (id),
    well_id          uuid REFERENCES wells (id),
    name             text NOT NULL,
    node_id          text,                    -- OPC UA
    modbus_unit      integer CHECK (modbus_unit BETWEEN 0 AND 255),
    modbus_register  text CHECK (modbus_register IN ('coil', 'discrete', 'holding', 'input')),
    modbus_address   integer CHECK (modbus_address BETWEEN 0 AND 65535),
    modbus_data_type text,
    byte_order       text CHECK (byte_order IN ('ABCD', 'DCBA', 'BADC', 'CDAB')),
    data_type        text NOT NULL DEFAULT 'Double',
    unit             text,
    scaling_factor   float8 NOT NULL DEFAULT 1.0,
    "offset"         float8 NOT NULL DEFAULT 0.0,
    valid_min        float8,
    valid_max        float8,
    deadband         float8,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    CHECK (node_id IS NOT NULL OR modbus_address IS NOT NULL)
);
CREATE UNIQUE INDEX tag_mappings_name_live ON tag_mappings (connection_id, name) WHERE deleted_at IS NULL;

-- Narrow on purpose: one row per reading. Booleans and integers are stored as float8.
CREATE TABLE scada_readings (
    time    timestamptz NOT NULL,   -- source timestamp
    tag_id  int4 NOT NULL,
    value   float8,
    quality int4 NOT NULL DEFAULT 0 -- OPC UA StatusCode (32 bits stored signed); 0 = Good
);
SELECT create_hypertable('scada_readings', by_range('time', INTERVAL '1 day'),
                         create_default_indexes => false);
CREATE INDEX scada_readings_tag_time ON scada_readings (tag_id, time DESC);

CREATE TABLE scada_readings_text (
    time    timestamptz NOT NULL,
    tag_id  int4 NOT NULL,
    value   text,
    quality int4 NOT NULL DEFAULT 0
);
SELECT create_hypertable('scada_readings_text', by_range('time', INTERVAL '7 days'),
                         create_default_indexes => false);
CREATE INDEX scada_readings_text_tag_time ON scada_readings_text (tag_id, time DESC);

-- One row per committed batch, written in the same transaction as its COPY: a resent batch
-- finds its id here and is acknowledged without being written twice.
CREATE TABLE ingest_ledger (
    batch_id     text PRIMARY KEY,
    rows         integer NOT NULL,
    min_time     timestamptz,
    max_time     timestamptz,
    committed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenant_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO tenant_meta (key, value)
VALUES ('timescaledb_edition', current_setting('timescaledb.license', true));
