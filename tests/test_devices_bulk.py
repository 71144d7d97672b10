"""Tags in bulk through the live API: CSV and JSON import (create, merge, replace, dry run), the
CSV export that imports back unchanged, and 10,000 tags in one import."""

from __future__ import annotations

import csv
import io
import os
import time
from typing import Any

import httpx

from tests.conftest import TenantHandle

CSV_HEADERS = {"Content-Type": "text/csv"}


def _conn(tenant: TenantHandle, protocol: str = "opcua", name: str = "bulk") -> str:
    body: dict[str, Any] = {
        "name": name,
        "protocol": protocol,
        "endpoint": "opc.tcp://127.0.0.1:1/never" if protocol == "opcua" else "tcp://127.0.0.1:1",
        "enabled": False,
    }
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _import(
    tenant: TenantHandle, cid: str, body: str, mode: str = "create", dry_run: bool = False
) -> httpx.Response:
    return tenant.client.post(
        f"/v1/tenants/{tenant.slug}/connections/{cid}/tags/import",
        params={"mode": mode, "dry_run": str(dry_run).lower()},
        content=body.encode(),
        headers=CSV_HEADERS,
    )


def _export(tenant: TenantHandle, cid: str) -> str:
    r = tenant.client.get(f"/v1/tenants/{tenant.slug}/connections/{cid}/tags/export")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
    return r.text


def _tags(tenant: TenantHandle, cid: str) -> dict[str, dict[str, Any]]:
    r = tenant.client.get(f"/v1/tenants/{tenant.slug}/connections/{cid}")
    assert r.status_code == 200, r.text
    return {t["name"]: t for t in r.json()["tags"]}


def test_dry_run_reports_each_bad_row_by_number_and_writes_nothing(tenant: TenantHandle) -> None:
    cid = _conn(tenant)
    text = (
        "name,node_id,well,scaling_factor,deadband_type,deadband_value\n"
        "ok_1,ns=2;s=W001.T001,W001,0.1,,\n"  # row 2
        "bad_node,i=abc,W001,,,\n"  # row 3: a node id no session can parse
        "ok_1,ns=2;s=W001.T003,,,,\n"  # row 4: the name again
        "bad_scale,ns=2;s=W001.T004,,lots,,\n"  # row 5: not a number
        "bad_db,ns=2;s=W001.T005,,,percent,150\n"  # row 6: a percent deadband above 100
        "no_type,ns=2;s=W001.T006,,,,2.5\n"  # row 7: a deadband value without its type
        "ok_2,ns=2;s=W001.T007,W002,,absolute,0.5\n"  # row 8
    )
    r = _import(tenant, cid, text, dry_run=True)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["rows"], out["created"], out["dry_run"]) == (7, 2, True)
    assert [(e["row"], e["field"]) for e in out["errors"]] == [
        (3, "node_id"),
        (4, "name"),
        (5, "scaling_factor"),
        (6, "deadband_value"),
        (7, "deadband_value"),
    ], out["errors"]
    assert _tags(tenant, cid) == {}

    # The same file for real: 422, every bad row in details, still nothing written.
    r = _import(tenant, cid, text)
    assert r.status_code == 422, r.text
    fields = [d["field"] for d in r.json()["details"]]
    assert fields[:2] == ["rows.3.node_id", "rows.4.name"] and len(fields) == 5, fields
    assert _tags(tenant, cid) == {}

    # A header the format does not know is row 1.
    r = _import(tenant, cid, "name,nodeid\nx,ns=2;s=A\n", dry_run=True)
    assert [(e["row"], e["field"]) for e in r.json()["errors"]] == [(1, "nodeid")]


def test_modbus_rows_are_checked_like_single_registration(tenant: TenantHandle) -> None:
    cid = _conn(tenant, "modbus")
    text = (
        "name,modbus_register,modbus_address,modbus_data_type,modbus_length,sampling_interval_ms\n"
        "coil_ok,coil,1,bool,,\n"
        "coil_no_type,coil,2,,,\n"  # row 3: a coil needs modbus_data_type bool
        "str_no_len,holding,10,string,,\n"  # row 4: a string states its length
        "sampled,holding,20,uint16,,100\n"  # row 5: an OPC UA setting on a Modbus tag
        "hr,holding,30,float32,,\n"
    )
    out = _import(tenant, cid, text, dry_run=True).json()
    assert [(e["row"], e["field"]) for e in out["errors"]] == [
        (3, "modbus_data_type"),
        (4, "modbus_length"),
        (5, "sampling_interval_ms"),
    ], out
    assert out["created"] == 2


