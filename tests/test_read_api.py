"""The read side through the real Serve app and writer actor: resolutions, cursors, CSV, text
tags, latest values with Redis flushed, wells, retention, and bad input naming its field."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest
import ray
import redis

from actors.common import writer_name
from ingest.core.batch import ReadingBatch, TextBatch
from ingest.core.config import Settings
from ingest.core.models import Quality, quality_as_int4
from ingest.read.retention import apply_retention
from tests.conftest import TenantHandle
from tests.helpers import db_fetch, wait_for

BAD = quality_as_int4(Quality.BAD)
CONN: dict[str, Any] = {
    "name": "rtu-1",
    "protocol": "opcua",
    "endpoint": "opc.tcp://127.0.0.1:1/never",
    "enabled": False,
    "tags": [
        {"name": "tubing_pressure", "node_id": "ns=2;s=W1.TP", "unit": "bar", "well": "W001"},
        {"name": "casing_pressure", "node_id": "ns=2;s=W1.CP", "unit": "bar", "well": "W001"},
        {"name": "status", "node_id": "ns=2;s=W1.ST", "data_type": "String", "well": "W001"},
        {"name": "flow", "node_id": "ns=2;s=W2.F", "unit": "m3/h", "well": "W002"},
    ],
}


def _us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


class Feed:
    """Writes batches through the tenant's writer actor, the path devices use."""

    def __init__(self, stack: Settings, slug: str) -> None:
        self.actor = wait_for(lambda: self._actor(stack, slug), 60, "writer actor running")
        self.n = 0

    @staticmethod
    def _actor(stack: Settings, slug: str) -> Any:
        try:
            return ray.get_actor(writer_name(slug), namespace=stack.namespace)
        except ValueError:
            return None

    def numeric(self, rows: list[tuple[int, datetime, float, int]]) -> None:
        self.n += 1
        b = ReadingBatch(
            f"test:{self.n}",
            np.array([_us(r[1]) for r in rows], np.int64),
            np.array([r[0] for r in rows], np.int32),
            np.array([r[2] for r in rows], np.float64),
            np.array([r[3] for r in rows], np.int32),
        )
        out = ray.get(self.actor.write.remote(b.to_arrow()), timeout=60)
        assert out["rows"] == len(rows) and not out["spooled"], out

    def text(self, rows: list[tuple[int, datetime, str]]) -> None:
        self.n += 1
        b = TextBatch(
            f"text:{self.n}",
            np.array([_us(r[1]) for r in rows], np.int64),
            np.array([r[0] for r in rows], np.int32),
            [r[2] for r in rows],
            np.zeros(len(rows), np.int32),
        )
        ray.get(self.actor.write.remote(b.to_arrow()), timeout=60)


@pytest.fixture
def loaded(tenant: TenantHandle, stack: Settings) -> dict[str, Any]:
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=CONN)
    assert r.status_code == 201, r.text
    ids = {t["name"]: t["tag_id"] for t in r.json()["tags"]}
    feed = Feed(stack, tenant.slug)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    t0 = now - timedelta(hours=2)
    tp, cp = ids["tubing_pressure"], ids["casing_pressure"]
    # Two hours every 10 s for two tags; one Bad reading; and a day three days back.
    rows = [(tp, t0 + timedelta(seconds=10 * k), float(k), 0) for k in range(720)]
    rows += [(cp, t0 + timedelta(seconds=10 * k), 100.0 + k, 0) for k in range(720)]
    rows.append((tp, t0 + timedelta(seconds=5), 9999.0, BAD))
    feed.numeric(rows)
    old = (now - timedelta(days=3)).replace(hour=12, minute=0, second=0)
    feed.numeric([(tp, old + timedelta(minutes=k), 1.0, 0) for k in range(60)])
    feed.text(
        [
            (ids["status"], now - timedelta(minutes=30), "RUNNING"),
            (ids["status"], now - timedelta(minutes=10), "STOPPED"),
        ]
    )
    return {"ids": ids, "now": now, "t0": t0, "old": old, "feed": feed}


def _get(c: httpx.Client, slug: str, **params: Any) -> httpx.Response:
    return c.get(f"/v1/tenants/{slug}/readings", params=params)


def _rolled_up(stack: Settings, tenant: TenantHandle, n: int) -> bool:
    rows = db_fetch(stack.dsn(tenant.db), "SELECT coalesce(sum(n), 0) AS n FROM rollup_1d")
    return int(rows[0]["n"]) == n


