"""Each connection's health where an engineer looks: the connection routes and ``scada-ingest
status`` show its state, newest value, values/s, reconnects and last error; a connection with no
tags is idle, not failed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ingest.placement.status_view import render
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, wait_for


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    s = SimProcess(1, 3, 50)
    yield s
    s.kill()


def _listed(tenant: TenantHandle) -> dict[str, dict[str, Any]]:
    r = tenant.client.get(f"/v1/tenants/{tenant.slug}/connections")
    assert r.status_code == 200, r.text
    return {c["name"]: c for c in r.json()}


def test_health_in_the_routes_and_the_status(tenant: TenantHandle, sim: SimProcess, admin: httpx.Client) -> None:
    base = f"/v1/tenants/{tenant.slug}/connections"
    bodies = [
        sim.connection_body("streaming", publishing_interval_ms=100),
        {
            "name": "down",
            "protocol": "opcua",
            "endpoint": "opc.tcp://127.0.0.1:1/x",
            "tags": [{"name": "t", "node_id": "i=2258"}],
        },
        {"name": "no-tags", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:1"},
        {"name": "off", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:1/x", "enabled": False},
    ]
    for body in bodies:
        r = tenant.client.post(base, json=body)
        assert r.status_code == 201, r.text
    sim.resume()

    def settled() -> dict[str, dict[str, Any]] | None:
        x = _listed(tenant)
        ok = (
            x["streaming"]["health"] == "CONNECTED"
            and (x["streaming"]["values_per_s"] or 0) > 0
            and x["down"]["health"] == "FAILED"
            and x["no-tags"]["health"] == "IDLE"
        )
        return x if ok else None

    got = wait_for(settled, 60, "every connection's health reported", describe=lambda: _listed(tenant))
    streaming, down = got["streaming"], got["down"]
    assert streaming["last_value_at"] is not None and streaming["last_connected_at"] is not None
    assert streaming["reconnects"] == 0 and streaming["last_error"] is None
    assert "DeviceUnreachable" in (down["last_error"] or ""), down
    assert got["off"]["health"] == "DISABLED"
    assert got["no-tags"]["state"] != "failed" and got["no-tags"]["last_error"] is None
    one = tenant.client.get(f"{base}/{streaming['id']}").json()
    assert one["health"] == "CONNECTED" and one["last_value_at"] is not None

    # The same in `scada-ingest status` (the CLI renders /v1/status with this function).
    status = admin.get("/v1/status")
    assert status.status_code == 200, status.text
    text = render(status.json())
    line = next(ln for ln in text.splitlines() if streaming["id"] in ln)
    assert "CONNECTED" in line and "values/s=" in line and "last_value=" in line and "reconnects=0" in line
    line = next(ln for ln in text.splitlines() if down["id"] in ln)
    assert "FAILED" in line and "DeviceUnreachable" in line
    print("\n" + "\n".join(ln for ln in text.splitlines() if tenant.slug in ln))


@pytest.mark.parametrize(
    ("state", "error", "stats", "ever", "down_s", "health"),
    [
        ("connecting", None, {}, False, 0.0, "CONNECTING"),
        ("connected", None, {"failed_items": 0}, True, 0.0, "CONNECTED"),
        ("connected", None, {"failed_items": 2}, True, 0.0, "DEGRADED"),  # items the server refused
        ("disconnected", "DeviceUnreachable: x", {}, True, 5.0, "DEGRADED"),  # reconnecting after streaming
        ("connecting", "DeviceUnreachable: x", {}, True, 600.0, "FAILED"),  # down for long
        ("disconnected", "DeviceUnreachable: x", {}, False, 1.0, "FAILED"),  # never got there
        ("failed", "ValueError: x", {}, False, 0.0, "FAILED"),
        ("idle", None, {}, False, 0.0, "IDLE"),
    ],
)
def test_health_rules(
    state: str, error: str | None, stats: dict[str, Any], ever: bool, down_s: float, health: str
) -> None:
    from ingest.device.health import session_health

    assert session_health(state, error, stats, ever, down_s) == health