def test_merge_keeps_tag_ids_replace_deletes_the_rest_and_json_works(tenant: TenantHandle) -> None:
    cid = _conn(tenant)
    r = _import(tenant, cid, "name,node_id,unit\na,ns=2;s=A,bar\nb,ns=2;s=B,bar\nc,ns=2;s=C,bar\n")
    assert r.status_code == 200 and r.json()["created"] == 3, r.text
    before = _tags(tenant, cid)

    # merge: only the columns given change; a new name is added.
    r = _import(tenant, cid, "name,node_id\na,ns=2;s=A2\nb,ns=2;s=B\nd,ns=2;s=D\n", mode="merge")
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in ("created", "updated", "unchanged", "deleted")} == {
        "created": 1,
        "updated": 1,
        "unchanged": 1,
        "deleted": 0,
    }
    after = _tags(tenant, cid)
    assert after["a"]["tag_id"] == before["a"]["tag_id"] and after["a"]["node_id"] == "ns=2;s=A2"
    assert after["a"]["unit"] == "bar"  # not in the file: kept

    # create refuses names that exist.
    r = _import(tenant, cid, "name,node_id\na,ns=2;s=A\n")
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "rows.2.name", r.text

    # replace (JSON): the file is the whole set.
    r = tenant.client.post(
        f"/v1/tenants/{tenant.slug}/connections/{cid}/tags/import",
        params={"mode": "replace"},
        json=[{"name": "a", "node_id": "ns=2;s=A3", "queue_size": 5}, {"name": "e", "node_id": "i=85"}],
    )
    assert r.status_code == 200, r.text
    assert (r.json()["updated"], r.json()["created"], r.json()["deleted"]) == (1, 1, 3)
    final = _tags(tenant, cid)
    assert set(final) == {"a", "e"} and final["a"]["tag_id"] == before["a"]["tag_id"]
    assert final["a"]["queue_size"] == 5

    bad = tenant.client.post(
        f"/v1/tenants/{tenant.slug}/connections/{cid}/tags/import",
        params={"dry_run": "true"},
        json=[{"name": "x", "node_id": "ns=2;s=X", "colour": "red"}],
    )
    assert bad.status_code == 200 and bad.json()["errors"][0]["field"] == "colour", bad.text


def test_export_imports_back_unchanged(tenant: TenantHandle) -> None:
    cid = _conn(tenant)
    rows = [
        {"name": "plain", "node_id": "ns=2;s=W001.T001"},
        {
            "name": "everything, quoted",
            "node_id": 'ns=2;s=W001."T,2"',
            "unit": "psi",
            "scaling_factor": 0.1,
            "offset": -14.7,
            "valid_min": 0,
            "valid_max": 5000.5,
            "deadband": 0.25,
            "out_of_range": "reject",
            "zscore_threshold": None,
            "well": "W001",
            "data_type": "Float",
            "sampling_interval_ms": 250,
            "queue_size": 10,
            "discard_oldest": False,
            "deadband_type": "percent",
            "deadband_value": 2.5,
        },
        {"name": "ünïcode", "node_id": "ns=3;s=Kessel/Druck", "well": "Brunnen 7"},
    ]
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections/{cid}/tags/import", json={"tags": rows})
    assert r.status_code == 200, r.text
    first = _export(tenant, cid)
    ids = {n: t["tag_id"] for n, t in _tags(tenant, cid).items()}

    # Back into the same connection: nothing changes, tag ids included.
    r = _import(tenant, cid, first, mode="merge")
    assert r.status_code == 200 and (r.json()["unchanged"], r.json()["updated"]) == (3, 0), r.text
    r = _import(tenant, cid, first, mode="replace")
    assert r.status_code == 200 and (r.json()["unchanged"], r.json()["deleted"]) == (3, 0), r.text
    assert {n: t["tag_id"] for n, t in _tags(tenant, cid).items()} == ids
    assert _export(tenant, cid) == first

    # Into a new connection: the same file comes out.
    other = _conn(tenant, name="copy")
    assert _import(tenant, other, first).status_code == 200
    assert _export(tenant, other) == first
    parsed = list(csv.DictReader(io.StringIO(first)))
    assert parsed[1]["zscore_threshold"] == "" and parsed[1]["discard_oldest"] == "false"


def test_ten_thousand_tags_in_one_import(tenant: TenantHandle) -> None:
    n = int(os.environ.get("SCADA_BULK_TAGS", "10000"))
    cid = _conn(tenant)
    lines = ["name,node_id,well,unit,scaling_factor,sampling_interval_ms"]
    lines += [
        f"w{i // 100:03d}_t{i % 100:03d},ns=2;s=W{i // 100:03d}.T{i % 100:03d},W{i // 100:03d},bar,0.1,500"
        for i in range(n)
    ]
    text = "\n".join(lines) + "\n"
    t0 = time.perf_counter()
    r = _import(tenant, cid, text, dry_run=True)
    dry_s = time.perf_counter() - t0
    assert r.status_code == 200 and r.json()["created"] == n and not r.json()["errors"], r.text[:500]
    t0 = time.perf_counter()
    r = _import(tenant, cid, text)
    import_s = time.perf_counter() - t0
    assert r.status_code == 200 and r.json()["created"] == n, r.text[:500]
    t0 = time.perf_counter()
    r = _import(tenant, cid, text, mode="merge")
    merge_s = time.perf_counter() - t0
    assert r.json()["unchanged"] == n
    t0 = time.perf_counter()
    exported = _export(tenant, cid)
    export_s = time.perf_counter() - t0
    assert exported.count("\n") == n + 1
    listed = tenant.client.get(f"/v1/tenants/{tenant.slug}/connections").json()
    assert [c["tag_count"] for c in listed] == [n]
    print(
        f"\nbulk import of {n} tags ({len(text) / 1e6:.2f} MB CSV): dry run {dry_s:.2f} s, "
        f"import {import_s:.2f} s, merge of the same file {merge_s:.2f} s, export {export_s:.2f} s; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