def test_resolutions_cursor_csv_and_text(tenant: TenantHandle, stack: Settings, loaded: dict[str, Any]) -> None:
    ids, now, t0, c, s = loaded["ids"], loaded["now"], loaded["t0"], tenant.client, tenant.slug
    # The refresher in the writer actor rolls everything up (1,500 good readings).
    wait_for(lambda: _rolled_up(stack, tenant, 1500), 60, "rollups written by the refresher")
    # By well and tag names, raw: quality as code and name, the Bad reading included.
    r = _get(
        c,
        s,
        well="W001",
        tag=["tubing_pressure"],
        start=t0.isoformat(),
        end=(t0 + timedelta(minutes=1)).isoformat(),
        resolution="raw",
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resolution"] == "raw" and body["fields"][:4] == ["time", "value", "quality", "quality_name"]
    pts = body["series"][0]["points"]
    assert [p[1] for p in pts] == [0.0, 9999.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert pts[1][2] == int(Quality.BAD) and pts[1][3] == "Bad" and pts[0][3] == "Good"
    assert body["series"][0]["well"] == "W001" and body["series"][0]["unit"] == "bar"
    # auto follows seed 003, then max_points: 2 h is raw (720 points), 1m past 500 points.
    both = [ids["tubing_pressure"], ids["casing_pressure"]]
    span = {"start": t0.isoformat(), "end": now.isoformat()}
    assert _get(c, s, tag_id=both, **span).json()["resolution"] == "raw"
    one_m = _get(c, s, tag_id=both, max_points=500, **span).json()
    assert one_m["resolution"] == "1m" and "bad_count" in one_m["fields"]
    f = {k: i for i, k in enumerate(one_m["fields"])}
    first = one_m["series"][0]["points"][0]
    assert first[f["count"]] == 6 and first[f["bad_count"]] == 1 and first[f["max"]] == 5.0
    assert sum(p[f["count"]] for p in one_m["series"][1]["points"]) == 720
    week = _get(c, s, tag_id=both, start=(now - timedelta(days=4)).isoformat(), end=now.isoformat()).json()
    assert week["resolution"] == "1h"  # 4 days is 1-minute by the rule, 5,760 points: coarser
    assert sum(p[f["count"]] for p in week["series"][0]["points"]) == 780
    # The newest bucket comes from raw: a reading written now is in the answer at once.
    loaded["feed"].numeric([(ids["flow"], now + timedelta(seconds=1), 42.0, 0)])
    fresh = _get(
        c,
        s,
        tag_id=[ids["flow"]],
        resolution="1d",
        start=t0.isoformat(),
        end=(now + timedelta(minutes=1)).isoformat(),
    ).json()
    assert fresh["series"][0]["points"][-1][f["last"]] == 42.0
    # Past limit: a cursor, and following it gives every row exactly once.
    page = _get(c, s, tag_id=both, resolution="raw", limit=500, **span).json()
    assert page["next"] and sum(len(x["points"]) for x in page["series"]) == 500
    seen = [(x["tag_id"], p[0]) for x in page["series"] for p in x["points"]]
    while page["next"]:
        page = _get(c, s, tag_id=both, resolution="raw", limit=500, cursor=page["next"], **span).json()
        seen += [(x["tag_id"], p[0]) for x in page["series"] for p in x["points"]]
    assert len(seen) == len(set(seen)) == 1441
    # A cursor with another query: 422 naming it.
    first_page = _get(c, s, tag_id=both, resolution="raw", limit=10, **span).json()
    r = _get(c, s, tag_id=[ids["tubing_pressure"]], resolution="raw", limit=10, cursor=first_page["next"], **span)
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "cursor"
    # Text tags, raw and aggregated.
    txt = _get(c, s, tag_id=[ids["status"]], resolution="raw", **span).json()
    assert [p[1] for p in txt["series"][0]["points"]] == ["RUNNING", "STOPPED"]
    agg = _get(c, s, tag_id=[ids["status"]], resolution="1h", **span).json()
    assert sum(p[f["count"]] for p in agg["series"][0]["points"]) == 2
    assert agg["series"][0]["points"][-1][f["last"]] == "STOPPED"
    # CSV for a spreadsheet: every row, no cursor needed.
    r = c.get(
        f"/v1/tenants/{s}/readings",
        headers={"Accept": "text/csv"},
        params={"tag_id": both, "resolution": "raw", "limit": 100, **span},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(r.text)))
    assert table[0][:6] == ["tag_id", "well", "tag", "unit", "resolution", "time"]
    assert len(table) == 1 + 1441


def test_bad_input_names_the_field(tenant: TenantHandle, make_tenant: Any, loaded: dict[str, Any]) -> None:
    c, s, ids = tenant.client, tenant.slug, loaded["ids"]
    now = loaded["now"]
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"tag_id": ids["flow"], "start": now.isoformat(), "end": (now - timedelta(hours=1)).isoformat()},
            "start",
        ),
        ({"tag_id": 99999}, "tag_id"),
        ({"tag_id": 2**31}, "tag_id"),
        ({"tag_id": list(range(1, 102))}, "tag_id"),
        ({"well": "nowhere", "tag": "x"}, "well"),
        ({"well": "W001", "tag": "no_such_tag"}, "tag"),
        ({"tag_id": ids["flow"], "resolution": "5m"}, "resolution"),
        ({"tag_id": ids["flow"], "cursor": "garbage"}, "cursor"),
        ({"tag_id": ids["flow"], "start": "yesterday"}, "start"),
    ]
    for params, field in cases:
        r = _get(c, s, **params)
        assert r.status_code == 422, (params, r.text)
        body = r.json()
        assert body["error"] and body["message"]
        assert field in [d["field"] for d in body["details"]], (params, body)
    other: TenantHandle = make_tenant()
    for path in ("readings?tag_id=1", "latest?tag_id=1", "wells", "settings"):
        assert other.client.get(f"/v1/tenants/{s}/{path}").status_code == 403, path
    assert other.client.patch(f"/v1/tenants/{s}", json={"timezone": "UTC"}).status_code == 403
    r = c.patch(f"/v1/tenants/{s}", json={"timezone": "Mars/Olympus"})
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "timezone"


