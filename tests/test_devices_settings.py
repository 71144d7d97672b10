"""Per-tag OPC UA settings reach the device session, and edits keep a tag's history, through the
whole stack: API -> tenant DB -> coordinator -> connection actor -> asyncua simulator -> writer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ingest.core.config import Settings
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, db_fetch, wait_for


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    s = SimProcess(1, 3, 20, extra_args=["--string-tags"])
    yield s
    s.kill()


def _count(dsn: str, tag_id: int, table: str = "scada_readings") -> int:
    return int(db_fetch(dsn, f"SELECT count(*) AS n FROM {table} WHERE tag_id = $1", tag_id)[0]["n"])


def test_an_absolute_deadband_reaches_the_session(tenant: TenantHandle, stack: Settings, sim: SimProcess) -> None:
    """Two tags on one counting node (a step of 1 a tick): the one with an absolute deadband of
    1.5 is filtered by the server, so only its first snapshot is stored."""
    node = sim.node_ids[0]
    body = {
        "name": "deadband",
        "protocol": "opcua",
        "endpoint": sim.endpoint,
        "publishing_interval_ms": 100,
        "tags": [
            {"name": "every_change", "node_id": node},
            {
                "name": "filtered",
                "node_id": node,
                "deadband_type": "absolute",
                "deadband_value": 1.5,
                "sampling_interval_ms": 0,
                "queue_size": 50,
            },
        ],
    }
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=body)
    assert r.status_code == 201, r.text
    ids = {t["name"]: t["tag_id"] for t in r.json()["tags"]}
    assert r.json()["tags"][1]["deadband_type"] == "absolute" and r.json()["tags"][1]["queue_size"] == 50
    dsn = stack.dsn(tenant.db)
    wait_for(lambda: _count(dsn, ids["filtered"]) >= 1 and _count(dsn, ids["every_change"]) >= 1, 60, "snapshots")
    sim.resume()
    wait_for(lambda: _count(dsn, ids["every_change"]) >= 50, 60, "the plain tag streaming")
    plain = _count(dsn, ids["every_change"])
    filtered = _count(dsn, ids["filtered"])
    print(f"\ndeadband through the API: plain tag {plain} readings, absolute deadband 1.5: {filtered}")
    assert filtered == 1 and plain >= 50


def test_edits_keep_the_tag_id_and_the_session_reads_the_new_address(
    tenant: TenantHandle, stack: Settings, sim: SimProcess
) -> None:
    numeric, text_node = sim.node_ids[0], next(n for n in sim.node_ids if n.endswith(".S001"))
    r = tenant.client.post(
        f"/v1/tenants/{tenant.slug}/connections",
        json={
            "name": "edits",
            "protocol": "opcua",
            "endpoint": sim.endpoint,
            "publishing_interval_ms": 100,
            "tags": [{"name": "moving", "node_id": numeric, "well": "W001"}],
        },
    )
    assert r.status_code == 201, r.text
    tag_id = r.json()["tags"][0]["tag_id"]
    dsn = stack.dsn(tenant.db)
    sim.resume()
    wait_for(lambda: _count(dsn, tag_id) >= 10, 60, "numeric readings of the first address")

    # A new address (a String node), data type and well: the same tag_id, a new session.
    r = tenant.client.patch(
        f"/v1/tenants/{tenant.slug}/tags/{tag_id}",
        json={"node_id": text_node, "data_type": "String", "well": "W002"},
    )
    assert r.status_code == 200, r.text
    edited: dict[str, Any] = r.json()
    assert (edited["tag_id"], edited["node_id"], edited["data_type"], edited["well"]) == (
        tag_id,
        text_node,
        "String",
        "W002",
    )
    wait_for(lambda: _count(dsn, tag_id, "scada_readings_text") >= 5, 60, "text readings of the new address")
    texts = db_fetch(dsn, "SELECT value FROM scada_readings_text WHERE tag_id = $1 LIMIT 5", tag_id)
    assert all(str(t["value"]).startswith("v") for t in texts)
    assert _count(dsn, tag_id) >= 10  # the numeric history is still there, under the same id
    listed = {t["tag_id"]: t for t in tenant.client.get(f"/v1/tenants/{tenant.slug}/tags").json()}
    assert listed[tag_id]["well"] == "W002" and len(listed) == 1

    # Clearing the well, and a name taken by another tag of the connection (409).
    r = tenant.client.patch(f"/v1/tenants/{tenant.slug}/tags/{tag_id}", json={"well": None})
    assert r.status_code == 200 and r.json()["well"] is None and r.json()["well_id"] is None, r.text
    added = tenant.client.post(
        f"/v1/tenants/{tenant.slug}/connections/{edited['connection_id']}/tags",
        json={"tags": [{"name": "other", "node_id": numeric}]},
    )
    assert added.status_code == 201, added.text
    r = tenant.client.patch(f"/v1/tenants/{tenant.slug}/tags/{tag_id}", json={"name": "other"})
    assert r.status_code == 409 and r.json()["details"][0]["field"] == "name", r.text


def test_settings_are_refused_where_no_session_can_use_them(tenant: TenantHandle) -> None:
    base = {"name": "m", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:1", "enabled": False}
    tag = {"name": "h", "modbus_register": "holding", "modbus_address": 1, "queue_size": 5}
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json={**base, "tags": [tag]})
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "tags.0.queue_size", r.text
    opc = {"name": "o", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:1", "enabled": False}
    r = tenant.client.post(
        f"/v1/tenants/{tenant.slug}/connections",
        json={
            **opc,
            "tags": [{"name": "t", "node_id": "i=85", "deadband_type": "percent", "deadband_value": 101}],
        },
    )
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "tags.0.deadband_value", r.text
    r = tenant.client.post(
        f"/v1/tenants/{tenant.slug}/connections", json={**opc, "tags": [{"name": "t", "node_id": "i=85"}]}
    )
    assert r.status_code == 201
    tag_id = r.json()["tags"][0]["tag_id"]
    # A PATCH is checked on the tag it leaves: a value without a type is refused...
    r = tenant.client.patch(f"/v1/tenants/{tenant.slug}/tags/{tag_id}", json={"deadband_value": 3})
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "deadband_value", r.text
    # ...both together pass, and a duplicate connection name is a conflict.
    r = tenant.client.patch(
        f"/v1/tenants/{tenant.slug}/tags/{tag_id}", json={"deadband_value": 3, "deadband_type": "absolute"}
    )
    assert r.status_code == 200 and r.json()["deadband_value"] == 3.0, r.text
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json={**opc, "tags": []})
    assert r.status_code == 409 and r.json()["error"] == "conflict", r.text
