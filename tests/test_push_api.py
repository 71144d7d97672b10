"""POST /v1/ingest/realtime through the real Serve app, writer actor, TimescaleDB and Redis:
seed 002's shapes, mapping and units, exactly once, limits, audit. Every refusal is a
documented 4xx in the one error body, never a 500."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from ingest.core.config import Settings
from tests.conftest import TenantHandle

PUSH = "/v1/ingest/realtime"


def ts(seconds_ago: float = 60.0) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).isoformat()


def point(i: int = 0, **over: Any) -> dict[str, Any]:
    p = {
        "well_id": "WELL_001",
        "timestamp": ts(600 - i * 0.001),
        "parameter_name": "wellhead_pressure",
        "value": 1000.0 + i,
        "unit": "psi",
    }
    p.update(over)
    return p


def payload(t: TenantHandle, points: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"tenant_id": t.slug, "data_points": points}
    b.update(over)
    return b


def sql(settings: Settings, t: TenantHandle, query: str, *args: Any) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(settings.dsn(t.db))
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def error_of(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["error"] == code and isinstance(body["message"], str), body
    assert isinstance(body["details"], list)
    return body


@pytest.fixture
def pushed(tenant: TenantHandle) -> Iterator[TenantHandle]:
    """A tenant with two pushed tags registered: pressure in psi, temperature in degC."""
    r = tenant.client.post(
        f"/v1/tenants/{tenant.slug}/push/tags",
        json={
            "tags": [
                {"well_id": "WELL_001", "parameter_name": "wellhead_pressure", "unit": "psi"},
                {"well_id": "WELL_001", "parameter_name": "downhole_temperature", "unit": "degC"},
            ]
        },
    )
    assert r.status_code == 201, r.text
    assert [x["created"] for x in r.json()] == [True, True]
    yield tenant


def test_auth_shapes(api: str, pushed: TenantHandle, make_tenant: Any) -> None:
    body = payload(pushed, [point()])
    with httpx.Client(base_url=api, timeout=30) as anon:
        r = anon.post(PUSH, json=body)
        error_of(r, 401, "invalid_token")
        assert r.headers["www-authenticate"] == "Bearer"
        error_of(anon.post(PUSH, json=body, headers={"Authorization": "Bearer sk_x_y"}), 401, "invalid_token")
    key = pushed.client.post(
        f"/v1/tenants/{pushed.slug}/keys", json={"name": "reader", "scopes": ["read"]}
    ).json()["api_key"]
    with httpx.Client(base_url=api, timeout=30, headers={"Authorization": f"Bearer {key}"}) as reader:
        error_of(reader.post(PUSH, json=body), 403, "insufficient_scope")
    other: TenantHandle = make_tenant()
    error_of(other.client.post(PUSH, json=body), 403, "tenant_mismatch")


def test_push_lands_converted_with_rejections_listed(settings: Settings, pushed: TenantHandle) -> None:
    pts = [
        point(0, value=100.0, unit="bar"),  # -> 1450.377 psi
        point(1, parameter_name="downhole_temperature", value=212.0, unit="degF"),  # 100 C
        point(2, well_id="WELL_404"),  # no such tag
        point(3, unit="degC"),  # wrong dimension
        point(4, timestamp=(datetime.now(UTC) + timedelta(days=3650)).isoformat()),
        point(5, value=6750.5, quality_code="UNCERTAIN", source="SCADA_OPC_UA"),
    ]
    r = pushed.client.post(PUSH, json=payload(pushed, pts, ingestion_timestamp=ts(0)))
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["status"] == "partial" and b["tenant_id"] == pushed.slug
    assert b["accepted_count"] == 3 and b["rejected_count"] == 3 and b["stored"] == "committed"
    assert b["ingestion_id"].startswith("ing_") and b["processing_time_ms"] >= 0
    assert [(x["index"], x["field"], x["reason"]) for x in b["rejected"]] == [
        (2, "data_points[2].parameter_name", "unknown_tag"),
        (3, "data_points[3].unit", "incompatible_unit"),
        (4, "data_points[4].timestamp", "timestamp_in_future"),
    ]
    rows = sql(
        settings,
        pushed,
        "SELECT r.value, r.quality, t.name FROM scada_readings r "
        "JOIN tag_mappings t USING (tag_id) ORDER BY r.time",
    )
    assert [(round(x["value"], 6), x["name"]) for x in rows] == [
        (1450.377377, "wellhead_pressure"),
        (100.0, "downhole_temperature"),
        (6750.5, "wellhead_pressure"),
    ]
    assert rows[2]["quality"] == 0x40000000
    # Registered like any other tag, under a connection of protocol push.
    conns = pushed.client.get(f"/v1/tenants/{pushed.slug}/connections").json()
    assert [(c["name"], c["protocol"], c["tag_count"]) for c in conns] == [("push:WELL_001", "push", 2)]


def test_auto_register_takes_the_first_unit(settings: Settings, tenant: TenantHandle) -> None:
    body = payload(tenant, [point(0, well_id="W9", parameter_name="hookload", value=100.0, unit="klbs")])
    b = tenant.client.post(PUSH, json=body).json()
    assert b["accepted_count"] == 0 and b["rejected"][0]["reason"] == "unknown_tag"
    r = tenant.client.patch(f"/v1/tenants/{tenant.slug}/push/settings", json={"auto_register": True})
    assert r.status_code == 200 and r.json()["auto_register"] is True
    b = tenant.client.post(PUSH, json=body).json()
    assert b["accepted_count"] == 1, b
    b = tenant.client.post(
        PUSH,
        json=payload(
            tenant,
            [
                point(1, well_id="W9", parameter_name="hookload", value=100.0, unit="kN"),
                point(2, well_id="W9", parameter_name="flow_rate", value=1.0, unit="bogus_unit"),
            ],
        ),
    ).json()
    assert b["accepted_count"] == 1 and b["rejected"][0]["reason"] == "unknown_unit", b
    tags = tenant.client.get(f"/v1/tenants/{tenant.slug}/tags").json()
    assert [(t["name"], t["unit"]) for t in tags] == [("hookload", "klbs")]
    rows = sql(settings, tenant, "SELECT value FROM scada_readings ORDER BY time")
    assert [round(x["value"], 6) for x in rows] == [100.0, 22.480894]
    audit = tenant.client.get(f"/v1/tenants/{tenant.slug}/audit", params={"action": "tag.create"}).json()["items"]
    assert audit[0]["detail"]["tags"][0]["parameter"] == "hookload"


def test_exactly_once_by_key_and_by_ingestion_id(
    settings: Settings, stack: Settings, pushed: TenantHandle
) -> None:
    body = payload(pushed, [point(i) for i in range(500)])
    key = f"k-{uuid.uuid4()}"
    first = pushed.client.post(PUSH, json=body, headers={"Idempotency-Key": key})
    again = pushed.client.post(PUSH, json=body, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert first.json()["ingestion_id"] == key
    # Same key, other body: refused rather than answered with the first request's answer.
    other = payload(pushed, [point(0, value=1.0)])
    error_of(pushed.client.post(PUSH, json=other, headers={"Idempotency-Key": key}), 409, "idempotency_conflict")
    # The answer lost from Redis: the writer's ledger still writes nothing twice.
    import redis

    r = redis.Redis.from_url(stack.redis_url)
    for k in r.scan_iter("scada:push:idem:*"):
        r.delete(k)
    third = pushed.client.post(PUSH, json=body, headers={"Idempotency-Key": key})
    assert third.status_code == 200 and third.json()["accepted_count"] == 500
    by_id = payload(pushed, [point(1000 + i) for i in range(10)], ingestion_id="agent-7-batch-1")
    a = pushed.client.post(PUSH, json=by_id).json()
    b = pushed.client.post(PUSH, json=by_id).json()
    assert a == b and a["ingestion_id"] == "agent-7-batch-1"
    n = sql(settings, pushed, "SELECT count(*) AS n FROM scada_readings")[0]["n"]
    assert n == 510
    ledger = sql(settings, pushed, "SELECT batch_id FROM ingest_ledger ORDER BY batch_id")
    assert sorted(x["batch_id"] for x in ledger) == sorted([f"push:{key}", "push:agent-7-batch-1"])


def test_bad_input_is_a_documented_400(pushed: TenantHandle) -> None:
    c = pushed.client
    r = c.post(PUSH, content=b'{"tenant_id": "x", "data_points": [', headers={"Content-Type": "application/json"})
    assert error_of(r, 400, "validation_error")["details"][0]["field"] == "body"
    pts = [point(i) for i in range(5)]
    pts[3]["value"] = "NaN"
    pts[1]["timestamp"] = "2025-11-06T14:30:00"
    pts[2]["value"] = [1]
    d = {
        x["field"]: x["error"]
        for x in error_of(c.post(PUSH, json=payload(pushed, pts)), 400, "validation_error")["details"]
    }
    assert d["data_points[3].value"] == "must be a number"
    assert "time zone" in d["data_points[1].timestamp"]
    assert "data_points[2].value" in d
    error_of(c.post(PUSH, json=payload(pushed, [point()] * 1001)), 400, "validation_error")
    error_of(c.post(PUSH, json=payload(pushed, [])), 400, "validation_error")
    error_of(c.post(PUSH, json={"data_points": [point()]}), 400, "validation_error")
    error_of(
        c.post(PUSH, json=payload(pushed, [point()]), headers={"Idempotency-Key": "a b"}), 400, "validation_error"
    )
    r = c.post(PUSH, content=b"\x1f\x8b garbage", headers={"Content-Encoding": "gzip"})
    error_of(r, 400, "validation_error")


def test_limits_per_tenant(api: str, admin: httpx.Client, pushed: TenantHandle) -> None:
    c, slug = pushed.client, pushed.slug
    # A tenant admin may not raise its own limits.
    assert c.patch(f"/v1/tenants/{slug}/push/settings", json={"requests_per_minute": 10_000}).status_code == 403
    r = admin.patch(
        f"/v1/tenants/{slug}/push/settings", json={"max_body_bytes": 4096, "max_decompressed_bytes": 20_000}
    )
    assert r.status_code == 200 and r.json()["max_body_bytes"] == 4096
    big = json.dumps(payload(pushed, [point(i) for i in range(100)])).encode()
    assert 4096 < len(big) < 20_000
    b = error_of(c.post(PUSH, content=big), 413, "payload_too_large")
    assert b["details"][0]["field"] == "Content-Length"

    def stream() -> Iterator[bytes]:  # chunked: no Content-Length to go by
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    error_of(c.post(PUSH, content=stream()), 413, "payload_too_large")
    # gzip: the wire size counts against max_body_bytes, the inflated size against its own cap
    r = c.post(PUSH, content=gzip.compress(big), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted_count"] == 100, r.text
    bomb = gzip.compress(b" " * 3_000_000)  # ~3 KB on the wire, 3 MB inflated
    assert len(bomb) < 4096
    error_of(c.post(PUSH, content=bomb, headers={"Content-Encoding": "gzip"}), 413, "payload_too_large")
    # Volume per day
    used = c.get(f"/v1/tenants/{slug}/push/settings").json()["bytes_today"]
    assert used >= len(big)
    admin.patch(f"/v1/tenants/{slug}/push/settings", json={"bytes_per_day": used + 1024})
    small = payload(pushed, [point(200)])
    assert c.post(PUSH, json=small).status_code == 200
    r = c.post(PUSH, json=payload(pushed, [point(300 + i) for i in range(20)]))
    b = error_of(r, 429, "volume_limit_exceeded")
    assert int(r.headers["retry-after"]) == b["retry_after_seconds"] > 0
    # With an Idempotency-Key, the key's claim and the bytes' charge are one: a push refused for
    # volume claims no key (its retry lands once the limit allows), a replay is charged nothing.
    keyed = json.dumps(payload(pushed, [point(400 + i) for i in range(20)])).encode()
    again = {"Idempotency-Key": f"vol-{uuid.uuid4()}"}
    error_of(c.post(PUSH, content=keyed, headers=again), 429, "volume_limit_exceeded")
    admin.patch(f"/v1/tenants/{slug}/push/settings", json={"bytes_per_day": 1 << 30})
    before = c.get(f"/v1/tenants/{slug}/push/settings").json()["bytes_today"]
    r = c.post(PUSH, content=keyed, headers=again)
    assert r.status_code == 200 and r.json()["accepted_count"] == 20, r.text
    replay = c.post(PUSH, content=keyed, headers=again)
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == r.json()
    assert c.get(f"/v1/tenants/{slug}/push/settings").json()["bytes_today"] == before + len(keyed)
    # Requests per minute
    admin.patch(f"/v1/tenants/{slug}/push/settings", json={"requests_per_minute": 2, "bytes_per_day": 1 << 30})
    codes = [c.post(PUSH, json=small).status_code for _ in range(4)]
    assert 429 in codes and 500 not in codes
    r = c.post(PUSH, json=small)
    b = error_of(r, 429, "rate_limit_exceeded")
    assert 0 < b["retry_after_seconds"] <= 60 and r.headers["retry-after"] == str(b["retry_after_seconds"])


def test_audit_paged_and_filtered(pushed: TenantHandle, make_tenant: Any) -> None:
    c, slug = pushed.client, pushed.slug
    for i in range(3):
        assert c.post(PUSH, json=payload(pushed, [point(i)])).status_code == 200
    page = c.get(f"/v1/tenants/{slug}/audit", params={"action": "push.ingest", "limit": 2})
    assert page.status_code == 200, page.text
    first = page.json()
    assert len(first["items"]) == 2 and first["next_before_id"] is not None
    row = first["items"][0]
    assert row["detail"]["accepted"] == 1 and row["detail"]["source"]
    assert row["key_id"] and row["detail"]["ingestion_id"].startswith("ing_")
    rest = c.get(
        f"/v1/tenants/{slug}/audit", params={"action": "push.ingest", "before_id": first["next_before_id"]}
    ).json()
    assert len(rest["items"]) == 1 and rest["next_before_id"] is None
    every = c.get(f"/v1/tenants/{slug}/audit", params={"action": "tag.*"}).json()["items"]
    assert {r["action"] for r in every} == {"tag.create"}
    later = c.get(
        f"/v1/tenants/{slug}/audit", params={"since": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    )
    assert later.json()["items"] == []
    assert c.get(f"/v1/tenants/{slug}/audit", params={"before_id": 2**64}).status_code == 422
    other: TenantHandle = make_tenant()
    assert other.client.get(f"/v1/tenants/{slug}/audit").status_code == 403


def test_database_away_a_push_is_spooled_a_full_spool_is_a_503_and_nothing_is_lost(
    settings: Settings, pushed: TenantHandle
) -> None:
    """200 only once the readings are committed or durably spooled; while the spool is full, 503
    with Retry-After and nothing written; the same request again, once there is room, lands."""
    import redis

    su = settings.dsn("postgres")

    async def admin(query: str, *args: Any) -> None:
        conn = await asyncpg.connect(su)
        try:
            await conn.execute(query, *args)
        finally:
            await conn.close()

    stored = "SELECT count(*) AS n FROM scada_readings WHERE quality = 0"
    asyncio.run(admin(f'ALTER DATABASE "{pushed.db}" WITH ALLOW_CONNECTIONS false'))
    asyncio.run(admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", pushed.db))
    rows_key = f"scada:spool:{pushed.slug}:rows"
    r = redis.Redis.from_url(settings.redis_url)
    filled = 0
    try:
        first = pushed.client.post(
            PUSH, json=payload(pushed, [point(i) for i in range(10)]), headers={"Idempotency-Key": "spool-1"}
        )
        assert first.status_code == 200, first.text
        assert first.json()["stored"] == "spooled" and first.json()["accepted_count"] == 10
        # A full spool: its row count put at the bound (filling 20 million rows for real would
        # take minutes); the writer's own check then refuses the next batch.
        filled = settings.spool_max_rows - int(r.get(rows_key) or 0)
        r.incrby(rows_key, filled)
        body = payload(pushed, [point(100 + i) for i in range(5)])
        full = pushed.client.post(PUSH, json=body, headers={"Idempotency-Key": "spool-2"})
        error_of(full, 503, "service_unavailable")
        assert int(full.headers["Retry-After"]) > 0
        assert "spool is full" in full.json()["message"]
        r.decrby(rows_key, filled)
        filled = 0
    finally:
        if filled:
            r.decrby(rows_key, filled)
        asyncio.run(admin(f'ALTER DATABASE "{pushed.db}" WITH ALLOW_CONNECTIONS true'))
    # The database back: the spooled request is committed from the spool, the refused one was
    # never written, and sent again it lands (its key was not kept as answered).
    deadline = time.monotonic() + 60
    while int(sql(settings, pushed, stored)[0]["n"]) < 10:
        assert time.monotonic() < deadline, "the spooled readings never landed"
        time.sleep(0.2)
    assert int(sql(settings, pushed, stored)[0]["n"]) == 10
    again = pushed.client.post(PUSH, json=body, headers={"Idempotency-Key": "spool-2"})
    assert again.status_code == 200, again.text
    assert again.json()["stored"] == "committed" and again.json()["accepted_count"] == 5
    assert int(sql(settings, pushed, stored)[0]["n"]) == 15


async def test_pushed_values_are_validated_and_read_like_device_values(
    api: str, settings: Settings, pushed: TenantHandle
) -> None:
    """Pushed readings meet their tag's validation rules, and reach the latest values, the live
    stream and the rollups as a device's do; the tag's edit is in the audit log."""
    from ingest.core.models import Quality, quality_as_int4
    from tests.live_client import sse_events

    c, slug = pushed.client, pushed.slug
    db = await asyncpg.connect(settings.dsn(pushed.db))
    tp = {t["name"]: t["tag_id"] for t in c.get(f"/v1/tenants/{slug}/tags").json()}["wellhead_pressure"]
    r = c.patch(f"/v1/tenants/{slug}/tags/{tp}", json={"valid_max": 5000.0, "out_of_range": "flag"})
    assert r.status_code == 200, r.text
    edits = c.get(f"/v1/tenants/{slug}/audit", params={"action": "tag.update"}).json()["items"]
    assert edits[0]["detail"] == {"tag_id": tp, "fields": ["out_of_range", "valid_max"]}
    # The writer reloads its rules within seconds: push 6,000 psi until one lands flagged.
    flagged = int(quality_as_int4(Quality.BAD_OUT_OF_RANGE))
    deadline = time.monotonic() + 60
    k = 0
    while True:
        k += 1
        body = payload(pushed, [point(k, value=6000.0, timestamp=ts(300 - k * 0.01))])
        assert c.post(PUSH, json=body).json()["accepted_count"] == 1
        if await db.fetchval("SELECT count(*) FROM scada_readings WHERE quality = $1", flagged):
            break
        assert time.monotonic() < deadline, "the edited rule never reached the writer"
        await asyncio.sleep(0.5)
    # Latest values and the live stream: a snapshot, then the next push as an update.
    ok = payload(pushed, [point(0, value=1234.5, unit="psi", timestamp=ts(1))])
    assert c.post(PUSH, json=ok).status_code == 200
    deadline = time.monotonic() + 30
    while (latest := c.get(f"/v1/tenants/{slug}/latest", params={"tag_id": tp}).json())[0]["value"] != 1234.5:
        assert time.monotonic() < deadline, latest  # the fan-out follows the commit
        await asyncio.sleep(0.2)
    assert (latest[0]["unit"], latest[0]["quality_name"]) == ("psi", "Good")
    ticket = c.post(f"/v1/tenants/{slug}/stream-tickets").json()
    async with (
        httpx.AsyncClient(timeout=60) as ac,
        ac.stream(
            "GET",
            f"{ticket['live_url']}/v1/tenants/{slug}/stream",
            params={"ticket": ticket["ticket"]},
            headers={"Accept": "text/event-stream"},
        ) as stream,
    ):
        events = sse_events(stream)
        snap = await anext(events)
        assert snap["type"] == "snapshot" and {v["tag_id"]: v["value"] for v in snap["values"]}[tp] == 1234.5
        bar = payload(pushed, [point(0, value=100.0, unit="bar", timestamp=ts(0.5))])
        assert c.post(PUSH, json=bar).json()["accepted_count"] == 1
        ev = await anext(e async for e in events if e["type"] == "update")
        assert round({v["tag_id"]: v["value"] for v in ev["values"]}[tp], 3) == 1450.377
    # Rollups: the refresher in the writer actor takes the pushed rows like any others.
    good = "SELECT count(*) FROM scada_readings WHERE tag_id = $1 AND quality = 0"
    rolled = "SELECT coalesce(sum(n), 0) FROM rollup_1m WHERE tag_id = $1"
    expected = await db.fetchval(good, tp)
    assert expected == k - 1 + 2  # the pushes before the rule took, and the two good ones since
    deadline = time.monotonic() + 60
    while await db.fetchval(rolled, tp) != expected:
        assert time.monotonic() < deadline, "pushed readings never reached the rollups"
        await asyncio.sleep(0.5)
    await db.close()
