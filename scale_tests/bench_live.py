"""``scada-ingest bench live``: live values to many dashboards under the demo's simulator load.

One OPC UA simulator (counting mode) feeds ``tenants`` tenants, ``wells_per_tenant`` wells of
``tags_per_well`` tags each, through the real connection actors, writers and Serve app.
``subscribers`` clients (SSE and WebSocket alternating; every other pair watches one well, the
rest every tag) receive a snapshot, then updates, for ``seconds``; then every tenth client is
dropped and reconnects two seconds later with its last id. With the simulator paused, each
client's updates are compared with its tenant's stream (the entries the writers appended after
their commits, filtered as the client asked):

- ``expected`` / ``delivered``: entries that should have reached a client, and those that did;
- ``cross_tenant``: updates that are not the client's own tenant's entry at that id;
- ``missed_after_resume``: entries after a dropped client's last id that its resume lacked;
- ``p50_ms`` / ``p99_ms``: commit time (in each entry) to receipt by the client;
  ``commit_to_stream_p50_ms`` / ``_p99_ms``: the part up to the entry's append (its id's time);
- ``rss_growth_mb``: the Serve replica's resident memory across ``cycles`` connect/disconnect
  cycles (after a warm-up), for memory that must stay flat.

Each path in turn (``paths``): ``proxy``, every client through Serve's proxy, and ``direct``, where
a stream ticket's answer sends clients (``live_url``: the API replica's own port, Serve's direct
ingress, on by default), which heads the result as the product's own way in.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import orjson

from ingest.core.ray_env import ray_env_defaults

# Ray reads its environment when first imported, and the imports below may bring it in.
ray_env_defaults()

import redis.asyncio as aioredis  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402

from ingest.core.config import Settings  # noqa: E402
from ingest.live.events import parse_id  # noqa: E402
from ingest.simulators.fleet import db_fetch, start_simulator, stop_simulator  # noqa: E402
from ingest.write.fanout import live_key  # noqa: E402
from scale_tests.bench_devices import _bench_settings  # noqa: E402
from scale_tests.common import (  # noqa: E402
    at_worker_priority,
    direct_api,
    drop_earlier_tenants,
    log,
    prepare_stack,
)
from scale_tests.cpu import cores_used, stage_meters  # noqa: E402

SETTLE_S = 2.0  # after the last subscriber's snapshot, before the steady window


@dataclass
class Sub:
    """One dashboard client and what it received."""

    n: int
    tenant: int
    transport: str
    well: str | None
    start_id: str = ""
    last_id: str = ""
    # id -> values as received (compared after the run: the client's own work per event must
    # stay small, or its queueing shows in the latencies it measures)
    # (values as (tag_id, t_us, value, quality) tuples: tuples of numbers are not tracked by the
    # garbage collector, where 25,000 events' dicts made its full passes pause the client for
    # longer as the run went on, and each pause showed in every subscriber's latency)
    received: dict[str, tuple[tuple[Any, ...], ...]] = field(default_factory=dict)
    duplicates: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    to_stream_ms: list[float] = field(default_factory=list)  # commit -> entry appended (Redis' clock)
    received_s: list[float] = field(default_factory=list)  # when each latency was taken (Unix seconds)
    conflated: int = 0
    resets: int = 0
    dropped_at: str | None = None
    connected_us: int = 0
    connects: int = 0
    errors: list[str] = field(default_factory=list)

    def on_event(self, ev: dict[str, Any]) -> None:
        kind = ev["type"]
        if kind == "snapshot":
            self.start_id = self.start_id or ev["id"]
            self.last_id = ev["id"]
        elif kind == "update":
            now_us = time.time() * 1e6
            if ev["id"] in self.received:
                self.duplicates += 1
            self.received[ev["id"]] = tuple(tuple(v.values()) for v in ev["values"])
            self.last_id = ev["id"]
            if ev["commit_us"] >= self.connected_us:  # live, not a resume's catch-up
                self.latencies_ms.append((now_us - ev["commit_us"]) / 1000)
                self.to_stream_ms.append(int(ev["id"].split("-")[0]) - ev["commit_us"] / 1000)
                self.received_s.append(now_us / 1e6)
        elif kind == "conflated":
            self.conflated += ev["skipped"]
        elif kind == "reset":
            self.resets += 1


async def _sse(c: aiohttp.ClientSession, url: str, key: str, sub: Sub, params: dict[str, str]) -> None:
    """An EventSource's reading, with aiohttp (its HTTP parser is in C: a dashboard's client
    costs the replica's machine nothing in production, and the bench's must cost it little)."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    async with c.get(url, params=params, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"{r.status} {(await r.text())[:200]}")
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            *events, buf = buf.split(b"\n\n")
            for ev in events:
                at = ev.find(b"data: ")
                if at >= 0:
                    sub.on_event(orjson.loads(ev[at + 6 :].split(b"\n", 1)[0]))


