"""Every metric of scada-ingest, declared in one class.

Metrics go through ``ray.util.metrics`` so Ray's Prometheus endpoint exports them from every node.
This is the one module of ``ingest/`` that imports ray, and it does so lazily: outside Ray (unit
tests, the CLI) the metrics are no-ops. A failing metric never breaks the data path. Labels stay
low-cardinality: tenant, protocol, outcome, reason; never tag or connection ids.
"""

from __future__ import annotations

import logging
from typing import Any

from ingest.core.metrics_catalog import CATALOG, Kind

log = logging.getLogger(__name__)


class _Noop:
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...
    def set(self, value: float, tags: dict[str, str] | None = None) -> None: ...
    def observe(self, value: float, tags: dict[str, str] | None = None) -> None: ...


class Metrics:
    """Declares every metric of ``ingest.core.metrics_catalog`` once per process; use ``Metrics.get()``."""

    _instance: Metrics | None = None
    readings_ingested: Any
    active_connections: Any
    connections: Any
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
    rollup_lag: Any
    live_subscribers: Any
    live_conflated: Any
    hot_reads: Any
    read_cache: Any

    def __init__(self) -> None:
        try:
            import ray
            from ray.util import metrics as rm

            enabled = ray.is_initialized()
        except Exception:  # pragma: no cover - ray missing or broken
            enabled = False
        for spec in CATALOG:
            metric: Any = _Noop()
            if enabled:
                if spec.kind is Kind.COUNTER:
                    metric = rm.Counter(spec.name, spec.help, tag_keys=spec.labels)
                elif spec.kind is Kind.GAUGE:
                    metric = rm.Gauge(spec.name, spec.help, tag_keys=spec.labels)
                else:
                    metric = rm.Histogram(
                        spec.name, spec.help, boundaries=list(spec.boundaries), tag_keys=spec.labels
                    )
            setattr(self, spec.attr, metric)

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
