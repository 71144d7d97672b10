"""scada-ingest domain library: models, protocol adapters, batching, storage, simulators."""
