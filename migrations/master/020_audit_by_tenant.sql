-- The audit route pages one tenant's rows newest first (GET /v1/tenants/{t}/audit); push adds
-- one row per request, so the scan must not be of the whole table. Numbered 020 to stay clear
-- of the numbers other work in flight takes.
CREATE INDEX audit_log_tenant_id ON audit_log (tenant_id, id DESC);
