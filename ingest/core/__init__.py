"""Used by every stage: the batch (columns, Arrow), domain models, errors, settings, metrics,
backoff and small asyncio helpers. Imports nothing else of ingest/."""
