"""Live values through the real Serve app and writer actor: tickets, SSE and WebSocket with a
snapshot then updates, resume after an id with nothing missed, reset past the stream's window,
filters, and other tenants refused before the upgrade."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import InvalidStatus

from ingest.core.config import Settings
from ingest.write.fanout import live_key
from tests.conftest import TenantHandle
from tests.live_client import WsReader, sse_events, ws_connect
from tests.test_read_api import CONN, Feed

SSE = {"Accept": "text/event-stream"}


@pytest.fixture
def live(tenant: TenantHandle, stack: Settings) -> dict[str, Any]:
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=CONN)
    assert r.status_code == 201, r.text
    ids = {t["name"]: t["tag_id"] for t in r.json()["tags"]}
    return {"ids": ids, "feed": Feed(stack, tenant.slug)}


def _rows(ids: dict[str, int], k: int) -> list[tuple[int, datetime, float, int]]:
    t = datetime.now(UTC) - timedelta(seconds=1)
    return [(ids["tubing_pressure"], t, float(k), 0), (ids["flow"], t, 1000.0 + k, 0)]


async def _write(feed: Feed, ids: dict[str, int], k: int) -> None:
    await asyncio.to_thread(feed.numeric, _rows(ids, k))


def _by_tag(ev: dict[str, Any]) -> dict[int, Any]:
    return {v["tag_id"]: v["value"] for v in ev["values"]}


async def test_sse_by_ticket_snapshot_then_updates_and_ticket_rules(
    tenant: TenantHandle, live: dict[str, Any], api: str, make_tenant: Any
) -> None:
    ids, feed, slug = live["ids"], live["feed"], tenant.slug
    await _write(feed, ids, 1)
    ticket = tenant.client.post(f"/v1/tenants/{slug}/stream-tickets")
    assert ticket.status_code == 201, ticket.text
    t, live_url = ticket.json()["ticket"], ticket.json()["live_url"]
    # The answer names the replica's own port (Serve's direct ingress), not the proxy's.
    assert live_url and live_url.startswith("http://127.0.0.1:") and live_url != api
    async with httpx.AsyncClient(base_url=api, timeout=60) as c:
        # Needs Accept: text/event-stream (EventSource sends it): a plain GET is not left hanging.
        plain = await c.get(f"/v1/tenants/{slug}/stream", headers={"Authorization": f"Bearer {tenant.key}"})
        assert plain.status_code == 406 and plain.json()["error"] == "not_acceptable"
        async with c.stream("GET", f"{live_url}/v1/tenants/{slug}/stream", params={"ticket": t}, headers=SSE) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["access-control-allow-origin"] == "*"  # a page from the proxy's origin reads it
            events = sse_events(r)
            snap = await anext(events)
            assert snap["type"] == "snapshot" and _by_tag(snap)[ids["tubing_pressure"]] == 1.0
            await _write(feed, ids, 2)
            ev = await anext(events)
            assert ev["type"] == "update" and ev["id"] > snap["id"] and ev["commit_us"] > 0
            assert _by_tag(ev) == {ids["tubing_pressure"]: 2.0, ids["flow"]: 1002.0}
        # Single use; an API key in the URL is refused (with a pointer to tickets).
        again = await c.get(f"/v1/tenants/{slug}/stream", params={"ticket": t}, headers=SSE)
        assert again.status_code == 401 and again.json()["error"] == "invalid_token"
        key = await c.get(f"/v1/tenants/{slug}/stream", params={"ticket": tenant.key}, headers=SSE)
        assert key.status_code == 401 and "never accepted in a URL" in key.json()["message"]
        # Another tenant's ticket or key: 403, for SSE and before the WebSocket upgrade.
        other: TenantHandle = make_tenant()
        t_other = other.client.post(f"/v1/tenants/{other.slug}/stream-tickets").json()["ticket"]
        r = await c.get(f"/v1/tenants/{slug}/stream", params={"ticket": t_other}, headers=SSE)
        assert r.status_code == 403 and r.json()["error"] == "tenant_mismatch"
        r = await c.get(f"/v1/tenants/{slug}/stream", headers={**SSE, "Authorization": f"Bearer {other.key}"})
        assert r.status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(api, slug, other.key):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(api, slug):
            pass
    assert refused.value.response.status_code in (401, 403)


async def test_websocket_filter_resume_and_reset(
    tenant: TenantHandle, live: dict[str, Any], api: str, stack: Settings
) -> None:
    ids, feed, slug = live["ids"], live["feed"], tenant.slug
    tp, flow = ids["tubing_pressure"], ids["flow"]
    await _write(feed, ids, 1)
    async with ws_connect(api, slug, tenant.key, well="W001") as conn:
        assert conn.subprotocol == "scada.live"
        w = WsReader(conn)
        snap = await w.next()
        assert snap["type"] == "snapshot" and _by_tag(snap) == {tp: 1.0}  # W001's tags only
        await _write(feed, ids, 2)
        ev = await w.next()
        assert ev["type"] == "update" and _by_tag(ev) == {tp: 2.0}
        last = ev["id"]
    # Disconnected: three more commits; a resume gets exactly those, in order, then live ones.
    for k in (3, 4, 5):
        await _write(feed, ids, k)
    async with ws_connect(api, slug, tenant.key, tag_id=flow, since=last) as conn:
        w = WsReader(conn)
        got = [await w.next() for _ in range(3)]
        assert [e["type"] for e in got] == ["update"] * 3
        assert [_by_tag(e) for e in got] == [{flow: 1003.0}, {flow: 1004.0}, {flow: 1005.0}]
        await _write(feed, ids, 6)
        assert _by_tag(await w.next()) == {flow: 1006.0}
    # Past the window (trimmed beyond the id): reset, then a fresh snapshot.
    r = aioredis.from_url(stack.redis_url)
    try:
        await r.xtrim(live_key(slug), maxlen=0, approximate=False)
    finally:
        await r.aclose()
    async with ws_connect(api, slug, tenant.key, tag_id=flow, since=last) as conn:
        w = WsReader(conn)
        reset = await w.next()
        assert reset == {"type": "reset", "reason": "trimmed"}
        snap = await w.next()
        assert snap["type"] == "snapshot" and _by_tag(snap) == {flow: 1006.0}
    # A malformed id is refused before the upgrade.
    with pytest.raises(InvalidStatus):
        async with ws_connect(api, slug, tenant.key, since="not-an-id"):
            pass


async def _update(events: Any) -> dict[str, Any]:
    while (ev := await anext(events))["type"] != "update":
        assert ev["type"] == ":", ev  # only heartbeats between updates
    return ev


async def test_every_value_on_request_and_text_updates(
    tenant: TenantHandle, live: dict[str, Any], api: str
) -> None:
    """`every=true` gets every committed value of a batch (once the writer has seen the request,
    within about a second; each update says which it holds) while a subscriber beside it still
    gets the last value per tag; text readings arrive as updates with their text."""
    ids, feed, slug = live["ids"], live["feed"], tenant.slug
    tp, status = ids["tubing_pressure"], ids["status"]
    await _write(feed, ids, 1)
    auth = {**SSE, "Authorization": f"Bearer {tenant.key}"}
    url = f"/v1/tenants/{slug}/stream"
    async with (
        httpx.AsyncClient(base_url=api, timeout=60) as c,
        c.stream("GET", url, params={"every": "true", "tag_id": [tp, status]}, headers=auth) as every,
        c.stream("GET", url, params={"tag_id": [tp, status]}, headers=auth) as last,
    ):
        assert every.status_code == 200 and last.status_code == 200
        ev_every, ev_last = sse_events(every), sse_events(last)
        assert (await anext(ev_every))["type"] == "snapshot" and (await anext(ev_last))["type"] == "snapshot"
        t0 = datetime.now(UTC) - timedelta(seconds=1)
        for k in range(100):  # the writer looks for the request at most once a second
            t = t0 + timedelta(milliseconds=10 * k)
            rows = [(tp, t, float(k), 0), (tp, t + timedelta(microseconds=500), k + 0.5, 0)]
            await asyncio.to_thread(feed.numeric, rows)
            a, b = await _update(ev_every), await _update(ev_last)
            assert a["id"] == b["id"] and b["every"] is False and [v["value"] for v in b["values"]] == [k + 0.5]
            if a["every"]:
                break
            assert [v["value"] for v in a["values"]] == [k + 0.5]
            await asyncio.sleep(0.2)
        assert a["every"], "the writer never saw the every-value request"
        assert [v["value"] for v in a["values"]] == [float(k), k + 0.5]
        now = datetime.now(UTC)
        later = now + timedelta(milliseconds=1)
        await asyncio.to_thread(feed.text, [(status, now, "choked"), (status, later, "open")])
        a, b = await _update(ev_every), await _update(ev_last)
        assert [v["value"] for v in a["values"]] == ["choked", "open"]
        assert [(v["tag_id"], v["value"]) for v in b["values"]] == [(status, "open")]
