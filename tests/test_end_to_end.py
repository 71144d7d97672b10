"""Simulator -> connection actor (Ray) -> writer actor -> TimescaleDB -> HTTP, with counting."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.core.config import Settings
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, counting_check, db_fetch, wait_for


@pytest.fixture
def sims() -> Any:
    made: list[SimProcess] = []

    def _make(wells: int = 2, tags: int = 5, interval_ms: int = 20) -> SimProcess:
        made.append(SimProcess(wells, tags, interval_ms))
        return made[-1]

    yield _make
    for s in made:
        s.kill()


def _register(t: TenantHandle, sim: SimProcess, name: str) -> dict[str, int]:
    r = t.client.post(f"/v1/tenants/{t.slug}/connections", json=sim.connection_body(name))
    assert r.status_code == 201, r.text
    return {tag["node_id"]: tag["tag_id"] for tag in r.json()["tags"]}


def _initial_values_landed(dsn: str, tag_ids: dict[str, int]) -> bool:
    rows = db_fetch(
        dsn,
        "SELECT count(DISTINCT tag_id) AS n FROM scada_readings WHERE tag_id = ANY($1::int[])",
        list(tag_ids.values()),
    )
    return rows[0]["n"] == len(tag_ids)


def _stream_and_check(
    dsn: str, sim: SimProcess, tag_ids: dict[str, int], seconds: float, during: Any = None
) -> dict[str, Any]:
    import time

    sim.resume()
    # The streaming window (half before the fault ``during`` injects, half after): the test's
    # scenario, not a wait for a condition.
    time.sleep(seconds / 2)
    if during is not None:
        during()
    time.sleep(seconds / 2)
    summary = sim.stop()
    published = summary["per_node"]
    wait_for(
        lambda: counting_check(dsn, tag_ids, published)["stored"] >= summary["published"],
        60,
        "every published value stored",
    )
    return counting_check(dsn, tag_ids, published)


def test_every_published_value_lands_exactly_once(tenant: TenantHandle, stack: Settings, sims: Any) -> None:
    sim = sims(wells=2, tags=5, interval_ms=20)
    tag_ids = _register(tenant, sim, "well-pad-a")
    dsn = stack.dsn(tenant.db)
    # Registration alone starts streaming: no restart of anything.
    wait_for(lambda: _initial_values_landed(dsn, tag_ids), 60, "subscription delivering")
    result = _stream_and_check(dsn, sim, tag_ids, 4.0)
    assert result["published"] >= 10 * 100  # 10 tags at 50 Hz for ~4 s
    assert result["bad"] == []
    assert result["stored"] == result["published"]
    # Each batch is in the ledger once; rows of the ledger add up to the rows stored.
    ledger = db_fetch(dsn, "SELECT sum(rows) AS n FROM ingest_ledger")[0]["n"]
    total = db_fetch(dsn, "SELECT count(*) AS n FROM scada_readings")[0]["n"]
    assert ledger == total
    # And the HTTP query returns the same readings, oldest first.
    node, tag = next(iter(tag_ids.items()))
    r = tenant.client.get(
        f"/v1/tenants/{tenant.slug}/readings",
        params={"tag_id": tag, "limit": 100000, "resolution": "raw"},
    )
    body = r.json()
    at = body["fields"].index("value")
    values = [p[at] for p in body["series"][0]["points"] if p[at] >= 1]
    assert values == [float(i) for i in range(1, summary_count(result, node, sim) + 1)]


def summary_count(result: dict[str, Any], node: str, sim: SimProcess) -> int:
    import json

    return int(json.loads(sim.summary_file.read_text())["per_node"][node])


def test_connection_registered_while_streaming_starts_without_restart(
    tenant: TenantHandle, stack: Settings, sims: Any
) -> None:
    first, second = sims(wells=1, tags=4, interval_ms=20), sims(wells=1, tags=3, interval_ms=20)
    tags_first = _register(tenant, first, "first")
    dsn = stack.dsn(tenant.db)
    wait_for(lambda: _initial_values_landed(dsn, tags_first), 60, "first connection delivering")
    tags_second: dict[str, int] = {}

    def register_second() -> None:
        tags_second.update(_register(tenant, second, "second"))
        wait_for(lambda: _initial_values_landed(dsn, tags_second), 60, "second connection delivering")
        second.resume()

    # The first connection streams throughout; registering the second must not disturb it.
    result_first = _stream_and_check(dsn, first, tags_first, 4.0, during=register_second)
    assert result_first["bad"] == [] and result_first["stored"] == result_first["published"]
    summary = second.stop()
    wait_for(
        lambda: counting_check(dsn, tags_second, summary["per_node"])["stored"] >= summary["published"],
        60,
        "second connection's values stored",
    )
    result_second = counting_check(dsn, tags_second, summary["per_node"])
    assert result_second["published"] > 0
    assert result_second["bad"] == []
