-- Database servers as a resource (issue 16): where tenant databases are made. The admin
-- password is Fernet ciphertext like tenants.db_password_enc. capacity_hint is the number of
-- tenant databases the operator wants on the server; placement picks the most room left.
CREATE TABLE db_servers (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                 text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_-]{0,39}$'),
    host                 text NOT NULL,
    port                 integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    admin_user           text NOT NULL,
    admin_password_enc   bytea NOT NULL,
    tls_mode             text NOT NULL DEFAULT 'prefer'
                         CHECK (tls_mode IN ('disable', 'prefer', 'require', 'verify-ca', 'verify-full')),
    capacity_hint        integer NOT NULL DEFAULT 500 CHECK (capacity_hint > 0),
    timescaledb_edition  text,
    timescaledb_version  text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (host, port)
);

-- A tenant lives on a registered server (server_id), or in a database its owner attached
-- (attached: never dropped by a purge, only detached).
ALTER TABLE tenants ADD COLUMN server_id uuid REFERENCES db_servers (id);
ALTER TABLE tenants ADD COLUMN attached boolean NOT NULL DEFAULT false;
CREATE INDEX tenants_server ON tenants (server_id) WHERE purged_at IS NULL;
