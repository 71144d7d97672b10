"""Stage 1, the device side: OPC UA and Modbus sessions, decoding, security, the session host
that turns readings into per-tenant micro-batches, the session-start gap check and the batch
sender that keeps every batch until the writer acknowledges it."""
