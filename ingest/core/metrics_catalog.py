"""The one list of scada-ingest's metrics: name, type, labels, meaning.

``ingest.core.metrics`` declares exactly these through ``ray.util.metrics``; the alert rules, the
Grafana dashboard and their tests read this list, so a name cannot drift between them.

What Prometheus sees is not the declared name. Ray 2.60's exporter (checked by scraping a running
stack, and again by ``tests/test_ops_metrics.py``) prefixes every application metric with
``ray_``; a counter gets ``_total`` unless its name already ends so; a histogram becomes the usual
``_bucket`` / ``_count`` / ``_sum`` series. :func:`exported_names` applies those rules.

Labels stay low-cardinality: tenant, protocol, outcome, reason, state, transport; never tag or
connection ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

RAY_PREFIX = "ray_"

LATENCY_BOUNDARIES_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BOUNDARIES = (10.0, 100.0, 1e3, 5e3, 1e4, 2e4, 5e4, 1e5)


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Emitted(StrEnum):
    """When a metric first appears in a scrape (Ray exports a series once it is recorded)."""

    ALWAYS = "always"  # as soon as a tenant ingests, or a writer / session runs
    ON_EVENT = "on_event"  # only once the event it counts has happened
    PLANNED = "planned"  # declared for a feature that does not write it yet


@dataclass(frozen=True)
class MetricSpec:
    attr: str  # attribute name on ingest.core.metrics.Metrics
    name: str  # declared name (what ray.util.metrics is given)
    kind: Kind
    labels: tuple[str, ...]
    help: str
    emitted: Emitted
    boundaries: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        """The family name Prometheus stores (counters with ``_total``)."""
        base = RAY_PREFIX + self.name
        if self.kind is Kind.COUNTER and not base.endswith("_total"):
            return base + "_total"
        return base


def exported_names(spec: MetricSpec) -> tuple[str, ...]:
    """Every series name a scrape shows for ``spec``."""
    if spec.kind is Kind.HISTOGRAM:
        return tuple(spec.exported + s for s in ("_bucket", "_count", "_sum"))
    return (spec.exported,)


_T, _P = "tenant", "protocol"

CATALOG: tuple[MetricSpec, ...] = (
    MetricSpec(
        "readings_ingested",
        "scada_readings_ingested_total",
        Kind.COUNTER,
        (_T, _P),
        "Readings committed to TimescaleDB (the writer labels protocol 'any')",
        Emitted.ALWAYS,
    ),
    MetricSpec(
        "active_connections",
        "scada_active_connections",
        Kind.GAUGE,
        (_T, _P),
        "Device sessions currently connected",
        Emitted.ALWAYS,
    ),
    MetricSpec(
        "connections",
        "scada_connections",
        Kind.GAUGE,
        (_T, _P, "state"),
        "Device sessions by state: connecting, connected, disconnected",
        Emitted.ALWAYS,
    ),
    MetricSpec(
        "batch_size",
        "scada_batch_size",
        Kind.HISTOGRAM,
        (_T,),
        "Rows per committed batch",
        Emitted.ALWAYS,
        BATCH_BOUNDARIES,
    ),
    MetricSpec(
        "db_write_latency",
        "scada_db_write_latency_seconds",
        Kind.HISTOGRAM,
        (_T,),
        "Duration of one COPY + ledger transaction",
        Emitted.ALWAYS,
        LATENCY_BOUNDARIES_S,
    ),
    MetricSpec(
        "end_to_end_latency",
        "scada_end_to_end_latency_seconds",
        Kind.HISTOGRAM,
        (_T,),
        "Source timestamp to commit, per batch (its median reading)",
        Emitted.ALWAYS,
        LATENCY_BOUNDARIES_S,
    ),
    MetricSpec(
        "validation_errors",
        "scada_validation_errors_total",
        Kind.COUNTER,
        (_T, "reason"),
        "Readings rejected or flagged by validation, by reason",
        Emitted.ON_EVENT,
    ),
    MetricSpec(
        "spool_rows",
        "scada_spool_rows",
        Kind.GAUGE,
        (_T,),
        "Rows held in the durable spool while the tenant database is away",
        Emitted.ALWAYS,
    ),
    MetricSpec(
        "spool_high",
        "scada_spool_high",
        Kind.GAUGE,
        (_T,),
        "1 while a tenant's spool is above 80% of its bound",
        Emitted.ALWAYS,
    ),
    MetricSpec(
        "gaps",
        "scada_gaps_total",
        Kind.COUNTER,
        (_T, _P),
        "Recorded gaps: readings a sender dropped at its bound (exact), plus one per tag interval a new "
        "session could not read (a session-start marker, count unknown)",
        Emitted.ON_EVENT,
    ),
    MetricSpec(
        "device_errors",
        "scada_device_errors_total",
        Kind.COUNTER,
        (_T, _P, "reason"),
        "Device sessions that failed (reason: unreachable, refused, config, other)",
        Emitted.ON_EVENT,
    ),
    MetricSpec(
        "duplicate_batches",
        "scada_duplicate_batches_total",
        Kind.COUNTER,
        (_T,),
        "Resent batches the ledger recognised and skipped",
        Emitted.ON_EVENT,
    ),
    MetricSpec(
        "write_failures",
        "scada_write_failures_total",
        Kind.COUNTER,
        (_T, "outcome"),
        "Writer flushes that failed: db_unavailable, spool_full, spool_unavailable, quarantined",
        Emitted.ON_EVENT,
    ),
    MetricSpec(
        "redis_errors",
        "scada_redis_errors_total",
        Kind.COUNTER,
        (_T,),
        "Failed Redis fan-out attempts (latest values, live stream)",
        Emitted.ON_EVENT,
    ),
    MetricSpec(
        "rollup_lag",
        "scada_rollup_lag_seconds",
        Kind.GAUGE,
        (_T,),
        "Seconds since the commit of the oldest reading not yet in the rollups (0 when all are in)",
        Emitted.ALWAYS,
    ),
    MetricSpec(
        "live_subscribers",
        "scada_live_subscribers",
        Kind.GAUGE,
        (_T, "transport"),
        "Open live-stream subscribers (transport: sse, websocket)",
        Emitted.ON_EVENT,
    ),
    MetricSpec(
        "live_conflated",
        "scada_live_conflated_total",
        Kind.COUNTER,
        (_T,),
        "Live-stream updates a slow subscriber skipped (conflated to the newest value)",
        Emitted.ON_EVENT,
    ),
    MetricSpec(
        "hot_reads",
        "scada_hot_reads_total",
        Kind.COUNTER,
        ("kind", "outcome"),
        "Read requests (kind: latest, readings) answered before the API's routing (outcome: answered) "
        "or passed on to the route (referred: a key not checked lately, another form, an error)",
        Emitted.ON_EVENT,
    ),
    MetricSpec(
        "read_cache",
        "scada_read_cache_total",
        Kind.COUNTER,
        ("outcome",),
        "Readings requests that used an API replica's cached rollup rows (hit) or read again whole "
        "because rows they held had changed (miss)",
        Emitted.ON_EVENT,
    ),
)

BY_NAME: dict[str, MetricSpec] = {s.name: s for s in CATALOG}


def spec_for_series(series: str) -> MetricSpec | None:
    """The catalog entry a scraped or queried series name belongs to, if any."""
    for spec in CATALOG:
        if series in exported_names(spec) or series == spec.exported:
            return spec
    return None
