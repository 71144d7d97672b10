"""Stage 2, the write side: the per-tenant writer (validation, ledger + binary COPY in one
transaction), the durable spool and quarantine, and the Redis fan-out after commit."""
