"""One connection as a connection host runs it (``ingest.device.host``): its session, state and
counters, and what the host reports of it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ingest.core.backoff import Backoff
from ingest.core.models import ConnectionSpec
from ingest.device.gap_check import SessionStartGaps
from ingest.device.health import session_health
from ingest.device.sessions import DeviceSession
from ingest.device.takeover import AckLedger

__all__ = ["Running", "connection_status"]


@dataclass
class Running:
    spec: ConnectionSpec
    fingerprint: str
    session: DeviceSession | None
    task: asyncio.Task[None] | None
    state: str = "connecting"
    error: str | None = None
    started_at: float = 0.0
    started_mono: float = field(default_factory=time.monotonic)
    failures: int = 0
    retry_at: float = 0.0
    gaps: SessionStartGaps | None = None
    ledger: AckLedger | None = None  # OPC UA: messages handed over, acknowledged once committed
    gap_task: asyncio.Task[None] | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 60.0))
    last_value_at: float | None = None  # wall time of the newest value delivered
    rate_mark: tuple[float, int] = (0.0, 0)  # (monotonic time, delivered) of the last rate
    values_per_s: float = 0.0
    ever_connected: bool = False
    connected_at: float | None = None  # wall time this start first got connected
    first_value_at: float | None = None  # wall time this start delivered its first value
    down_since: float = 0.0  # monotonic: when it was last seen not connected (health)
    last_error: str | None = None  # newest error since it was last connected


def connection_status(r: Running, now: float) -> dict[str, Any]:
    """What the host reports of one connection (``now``: monotonic)."""
    return {
        "tenant": r.spec.tenant_slug,
        "protocol": r.spec.protocol.value,
        "endpoint": r.spec.endpoint,
        "tags": len(r.spec.tags),
        "fingerprint": r.fingerprint,
        "started_at": r.started_at,
        "connected_at": r.connected_at,
        "first_value_at": r.first_value_at,
        "state": r.state,
        "error": r.error,
        "failures": r.failures,
        "gap_check_failures": r.gaps.failures if r.gaps is not None else 0,
        "gap_check_markers": r.gaps.markers if r.gaps is not None else 0,
        "health": session_health(
            r.state,
            r.last_error,
            r.session.stats if r.session is not None else {},
            r.ever_connected,
            now - (r.down_since or r.started_mono),
        ),
        "last_error": r.last_error,
        "last_value_at": r.last_value_at,
        "values_per_s": r.values_per_s,
        "publishing_interval_ms": r.spec.publishing_interval_ms,
        **(
            {k: v for k, v in r.session.stats.items() if isinstance(v, int | float)}
            if r.session is not None
            else {}
        ),
    }
