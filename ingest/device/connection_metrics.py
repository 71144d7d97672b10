"""Device-session gauges of one connection host: sessions per tenant, protocol and state.

Ray keeps a gauge's last value per label set, so a state that empties must be set back to 0
explicitly; :class:`ConnectionGauges` remembers what it published to do that.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ingest.core.metrics import Metrics, safe

STATES = ("connecting", "connected", "disconnected")


def sessions_by_state(host_status: dict[str, Any]) -> Counter[tuple[str, str, str]]:
    """(tenant, protocol, state) -> sessions, from ``ConnectionHost.status()``."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for c in host_status.get("connections", {}).values():
        counts[(str(c["tenant"]), str(c["protocol"]), str(c["state"]))] += 1
    return counts


class ConnectionGauges:
    """Publishes ``scada_connections`` and ``scada_active_connections`` from host snapshots."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._published: set[tuple[str, str]] = set()

    def publish(self, host_status: dict[str, Any]) -> Counter[tuple[str, str, str]]:
        counts = sessions_by_state(host_status)
        pairs = {(t, p) for t, p, _ in counts} | self._published
        for tenant, protocol in pairs:
            for state in STATES:
                safe(
                    self._m.connections.set,
                    counts.get((tenant, protocol, state), 0),
                    {"tenant": tenant, "protocol": protocol, "state": state},
                )
            safe(
                self._m.active_connections.set,
                counts.get((tenant, protocol, "connected"), 0),
                {"tenant": tenant, "protocol": protocol},
            )
        self._published = {(t, p) for t, p, _ in counts}
        return counts

    def on_state_change(self, tenant: str, protocol: str, state: str, error: str | None) -> None:
        """Count a session failure (a move to disconnected with an error, or a connection that
        cannot start), by a low-cardinality reason."""
        if state in ("disconnected", "failed") and error:
            safe(
                self._m.device_errors.inc,
                1,
                {"tenant": tenant, "protocol": protocol, "reason": error_reason(error)},
            )


# The error types a session reports (``"<Type>: message"``) -> the metric's reason label.
_REASONS = {
    "DeviceUnreachable": "unreachable",
    "DeviceProtocolError": "refused",
    "InvalidDeviceSetting": "config",
    "ConfigError": "config",
    "ValueError": "config",
}


def error_reason(error: str) -> str:
    """unreachable (no answer, connection lost), refused (the device said no: identity, node,
    protocol), config (the connection cannot be built) or other."""
    return _REASONS.get(error.split(":", 1)[0].strip(), "other")