async def _ws(url: str, key: str, sub: Sub, params: dict[str, str]) -> None:
    q = str(httpx.QueryParams(params))
    async with ws_connect(
        f"{url}?{q}" if q else url,
        subprotocols=["scada.live", f"scada.bearer.{key}"],  # type: ignore[list-item]
        open_timeout=60,
        max_queue=None,
    ) as conn:
        async for msg in conn:
            sub.on_event(orjson.loads(msg))


def _session(api: str, connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=api,
        connector=aiohttp.TCPConnector(limit=connections + 10),
        timeout=aiohttp.ClientTimeout(total=None, connect=60, sock_read=120),
    )


async def _client(api: str, c: aiohttp.ClientSession, slug: str, key: str, sub: Sub, once: bool = False) -> None:
    """Connected until cancelled, as a dashboard is: after any failure it reconnects, resuming
    after the last id it saw (failures are counted in the result, not hidden)."""
    while True:
        params: dict[str, str] = {}
        if sub.well:
            params["well"] = sub.well
        if sub.last_id:
            params["since"] = sub.last_id
        sub.connected_us = int(time.time() * 1e6)
        sub.connects += 1
        try:
            if sub.transport == "sse":
                await _sse(c, f"/v1/tenants/{slug}/stream", key, sub, params)
            else:
                await _ws(api.replace("http://", "ws://") + f"/v1/tenants/{slug}/ws", key, sub, params)
        except Exception as e:  # noqa: BLE001
            sub.errors.append(f"{type(e).__name__}: {str(e)[:160]}")
        if once:
            return
        await asyncio.sleep(0.5 + random.random())


def _replica_pid() -> int | None:
    # From the GCS' actor table (the state API needs a dashboard, which the bench runs without).
    from ray._private import state

    for a in state.actors().values():
        cls = a.get("ActorClassName") or ""
        if a.get("State") == "ALIVE" and "ServeReplica" in cls and "api" in cls:
            return int(a["Pid"]) or None
    return None


