"""Live values to dashboards: the per-tenant Redis stream the writer appends to after each commit
(ingest.write.fanout), read once per tenant per Serve replica (``hub``), queued per subscriber
with conflation (``queue``), encoded for SSE and WebSocket (``events``); single-use stream
tickets for browsers (``tickets``)."""
