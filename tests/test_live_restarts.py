"""Live clients through restarts: with SSE and WebSocket clients connected and a writer
committing all along, Redis restarts, then the Serve replica is killed (Serve starts another).
Clients reconnect with the last id they saw (half through Serve's proxy, half where a stream
ticket's answer sends them, the replica's own port, with a new ticket each time); in the end each
has every value the database holds since its snapshot, and every stream entry since then, none
twice."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import ray
import redis.asyncio as aioredis

from ingest.core.config import Settings
from ingest.localstack.redis_server import ensure_redis, stop_redis
from ingest.localstack.stack import redis_params
from ingest.write.fanout import live_key
from tests.conftest import TenantHandle
from tests.helpers import db_fetch, wait_until
from tests.live_client import WsReader, sse_events, ws_connect
from tests.test_read_api import CONN, Feed


class Client:
    """Reconnects with its last id whenever the connection ends, until stopped."""

    def __init__(self, api: str, slug: str, key: str, transport: str, tag_id: int, direct: bool = False) -> None:
        self.api, self.slug, self.key, self.transport, self.tag_id = api, slug, key, transport, tag_id
        # direct: as the live page does, a ticket for each connection, opened where its answer
        # says (the replica's own port, which a restarted replica may change).
        self.direct = direct
        self.bases: list[str] = []
        self.start: float | None = None  # the snapshot's value
        self.last_id: str | None = None
        self.ids: list[str] = []
        self.values: list[float] = []
        self.connects = 0
        self.stopped = False

    def on(self, ev: dict[str, Any]) -> None:
        if ev["type"] == "snapshot":
            assert self.last_id is None, "a resume inside the window must not fall back to a snapshot"
            self.start = {v["tag_id"]: v["value"] for v in ev["values"]}.get(self.tag_id, 0.0)
            self.last_id = ev["id"]
        elif ev["type"] == "update":
            self.ids.append(ev["id"])
            self.values += [v["value"] for v in ev["values"] if v["tag_id"] == self.tag_id]
            self.last_id = ev["id"]
        assert ev["type"] != "reset", ev

    async def run(self) -> None:
        while not self.stopped:
            try:
                self.connects += 1
                if self.transport == "sse":
                    await self._sse()
                else:
                    await self._ws()
            except AssertionError:
                raise
            except Exception:  # noqa: BLE001  (the connection ended: reconnect with the last id)
                pass
            await asyncio.sleep(0.3)

    async def _where(self) -> tuple[str, dict[str, str], dict[str, str]]:
        """(base URL, credential query, credential headers) for the next connection."""
        if not self.direct:
            return self.api, {}, {"Authorization": f"Bearer {self.key}"}
        auth = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.api, timeout=10) as c:
            r = await c.post(f"/v1/tenants/{self.slug}/stream-tickets", headers=auth)
            r.raise_for_status()
        base = r.json()["live_url"]
        assert base and base != self.api, r.json()
        self.bases.append(base)
        return base, {"ticket": r.json()["ticket"]}, {}

    async def _sse(self) -> None:
        base, cred, auth = await self._where()
        params = {**cred, **({"since": self.last_id} if self.last_id else {})}
        headers = {**auth, "Accept": "text/event-stream"}
        async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10, read=40)) as c:
            url = f"/v1/tenants/{self.slug}/stream"
            async with c.stream("GET", url, params=params, headers=headers) as r:
                if r.status_code != 200:
                    return
                async for ev in sse_events(r):
                    if ev["type"] != ":":
                        self.on(ev)

    async def _ws(self) -> None:
        base, cred, _ = await self._where()
        params = {**cred, **({"since": self.last_id} if self.last_id else {})}
        async with ws_connect(base, self.slug, None if cred else self.key, **params) as conn:
            w = WsReader(conn)
            while True:
                self.on(await w.next(40))


def _kill_api_replica() -> str:
    # From the GCS' actor table (the state API needs a dashboard; the test cluster has none).
    from ray._private import state

    for a in state.actors().values():
        cls = a.get("ActorClassName") or ""
        if a.get("State") == "ALIVE" and "ServeReplica" in cls and "api" in cls:
            ray.kill(ray.get_actor(a["Name"], namespace="serve"), no_restart=False)
            return str(a["Name"])
    raise AssertionError("no Serve replica of the api deployment")


async def test_clients_resume_through_redis_and_replica_restarts(
    tenant: TenantHandle, stack: Settings, api: str
) -> None:
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=CONN)
    assert r.status_code == 201, r.text
    tp = {t["name"]: t["tag_id"] for t in r.json()["tags"]}["tubing_pressure"]
    feed = Feed(stack, tenant.slug)
    written = [0]
    stop = threading.Event()

    def writer() -> None:  # one batch every 50 ms, value k at time k
        while not stop.is_set():
            k = written[0] + 1
            try:
                feed.numeric([(tp, datetime.now(UTC), float(k), 0)])
            except Exception:  # noqa: BLE001  (a write refused during a restart is retried)
                time.sleep(0.2)
                continue
            written[0] = k
            time.sleep(0.05)

    feed.numeric([(tp, datetime.now(UTC), 0.0, 0)])
    clients = [
        Client(api, tenant.slug, tenant.key, tr, tp, direct)
        for tr, direct in (("sse", False), ("ws", False), ("sse", True), ("ws", True))
    ]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    w = threading.Thread(target=writer, daemon=True)
    try:
        await wait_until(lambda: all(c.last_id for c in clients), "every client has its snapshot", 60)
        w.start()
        await wait_until(lambda: all(len(c.values) >= 5 for c in clients), "updates flowing", 60)
        params = redis_params(stack)
        await asyncio.to_thread(stop_redis, params)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(ensure_redis, params)
        n = written[0]
        await wait_until(
            lambda: all(c.values and c.values[-1] > n + 5 for c in clients), "flowing after Redis", 90
        )
        killed = await asyncio.to_thread(_kill_api_replica)
        n = written[0]
        await wait_until(
            lambda: all(c.values and c.values[-1] > n + 5 for c in clients), f"flowing after {killed} died", 120
        )
    finally:
        stop.set()
        w.join(30)
    # Settle: every client reaches the stream's newest entry.
    red = aioredis.from_url(stack.redis_url)
    try:
        newest = (await red.xrevrange(live_key(tenant.slug), count=1))[0][0].decode()
        await wait_until(lambda: all(c.last_id == newest for c in clients), "clients at the newest id", 60)
        entries = [e[0].decode() for e in await red.xrange(live_key(tenant.slug))]
    finally:
        await red.aclose()
        for c in clients:
            c.stopped = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    rows = await asyncio.to_thread(
        db_fetch, stack.dsn(tenant.db), "SELECT value FROM scada_readings WHERE tag_id = $1", tp
    )
    stored = sorted(float(x["value"]) for x in rows)
    assert stored[-1] == float(written[0]) and len(stored) == len(set(stored))
    for c in clients:
        assert c.connects >= 2, "the replica's death should have cut every connection"
        # A new ticket, and where to go, after each cut (the restarted replica listens on a port
        # of its own, which Serve picks: 28702 then 28703 when this was written).
        assert not c.direct or len(c.bases) >= 2, c.bases
        assert c.start is not None
        # Every value the database holds since the client's snapshot, in order, once.
        assert c.values == [v for v in stored if v > c.start], (c.transport, c.connects)
        # And every stream entry after its first one.
        first = entries.index(c.ids[0])
        assert c.ids == entries[first:]
    # The app answers again for the tests that follow.
    assert (await asyncio.to_thread(httpx.get, f"{api}/healthz", timeout=30)).status_code == 200
