-- Key lifecycle: an optional expiry, and when a key was last used (written at most once a
-- minute per key). Tenant lifecycle: a quota on connections beside max_tags, and when a soft
-- deleted tenant's database was dropped.
ALTER TABLE api_credentials ADD COLUMN expires_at timestamptz;
ALTER TABLE api_credentials ADD COLUMN last_used_at timestamptz;
ALTER TABLE tenants ADD COLUMN max_connections integer NOT NULL DEFAULT 10000;
ALTER TABLE tenants ADD CONSTRAINT tenants_quotas_positive CHECK (max_tags > 0 AND max_connections > 0);
ALTER TABLE tenants ADD COLUMN purged_at timestamptz;
