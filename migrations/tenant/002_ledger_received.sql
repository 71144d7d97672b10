-- Readings a batch brought, beside the rows it wrote (validation may reject some).
ALTER TABLE ingest_ledger ADD COLUMN received integer;
UPDATE ingest_ledger SET received = rows WHERE received IS NULL;
