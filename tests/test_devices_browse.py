"""Browsing a connection's OPC UA server and discovering its variables as tags, through the live
API against asyncua simulators (one with 5,000 extra nodes, one secured with a user login)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ingest.core.config import Settings
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, db_fetch, wait_for

EXTRA_NODES = 5000


@pytest.fixture(scope="module")
def big_sim() -> Iterator[SimProcess]:
    s = SimProcess(2, 3, 100, extra_args=["--extra-nodes", str(EXTRA_NODES), "--max-nodes-per-browse", "20"])
    yield s
    s.kill()


def _connection(tenant: TenantHandle, endpoint: str, name: str = "browse", **extra: Any) -> str:
    body = {"name": name, "protocol": "opcua", "endpoint": endpoint, "enabled": False, **extra}
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _browse(tenant: TenantHandle, cid: str, **params: Any) -> Any:
    return tenant.client.get(f"/v1/tenants/{tenant.slug}/connections/{cid}/browse", params=params)


def test_browse_lists_children_paged_with_types_and_access(tenant: TenantHandle, big_sim: SimProcess) -> None:
    cid = _connection(tenant, big_sim.endpoint)
    r = _browse(tenant, cid)
    assert r.status_code == 200, r.text
    top = {c["browse_name"]: c for c in r.json()["children"]}
    assert {"Server", "W001", "W002", "Extra"} <= set(top) and top["W001"]["node_class"] == "Object"

    ns = big_sim.node_ids[0].split(";")[0]
    group = f"{ns};s=Extra.G001"
    seen: list[dict[str, Any]] = []
    token: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"node": group, "limit": 30}
        if token:
            params["page_token"] = token
        body = _browse(tenant, cid, **params).json()
        pages += 1
        seen += body["children"]
        token = body["next_page_token"]
        if token is None:
            break
    assert pages == 4 and len(seen) == 100 and body["total"] == 100
    assert len({c["node_id"] for c in seen}) == 100
    first, second = seen[0], seen[1]  # X00001: Int32, writable; X00002: Boolean, read-only
    assert (first["node_id"], first["data_type"], first["access_level"]) == (
        f"{ns};s=Extra.X00001",
        "Int32",
        ["read", "write"],
    )
    assert (second["data_type"], second["access_level"], second["node_class"]) == ("Boolean", ["read"], "Variable")

    r = _browse(tenant, cid, node=f"{ns};s=Nowhere")
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "node", r.text
    r = _browse(tenant, cid, node="i=abc")
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "node", r.text


def test_a_5000_node_server_is_walked_within_its_operation_limits(
    tenant: TenantHandle, stack: Settings, big_sim: SimProcess
) -> None:
    cid = _connection(tenant, big_sim.endpoint)
    path = f"/v1/tenants/{tenant.slug}/connections/{cid}/discover"
    t0 = time.perf_counter()
    r = tenant.client.post(path, json={"pattern": "Extra/**", "dry_run": True, "max_nodes": 20_000})
    walk_s = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["found"] == EXTRA_NODES and out["result"]["created"] == EXTRA_NODES and not out["truncated"]
    # The server states MaxNodesPerBrowse 20: no Browse call carried more (50 folders alone
    # need 3 calls at that level).
    assert out["limits"]["max_nodes_per_browse"] == 20 and out["browse_calls"] >= 50 // 20 + 1
    assert {t["data_type"] for t in out["tags"]} == {"Double", "Int", "Boolean", "String"}

    t0 = time.perf_counter()
    ns = big_sim.node_ids[0].split(";")[0]
    listed = 0
    for g in range(1, EXTRA_NODES // 100 + 1):
        body = tenant.client.get(
            f"/v1/tenants/{tenant.slug}/connections/{cid}/browse",
            params={"node": f"{ns};s=Extra.G{g:03d}", "limit": 1000},
        ).json()
        listed += len(body["children"])
    paged_s = time.perf_counter() - t0
    assert listed == EXTRA_NODES
    print(
        f"\nbrowse of a {EXTRA_NODES}-node simulator: discovery walk (dry run) {walk_s:.2f} s "
        f"({out['nodes_browsed']} nodes browsed, {out['browse_calls']} Browse calls, {out['read_calls']} Read "
        f"calls); every folder listed through the browse route ({EXTRA_NODES // 100} requests) {paged_s:.2f} s; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    assert db_fetch(stack.dsn(tenant.db), "SELECT count(*) AS n FROM tag_mappings")[0]["n"] == 0  # dry run


def test_discover_adds_matching_variables_as_tags_that_stream(
    tenant: TenantHandle, stack: Settings, big_sim: SimProcess
) -> None:
    body = {"name": "disc", "protocol": "opcua", "endpoint": big_sim.endpoint, "publishing_interval_ms": 100}
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=body)
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    path = f"/v1/tenants/{tenant.slug}/connections/{cid}/discover"
    req = {"pattern": "W00?/T00[12]", "well_from_segment": 0}
    r = tenant.client.post(path, json=req)
    assert r.status_code == 200, r.text
    out = r.json()
    assert sorted(t["name"] for t in out["tags"]) == ["W001/T001", "W001/T002", "W002/T001", "W002/T002"]
    assert out["result"]["created"] == 4 and {t["well"] for t in out["tags"]} == {"W001", "W002"}
    again = tenant.client.post(path, json=req).json()
    assert again["result"]["unchanged"] == 4 and again["result"]["created"] == 0
    tags = tenant.client.get(f"/v1/tenants/{tenant.slug}/tags").json()
    assert {t["well"] for t in tags} == {"W001", "W002"} and {t["data_type"] for t in tags} == {"Double"}
    # The discovered tags are tags like any other: their initial values land.
    ids = [t["tag_id"] for t in tags]
    dsn = stack.dsn(tenant.db)
    wait_for(
        lambda: (
            db_fetch(
                dsn, "SELECT count(DISTINCT tag_id) AS n FROM scada_readings WHERE tag_id = ANY($1::int[])", ids
            )[0]["n"]
            == 4
        ),
        60,
        "discovered tags streaming",
    )
    bad = tenant.client.post(path, json={"pattern": "W[z-a]"})
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "pattern", bad.text


def test_unreachable_server_modbus_and_a_secured_login(tenant: TenantHandle) -> None:
    cid = _connection(tenant, "opc.tcp://127.0.0.1:1/never", name="down")
    r = _browse(tenant, cid)
    assert r.status_code == 502 and r.json()["error"] == "device_unreachable", r.text
    r = tenant.client.post(
        f"/v1/tenants/{tenant.slug}/connections",
        json={"name": "plc", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:1", "enabled": False},
    )
    r = _browse(tenant, r.json()["id"])
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "protocol", r.text

    secured = SimProcess(
        1, 2, 100, extra_args=["--security", "SignAndEncrypt:Basic256Sha256", "--user", "operator:s3cret"]
    )
    try:
        common = {
            "security_mode": "SignAndEncrypt",
            "security_policy": "Basic256Sha256",
            "auto_accept_server_cert": True,
            "username": "operator",
        }
        good = _connection(tenant, secured.endpoint, name="secured", password="s3cret", **common)
        r = _browse(tenant, good)
        assert r.status_code == 200 and "W001" in {c["browse_name"] for c in r.json()["children"]}, r.text
        wrong = _connection(tenant, secured.endpoint, name="wrong", password="nope", **common)
        r = _browse(tenant, wrong)
        assert r.status_code == 502 and r.json()["error"] == "device_error", r.text
    finally:
        secured.kill()
