"""A Modbus TCP device through the whole pipeline: registration, Ray, decoding, TimescaleDB."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ingest.core.config import Settings
from ingest.device.modbus_decode import ModbusPoint
from ingest.simulators.modbus_sim import COUNTER_BASE, ModbusSimulator
from tests.conftest import TenantHandle
from tests.helpers import db_fetch, wait_for


@pytest.fixture
def modbus_endpoint() -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest.simulators.modbus_sim",
            "--port",
            "0",
            "--units",
            "1",
            "--counters",
            "10",
            "--interval-ms",
            "100",
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    yield line.split()[1]
    proc.terminate()
    proc.wait(30)


def tag_body(p: ModbusPoint) -> dict[str, object]:
    return {
        "name": f"p{p.tag_id}",
        "modbus_unit": p.unit,
        "modbus_register": p.register,
        "modbus_address": p.address,
        "modbus_data_type": p.data_type,
        "byte_order": p.byte_order,
        "modbus_bit": p.bit,
        "modbus_length": p.length if p.data_type == "string" else None,
        "zscore_threshold": None,
    }


def test_modbus_values_of_every_type_land_decoded(
    tenant: TenantHandle, stack: Settings, modbus_endpoint: str
) -> None:
    layout = ModbusSimulator(counters=10)  # not started: only its documented register layout
    points = [p for p in layout.points(1) if p.data_type != "string"]
    expected = layout.expected_values(1)
    counters = layout.counter_points(3, unit=1, first_tag_id=1000)
    assert all(c.address >= COUNTER_BASE for c in counters)
    body = {
        "name": "plc-1",
        "protocol": "modbus",
        "endpoint": modbus_endpoint,
        "publishing_interval_ms": 200,
        "tags": [tag_body(p) for p in points + counters],
    }
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=body)
    assert r.status_code == 201, r.text
    ids = {t["name"]: t["tag_id"] for t in r.json()["tags"]}
    dsn = stack.dsn(tenant.db)

    def latest() -> dict[int, tuple[float, int]]:
        rows = db_fetch(
            dsn,
            "SELECT DISTINCT ON (tag_id) tag_id, value, quality FROM scada_readings ORDER BY tag_id, time DESC",
        )
        return {r["tag_id"]: (r["value"], r["quality"]) for r in rows}

    got = wait_for(
        lambda: (x := latest()) and len(x) == len(points) + len(counters) and x, 60, "every Modbus point stored"
    )
    for p in points:
        value, quality = got[ids[f"p{p.tag_id}"]]
        want = float(expected[p.tag_id])  # type: ignore[arg-type]
        assert quality == 0, (p, quality)
        assert math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-9), (p, value, want)
    # Counters keep counting: later polls store larger values.
    first = {c.tag_id: got[ids[f"p{c.tag_id}"]][0] for c in counters}
    wait_for(lambda: all(latest()[ids[f"p{c}"]][0] > v for c, v in first.items()), 30, "counters advancing")