def test_latest_from_redis_then_database_after_flush(
    tenant: TenantHandle, stack: Settings, loaded: dict[str, Any]
) -> None:
    c, s, ids = tenant.client, tenant.slug, loaded["ids"]
    key = f"scada:latest:{s}"
    rds = redis.Redis.from_url(stack.redis_url)
    wait_for(lambda: rds.hlen(key) >= 2, 30, "fan-out wrote latest values")
    r = c.get(f"/v1/tenants/{s}/latest", params={"well": "W001"})
    assert r.status_code == 200, r.text
    before = {v["name"]: v for v in r.json()}
    assert set(before) == {"tubing_pressure", "casing_pressure", "status"}
    tp = before["tubing_pressure"]
    # The batch from three days back came later; it does not replace the newer latest value.
    assert tp["source"] == "redis" and tp["value"] == 719.0 and tp["unit"] == "bar"
    assert tp["quality_name"] == "Good" and tp["age_s"] > 0
    assert before["status"]["value"] == "STOPPED" and before["status"]["source"] == "database"
    rds.delete(key)  # what a Redis restart without persistence leaves
    after = {
        v["name"]: v
        for v in c.get(
            f"/v1/tenants/{s}/latest", params={"tag_id": [ids["tubing_pressure"], ids["casing_pressure"]]}
        ).json()
    }
    assert after["tubing_pressure"]["source"] == "database"
    for name in ("tubing_pressure", "casing_pressure"):
        assert (after[name]["time"], after[name]["value"]) == (before[name]["time"], before[name]["value"])
    rds.close()
    wells = c.get(f"/v1/tenants/{s}/wells").json()
    assert [(w["name"], w["tag_count"]) for w in wells] == [("W001", 3), ("W002", 1)]
    tags = c.get(f"/v1/tenants/{s}/tags").json()
    assert {t["name"]: t["well"] for t in tags}["flow"] == "W002"


def test_retention_drops_raw_and_rollups_still_answer(
    tenant: TenantHandle, stack: Settings, loaded: dict[str, Any]
) -> None:
    c, s, ids, old = tenant.client, tenant.slug, loaded["ids"], loaded["old"]
    wait_for(lambda: _rolled_up(stack, tenant, 1500), 60, "rollups written by the refresher")
    r = c.patch(f"/v1/tenants/{s}", json={"raw_retention_days": 1, "timezone": "Europe/Berlin"})
    assert r.status_code == 200 and r.json()["raw_retention_days"] == 1, r.text
    assert r.json()["rollup_retention_days"] == 730

    async def run() -> dict[str, int]:
        conn = await asyncpg.connect(stack.dsn(tenant.db))
        try:
            return (await apply_retention(conn)).dropped
        finally:
            await conn.close()

    dropped = asyncio.run(run())
    assert dropped["scada_readings"] >= 1 and dropped["rollup_1m"] == 0
    span = {"start": (old - timedelta(hours=1)).isoformat(), "end": (old + timedelta(hours=2)).isoformat()}
    raw = _get(c, s, tag_id=[ids["tubing_pressure"]], resolution="raw", **span).json()
    assert raw["series"][0]["points"] == [] and raw["raw_dropped_before"] is not None
    assert "dropped by retention" in raw["notices"][0]
    auto = _get(c, s, tag_id=[ids["tubing_pressure"]], **span).json()
    assert auto["resolution"] == "1m"
    f = {k: i for i, k in enumerate(auto["fields"])}
    assert sum(p[f["count"]] for p in auto["series"][0]["points"]) == 60
    days = _get(c, s, tag_id=[ids["tubing_pressure"]], resolution="1d", **span).json()
    assert days["timezone"] == "Europe/Berlin"
    assert sum(p[f["count"]] for p in days["series"][0]["points"]) == 60
