-- Master database: which tenants exist, where their databases live, who may call the API.
CREATE TABLE tenants (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug            text NOT NULL UNIQUE CHECK (slug ~ '^[a-z][a-z0-9_]{1,39}$'),
    name            text NOT NULL,
    status          text NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'SUSPENDED')),
    database_url    text NOT NULL,          -- without password
    db_user         text NOT NULL,
    db_password_enc bytea NOT NULL,         -- Fernet ciphertext, master key outside the database
    timescaledb_edition text,
    retention_days  integer CHECK (retention_days IS NULL OR retention_days > 0),
    max_tags        integer NOT NULL DEFAULT 100000,
    created_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);

-- API keys: only a SHA-256 of the secret part is kept. tenant_id NULL means cluster admin.
CREATE TABLE api_credentials (
    key_id       text PRIMARY KEY,
    tenant_id    uuid REFERENCES tenants (id),
    name         text NOT NULL,
    secret_hash  text NOT NULL,
    scopes       text[] NOT NULL CHECK (scopes <@ ARRAY['read', 'ingest', 'admin', 'cluster-admin']),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_credentials_tenant ON api_credentials (tenant_id);

CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,               -- key id, never the key
    tenant_id  uuid,
    action     text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'
);

-- What the coordinator must persist to resume without moving healthy connections.
CREATE TABLE coordinator_assignments (
    connection_id uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    slot          text NOT NULL,
    fingerprint   text NOT NULL,
    assigned_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cluster_info (
    key   text PRIMARY KEY,
    value text NOT NULL
);