def _rss_mb(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _cycles(api: str, slug: str, key: str, n: int, concurrency: int = 20) -> None:
    """``n`` connections that each read their snapshot and leave, SSE and WebSocket alternating."""
    todo = iter(range(n))
    async with _session(api, concurrency) as c:

        async def worker() -> None:
            for i in todo:
                sub = Sub(i, 0, "sse" if i % 2 else "ws", None)
                try:
                    await asyncio.wait_for(_until_snapshot(api, c, slug, key, sub), 60)
                except TimeoutError:
                    pass

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _until_snapshot(api: str, c: aiohttp.ClientSession, slug: str, key: str, sub: Sub) -> None:
    done = asyncio.Event()
    orig = sub.on_event

    def on_event(ev: dict[str, Any]) -> None:
        orig(ev)
        if ev["type"] == "snapshot":
            done.set()

    sub.on_event = on_event  # type: ignore[method-assign]
    task = asyncio.create_task(_client(api, c, slug, key, sub, once=True))
    waiter = asyncio.create_task(done.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    waiter.cancel()
    await asyncio.gather(task, waiter, return_exceptions=True)


@dataclass
class Tenant:
    slug: str
    key: str
    wells: list[str]
    dsn: str
    body: dict[str, Any]  # the connection to register
    tag_ids: dict[int, str] = field(default_factory=dict)  # tag_id -> well


def _setup(settings: Settings, api: str, node_ids: list[str], tenants: int, wells_per_tenant: int) -> list[Tenant]:
    admin = httpx.Client(base_url=api, timeout=120, headers={"Authorization": f"Bearer {settings.admin_key}"})
    drop_earlier_tenants(admin)
    by_well: dict[str, list[str]] = {}
    for n in node_ids:
        by_well.setdefault(n.split(";s=")[-1].split(".")[0], []).append(n)
    wells = sorted(by_well)
    out = []
    stamp = int(time.time())
    for i in range(tenants):
        slug = f"blive{stamp}x{i}"
        r = admin.post("/v1/tenants", json={"slug": slug, "name": f"live bench {i}"})
        r.raise_for_status()
        key = r.json()["api_key"]
        mine = wells[i * wells_per_tenant : (i + 1) * wells_per_tenant]
        body = {
            "name": "sim",
            "protocol": "opcua",
            "endpoint": "",
            "publishing_interval_ms": 100,
            "tags": [{"name": n.split(";s=")[-1], "node_id": n, "well": w} for w in mine for n in by_well[w]],
        }
        out.append(Tenant(slug, key, mine, settings.dsn(f"scada_t_{slug}"), body))
    admin.close()
    return out


async def _stream_entries(
    settings: Settings, slug: str, after: str, until: str
) -> list[tuple[str, tuple[Any, ...]]]:
    r = aioredis.from_url(settings.redis_url)
    try:
        got: Any = await r.xrange(live_key(slug), min=f"({after}", max=until)
    finally:
        await r.aclose()
    out = []
    for eid, fields in got:
        values = orjson.loads(fields[b"v"])
        out.append((eid.decode(), tuple(sorted(tuple(v) for v in values))))
    return out


PATHS = ("proxy", "direct")


def run(
    subscribers: int = 200,
    tenants: int = 10,
    seconds: float = 20.0,
    cycles: int = 10_000,
    wells_per_tenant: int = 2,
    tags_per_well: int = 10,
    interval_ms: int = 100,
    paths: tuple[str, ...] = PATHS,
) -> dict[str, Any]:
    """The same measurement through each path in turn (a fresh Ray cluster each, same machine,
    same process run); the figures of the last path head the result, every path's beside them.
    The memory cycles run on the last path only."""
    results: dict[str, dict[str, Any]] = {}
    for path in paths:
        results[path] = _run_path(
            path,
            subscribers,
            tenants,
            seconds,
            cycles if path == paths[-1] else 0,
            wells_per_tenant,
            tags_per_well,
            interval_ms,
        )
    head = dict(results[paths[-1]])
    head["path"] = paths[-1]
    keys = (
        "p50_ms",
        "p99_ms",
        "expected",
        "delivered",
        "cross_tenant",
        "missed_after_resume",
        "load_avg_1m_during",
        "cores_busy_during",
    )
    head["paths"] = {p: {k: r.get(k) for k in keys} for p, r in results.items()}
    if {"proxy", "direct"} <= set(results) and results["direct"]["p50_ms"] and results["proxy"]["p50_ms"]:
        head["p50_ratio_proxy_over_direct"] = round(results["proxy"]["p50_ms"] / results["direct"]["p50_ms"], 2)
        head["p99_ratio_proxy_over_direct"] = round(results["proxy"]["p99_ms"] / results["direct"]["p99_ms"], 2)
    return head


def _run_path(
    path: str,
    subscribers: int,
    tenants: int,
    seconds: float,
    cycles: int,
    wells_per_tenant: int,
    tags_per_well: int,
    interval_ms: int,
) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    if path not in PATHS:
        raise ValueError(f"path: one of {PATHS}")
    settings = _bench_settings()
    prepare_stack(settings)
    for attempt in (1, 2, 3):  # Ray gives a head 30 s to register: a loaded machine may miss it
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
            break
        except Exception as e:
            if attempt == 3:
                raise
            log(f"live: Ray head did not start ({e}); retrying")
            time.sleep(5)
    ray.init(
        address=cluster.address, namespace=settings.namespace, log_to_driver=False, logging_level=logging.WARNING
    )
    summary = Path(tempfile.mkdtemp()) / "sim.json"
    proc = None
    try:
        from actors.deploy import wait_http
        from serve_app.deploy import deploy

        api = deploy(settings)["api"]
        wait_http(f"{api}/healthz")
        with at_worker_priority():  # the simulator process keeps it
            proc, endpoint, node_ids = start_simulator(
                tenants * wells_per_tenant, tags_per_well, interval_ms, summary
            )
        ts = _setup(settings, api, node_ids, tenants, wells_per_tenant)
        for t in ts:
            t.body["endpoint"] = endpoint
            r = httpx.post(
                f"{api}/v1/tenants/{t.slug}/connections",
                json=t.body,
                headers={"Authorization": f"Bearer {t.key}"},
                timeout=120,
            )
            r.raise_for_status()
            t.tag_ids = {x["tag_id"]: x["well"] for x in r.json()["tags"]}
        # direct: where a stream ticket's answer sends clients (the replica's own port).
        live_api = direct_api(api, ts[0].slug, ts[0].key) if path == "direct" else api
        log(f"live: path {path}: subscribers connect to {live_api}")
        proc.send_signal(signal.SIGUSR1)  # resume publishing
        log(f"live: {tenants} tenants x {wells_per_tenant * tags_per_well} tags streaming; waiting for rows")
        deadline = time.monotonic() + 180
        for t in ts:
            while db_fetch(t.dsn, "SELECT count(DISTINCT tag_id) AS n FROM scada_readings")[0]["n"] < len(
                t.tag_ids
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tenant {t.slug} is not streaming")
                time.sleep(0.5)
        with at_worker_priority():  # the clients
            result = asyncio.run(_measure(settings, live_api, ts, subscribers, seconds, proc))
        log(f"live ({path}): {orjson.dumps(result).decode()}")
        if cycles:
            log(f"live: {cycles} connect/disconnect cycles against the replica's memory")
            pid = _replica_pid()
            asyncio.run(_cycles(live_api, ts[0].slug, ts[0].key, min(cycles, 500)))  # warm-up
            before = _rss_mb(pid)
            t0 = time.perf_counter()
            asyncio.run(_cycles(live_api, ts[0].slug, ts[0].key, cycles))
            after = _rss_mb(pid)
            result["cycles"] = cycles
            result["cycles_per_s"] = round(cycles / (time.perf_counter() - t0), 1)
            result["rss_before_mb"] = round(before, 1)
            result["rss_growth_mb"] = round(after - before, 1)
        result["load_avg_1m"] = round(os.getloadavg()[0], 2)
        return result
    finally:
        if proc is not None and proc.poll() is None:
            stop_simulator(proc, summary)
        from ray import serve

        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


class GcPauses:
    """The client's own garbage-collector pauses (ms) while installed: a pause delays every
    event in flight, so it shows in the latencies the clients measure."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._t0 = 0.0

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._on)
        return self

    def __exit__(self, *_: Any) -> None:
        gc.callbacks.remove(self._on)

    def _on(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((time.perf_counter() - self._t0) * 1000)

    def summary(self) -> dict[str, float]:
        p = self.pauses
        return {"count": len(p), "max_ms": round(max(p, default=0.0), 1), "total_ms": round(sum(p), 1)}


async def _measure(
    settings: Settings, api: str, ts: list[Tenant], n: int, seconds: float, sim: Any
) -> dict[str, Any]:
    with GcPauses() as pauses:
        result = await _measure_with(settings, api, ts, n, seconds, sim)
    result["client_gc"] = pauses.summary()
    return result


async def _measure_with(
    settings: Settings, api: str, ts: list[Tenant], n: int, seconds: float, sim: Any
) -> dict[str, Any]:
    subs = []
    for i in range(n):
        t = ts[i % len(ts)]
        k = i // len(ts)
        subs.append(Sub(i, i % len(ts), "sse" if k % 2 == 0 else "ws", t.wells[0] if (k // 2) % 2 else None))
    # The clients' own garbage collector is off while latencies are taken (a load generator on
    # the measured machine; a dashboard's browser runs elsewhere): its full passes over the
    # clients' state paused every subscriber at once, up to half a second. Off from the first
    # connection: a pass during the ramp (seen up to 675 ms) delayed the updates queued behind
    # it into the steady window.
    gc.freeze()
    gc.disable()
    async with _session(api, n) as c:
        tasks = {s.n: asyncio.create_task(_client(api, c, ts[s.tenant].slug, ts[s.tenant].key, s)) for s in subs}
        await _wait(lambda: all(s.start_id for s in subs), 120, "every subscriber's snapshot")
        load0 = os.getloadavg()[0]
        # Started before the settle: finding the processes scans /proc on the clients' event loop
        # (every subscriber waits meanwhile), which at the window's start showed as a burst of
        # slow updates in its first second. The cores are counted over the settle too.
        meters = stage_meters({"simulator": [sim.pid], "clients": [os.getpid()]})
        t0 = time.perf_counter()
        # The last connections' snapshots and first updates are still being written out when
        # the last snapshot arrives: a short settle belongs to the ramp, not the steady window.
        await asyncio.sleep(SETTLE_S)
        log(f"live: {n} subscribers connected; measuring {seconds:.0f} s")
        steady_from = time.time()
        await asyncio.sleep(seconds)
        steady_to = time.time()  # before the meters are read, which blocks the clients' loop too
        cores = cores_used(meters, time.perf_counter() - t0)
        dropped = subs[::10]
        for s in dropped:
            tasks[s.n].cancel()
        await asyncio.gather(*(tasks[s.n] for s in dropped), return_exceptions=True)
        for s in dropped:
            s.dropped_at = s.last_id
        log(f"live: dropped {len(dropped)} subscribers; reconnecting in 2 s with their last id")
        await asyncio.sleep(2.0)
        for s in dropped:
            tasks[s.n] = asyncio.create_task(_client(api, c, ts[s.tenant].slug, ts[s.tenant].key, s))
        await asyncio.sleep(max(5.0, seconds / 4))
        sim.send_signal(signal.SIGUSR2)  # pause the simulator; let the last commits reach everyone
        ends = await _quiet_ends(settings, ts)
        gc.enable()
        gc.unfreeze()
        expected: dict[int, dict[str, tuple[Any, ...]]] = {}
        entries = [await _stream_entries(settings, t.slug, "0-0", ends[i]) for i, t in enumerate(ts)]
        for s in subs:
            watched = {tid for tid, w in ts[s.tenant].tag_ids.items() if s.well is None or w == s.well}
            want = {}
            for eid, values in entries[s.tenant]:
                if not s.start_id or parse_id(eid) <= parse_id(s.start_id):
                    continue
                mine = tuple(v for v in values if v[0] in watched)
                if mine:
                    want[eid] = mine
            expected[s.n] = want
        await _wait(lambda: all(set(expected[s.n]) <= set(s.received) for s in subs), 30, "deliveries settle")
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    # Everything each tenant's stream holds now (entries after ``ends`` may have been received).
    own = [dict(await _stream_entries(settings, t.slug, "0-0", "+")) for t in ts]
    exp = sum(len(expected[s.n]) for s in subs)
    delivered = sum(len(set(expected[s.n]) & set(s.received)) for s in subs)
    cross = 0
    for s in subs:
        for eid, got_values in s.received.items():
            theirs = own[s.tenant].get(eid)
            if theirs is None or not set(got_values) <= set(theirs):
                cross += 1
    missed_after = sum(
        1
        for s in dropped
        for eid in expected[s.n]
        if parse_id(eid) > parse_id(s.dropped_at or "0-0") and eid not in s.received
    )
    every = np.asarray([x for s in subs for x in s.latencies_ms])
    at = np.asarray([t for s in subs for t in s.received_s])
    # The headline figures are those of the steady window: every subscriber connected, before
    # any is dropped. The ramp (200 connections opened, each with its snapshot, while updates
    # already flow to the first ones) and the resume phase (20 reconnecting and catching up) are
    # given apart, and the whole run beside them.
    transport = np.asarray([s.transport for s in subs for _ in s.latencies_ms])
    steady = (at >= steady_from) & (at < steady_to)
    lat = every[steady]
    to_stream = np.asarray([x for s in subs for x in s.to_stream_ms])[steady]
    return {
        "bench": "live",
        "subscribers": n,
        "tenants": len(ts),
        "sse": sum(1 for s in subs if s.transport == "sse"),
        "websocket": sum(1 for s in subs if s.transport == "ws"),
        "seconds": seconds,
        "expected": exp,
        "delivered": delivered,
        "duplicates": sum(s.duplicates for s in subs),
        "conflated": sum(s.conflated for s in subs),
        "resets": sum(s.resets for s in subs),
        "cross_tenant": cross,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "latency_samples": int(len(lat)),
        "window": "steady: all subscribers connected, before the drop",
        "phases": {
            name: {"p50_ms": _pct(every[m], 50), "p99_ms": _pct(every[m], 99), "samples": int(m.sum())}
            for name, m in (
                ("ramp", at < steady_from),
                ("steady", steady),
                ("resume", at >= steady_to),
                ("whole_run", np.ones(len(every), bool)),
            )
        },
        # Of which: commit to the entry's append (the writer's fan-out; Redis' clock, ms)
        "commit_to_stream_p50_ms": round(float(np.percentile(to_stream, 50)), 1) if len(to_stream) else None,
        "commit_to_stream_p99_ms": round(float(np.percentile(to_stream, 99)), 1) if len(to_stream) else None,
        # and from the append to the client (the replica, the network, the client)
        "stream_to_client_p50_ms": _pct(lat - to_stream, 50),
        "stream_to_client_p99_ms": _pct(lat - to_stream, 99),
        "by_transport": {
            tr: {"p50_ms": _pct(a, 50), "p99_ms": _pct(a, 99)}
            for tr in ("sse", "ws")
            if len(a := every[steady & (transport == tr)])
        },
        # Where the slow updates fall: the seconds with most updates over 250 ms (a stall
        # shows as one or two seconds holding most of them; contention spreads them out)
        "slow_seconds": _slow_seconds(subs, steady_from),
        "dropped_and_resumed": len(dropped),
        "missed_after_resume": missed_after,
        "load_avg_1m_during": round(load0, 2),
        "cores_busy_during": cores,
        "reconnects": sum(s.connects - 1 for s in subs) - len(dropped),
        "no_snapshot": sum(1 for s in subs if not s.start_id),
        "errors_sample": sorted({e for s in subs for e in s.errors})[:5],
    }


def _slow_seconds(subs: list[Sub], steady_from: float, over_ms: float = 250.0, top: int = 5) -> dict[str, Any]:
    per: dict[int, int] = {}
    for s in subs:
        for t, lat in zip(s.received_s, s.latencies_ms, strict=True):
            if lat > over_ms:
                sec = int(t - steady_from) if t >= steady_from else -int(steady_from - t) - 1
                per[sec] = per.get(sec, 0) + 1
    worst = sorted(per.items(), key=lambda kv: -kv[1])[:top]
    return {
        "over_ms": over_ms,
        "total": sum(per.values()),
        "seconds": len(per),
        # [second, updates over]: counted from the steady window's start (negative: the ramp;
        # at or past its length: the resume phase)
        "worst": worst,
    }


def _pct(a: Any, q: float) -> float | None:
    return round(float(np.percentile(a, q)), 1) if len(a) else None


async def _quiet_ends(settings: Settings, ts: list[Tenant], quiet_s: float = 3.0) -> list[str]:
    """Each tenant's newest stream id once no stream has grown for ``quiet_s`` (the pipeline
    drains what the simulator published before it paused), at most a minute."""
    r = aioredis.from_url(settings.redis_url)
    try:
        last: list[str] = []
        still_since = time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = []
            for t in ts:
                got: Any = await r.xrevrange(live_key(t.slug), count=1)
                now.append(got[0][0].decode() if got else "0-0")
            if now != last:
                last, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= quiet_s:
                break
            await asyncio.sleep(0.5)
        return last
    finally:
        await r.aclose()


async def _wait(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            log(f"live: gave up waiting {timeout_s:.0f} s for {what}")
            return
        await asyncio.sleep(0.2)
