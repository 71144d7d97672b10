"""Every metric of scada-ingest, declared in one class.

Metrics go through ``ray.util.metrics`` so Ray's Prometheus endpoint exports them from every node.
This is the one module of ``ingest/`` that imports ray, and it does so lazily: outside Ray (unit
tests, the CLI) the metrics are no-ops. A failing metric never breaks the data path. Labels stay
low-cardinality: tenant, protocol, outcome, reason; never tag or connection ids.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
_BATCH_BOUNDARIES = [10.0, 100.0, 1e3, 5e3, 1e4, 2e4, 5e4, 1e5]


class _Noop:
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...
    def set(self, value: float, tags: dict[str, str] | None = None) -> None: ...
    def observe(self, value: float, tags: dict[str, str] | None = None) -> None: ...


class Metrics:
    """Declares all metrics once per process; use ``Metrics.get()``."""

    _instance: Metrics | None = None
    readings_ingested: Any
    active_connections: Any
    batch_size: Any
    db_write_latency: Any
    end_to_end_latency: Any
    validation_errors: Any
    spool_rows: Any
    spool_high: Any
    gaps: Any
    device_errors: Any
    duplicate_batches: Any
    write_failures: Any
    redis_errors: Any

    def __init__(self) -> None:
        try:
            import ray
            from ray.util import metrics as rm

            enabled = ray.is_initialized()
        except Exception:  # pragma: no cover - ray missing or broken
            enabled = False
        if not enabled:
            noop = _Noop()
            self.readings_ingested = self.active_connections = self.batch_size = noop
            self.db_write_latency = self.end_to_end_latency = self.validation_errors = noop
            self.spool_rows = self.gaps = self.device_errors = self.duplicate_batches = noop
            self.write_failures = self.redis_errors = self.spool_high = noop
            return
        self.readings_ingested = rm.Counter(
            "scada_readings_ingested_total", "Readings committed to TimescaleDB",
            tag_keys=("tenant", "protocol"),
        )
        self.active_connections = rm.Gauge(
            "scada_active_connections", "Device sessions currently connected",
            tag_keys=("tenant", "protocol"),
        )
        self.batch_size = rm.Histogram(
            "scada_batch_size", "Rows per committed batch", boundaries=_BATCH_BOUNDARIES,
            tag_keys=("tenant",),
        )
        self.db_write_latency = rm.Histogram(
            "scada_db_write_latency_seconds", "Duration of one COPY + ledger transaction",
            boundaries=_LATENCY_BOUNDARIES_S, tag_keys=("tenant",),
        )
        self.end_to_end_latency = rm.Histogram(
            "scada_end_to_end_latency_seconds", "Source timestamp to commit, per batch (median)",
            boundaries=_LATENCY_BOUNDARIES_S, tag_keys=("tenant",),
        )
        self.validation_errors = rm.Counter(
            "scada_validation_errors_total", "Readings rejected or flagged by validation",
            tag_keys=("tenant", "reason"),
        )
        self.spool_rows = rm.Gauge(
            "scada_spool_rows", "Rows held in the durable spool", tag_keys=("tenant",)
        )
        self.spool_high = rm.Gauge(
            "scada_spool_high", "1 while a tenant's spool is above 80% of its bound",
            tag_keys=("tenant",),
        )
        self.gaps = rm.Counter(
            "scada_gaps_total", "Readings recorded as an explicit gap (quality Bad marker)",
            tag_keys=("tenant", "protocol"),
        )
        self.device_errors = rm.Counter(
            "scada_device_errors_total", "Device session failures", tag_keys=("protocol", "outcome")
        )
        self.duplicate_batches = rm.Counter(
            "scada_duplicate_batches_total", "Resent batches the ledger recognised",
            tag_keys=("tenant",),
        )
        self.write_failures = rm.Counter(
            "scada_write_failures_total", "Writer flushes that failed", tag_keys=("tenant", "outcome")
        )
        self.redis_errors = rm.Counter(
            "scada_redis_errors_total", "Failed Redis fan-out attempts", tag_keys=("tenant",)
        )

    @classmethod
    def get(cls) -> Metrics:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


def safe(fn: Any, *args: Any, **kwargs: Any) -> None:
    """Call a metric method; log and swallow any failure."""
    try:
        fn(*args, **kwargs)
    except Exception:
        log.debug("metric update failed", exc_info=True)
