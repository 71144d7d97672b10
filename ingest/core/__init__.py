"""Used by every stage: the batch (columns, Arrow), domain models, errors, settings, metrics,
backoff, the keys the cluster makes for itself and small asyncio helpers. Imports nothing else of ingest/."""
