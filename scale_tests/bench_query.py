"""``scada-ingest bench query``: read queries through the HTTP API under 10 concurrent clients,
beside the same answers computed by plain SQL over the raw hypertable in the same run.

Data set (built fresh each run, through the writer's COPY + ledger path, then rolled up by the
refresher): ``tags`` tags x ``days`` days at one reading per ``interval_s``, plus ``year_tags``
tags with a year at one reading per ``year_interval_s``. The JSON says how big it was.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import httpx
import numpy as np
import yarl

from ingest.core.batch import ReadingBatch
from ingest.core.config import Settings
from ingest.core.models import Quality, quality_as_int4
from ingest.core.net import free_port
from ingest.read.refresher import RollupRefresher
from ingest.read.rollups import EPOCH
from ingest.write.fanout import latest_key
from ingest.write.writer import TenantWriter
from scale_tests.common import at_worker_priority, direct_apis, log
from scale_tests.cpu import stage_meters

CLIENTS = 10
BAD = quality_as_int4(Quality.BAD)
_BASELINE = """
SELECT time_bucket($4::interval, time) AS b, count(*) FILTER (WHERE quality >= 0) AS n,
       min(value) FILTER (WHERE quality >= 0) AS min, max(value) FILTER (WHERE quality >= 0) AS max,
       sum(value) FILTER (WHERE quality >= 0) AS sum,
       first(value, time) FILTER (WHERE quality >= 0) AS first,
       last(value, time) FILTER (WHERE quality >= 0) AS last
FROM scada_readings WHERE tag_id = $1 AND time >= $2 AND time < $3 GROUP BY 1 ORDER BY 1"""


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(math.ceil(q / 100 * len(s))) - 1)] * 1000, 2)


# The bench's readings, made by the database itself (no Python loop, no client round trip per
# batch): a slow wave per tag plus a deterministic wobble, and one reading in 997 Bad.
_GEN = f"""
INSERT INTO scada_readings (time, tag_id, value, quality)
SELECT t, g, 100 + 10 * sin(extract(epoch FROM t) / 3600 + g)
             + ((extract(epoch FROM t)::int8 * 7919 + g * 104729) % 1000) / 500.0,
       CASE WHEN (extract(epoch FROM t)::int8 / $4::int8 + g) % 997 = 0 THEN {BAD} ELSE 0 END
FROM unnest($1::int4[]) AS g,
     generate_series($2::timestamptz, $3::timestamptz - INTERVAL '1 microsecond',
                     make_interval(secs => $4::int8)) AS t"""
_LEDGER = "INSERT INTO ingest_ledger (batch_id, rows, received, min_time, max_time) VALUES ($1, $2, $2, $3, $4)"
_INDEX = "CREATE INDEX scada_readings_tag_time ON scada_readings (tag_id, time DESC)"


async def _build(dsn: str, pieces: list[tuple[str, list[int], datetime, datetime, int]], workers: int = 2) -> int:
    """Every piece (batch id, tags, lo, hi, step) straight into the hypertable by the server,
    each with its ledger row in the same transaction, as the writer would record it: the
    refresher rolls them up from the ledger like any backfill. The (tag_id, time) index is built
    once after the load rather than row by row during it (the usual bulk-load order)."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("DROP INDEX scada_readings_tag_time")
    todo = list(pieces)
    rows = 0

    async def worker() -> None:
        nonlocal rows
        c = await asyncpg.connect(dsn)
        try:
            while todo:
                batch_id, tags, lo, hi, step = todo.pop()
                async with c.transaction():
                    n = int((await c.execute(_GEN, tags, lo, hi, step)).split()[-1])
                    await c.execute(_LEDGER, batch_id, n, lo, hi - timedelta(microseconds=1))
                rows += n
        finally:
            await c.close()

    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        await conn.execute("SET maintenance_work_mem = '256MB'")
        await conn.execute(_INDEX)
        await conn.execute("ANALYZE scada_readings")
        await conn.close()
    return rows


def _pieces(
    prefix: str, tag_ids: list[int], end: datetime, days: int, step_s: int, piece: timedelta
) -> list[tuple[str, list[int], datetime, datetime, int]]:
    out = []
    t = end - timedelta(days=days)
    while t < end:
        hi = min(end, t + piece)
        out.append((f"bench:{prefix}:{t.isoformat()}", tag_ids, t, hi, step_s))
        t = hi
    return out


async def _seed_latest(settings: Settings, dsn: str, slug: str, tag_ids: list[int]) -> None:
    """What the writer's fan-out leaves in Redis after a commit: the newest reading per tag (the
    bench loaded its data past the writer, so it puts them there itself)."""
    import redis.asyncio as aioredis

    conn = await asyncpg.connect(dsn)
    rows = await conn.fetch(
        "SELECT u.t, r.time, r.value, r.quality FROM unnest($1::int4[]) AS u(t) CROSS JOIN LATERAL "
        "(SELECT time, value, quality FROM scada_readings WHERE tag_id = u.t "
        "ORDER BY time DESC LIMIT 1) r",
        tag_ids,
    )
    await conn.close()
    r = aioredis.from_url(settings.redis_url)
    await r.hset(
        latest_key(slug),
        mapping={
            str(x["t"]): json.dumps(
                {"t": int((x["time"] - EPOCH) / timedelta(microseconds=1)), "v": x["value"], "q": x["quality"]}
            )
            for x in rows
        },
    )
    await r.aclose()


def _query(params: dict[str, Any]) -> list[tuple[str, str]]:
    """Query parameters as pairs, a list value repeated (``tag_id=1&tag_id=2``)."""
    out = []
    for k, v in params.items():
        for one in v if isinstance(v, list) else [v]:
            out.append((k, str(one)))
    return out


_URLS: dict[tuple[str, tuple[tuple[str, str], ...]], yarl.URL] = {}


def _url(path: str, params: dict[str, Any]) -> yarl.URL:
    """The request's URL, encoded once per distinct request: a dashboard sends the same URLs
    again and again, and building one with 100 ``tag_id`` costs the client (on the server's
    cores) a fifth of a millisecond each time."""
    pairs = tuple(_query(params))
    url = _URLS.get((path, pairs))
    if url is None:
        url = _URLS[(path, pairs)] = yarl.URL(f"{path}?{urlencode(pairs)}", encoded=True)
    return url


async def _measure(apis: list[str], key: str, make: list[Any], requests: int) -> list[float]:
    """``requests`` GETs made by ``make`` (a list of (path, params) factories), 10 at a time,
    the clients spread over ``apis`` (the replicas' own ports, as a load balancer would).
    The clients use aiohttp (its HTTP parser is in C): with httpx they cost 4-6 CPU ms a request
    on the same two cores as the server (README, read side), which the server then waited for."""
    todo = list(range(requests))

    def next_request() -> tuple[str, dict[str, Any]] | None:
        if not todo:
            return None
        todo.pop()
        path, params = random.choice(make)()
        return path, params

    return await _clients(apis, key, next_request)


async def _clients(
    apis: list[str], key: str, next_request: Callable[[], tuple[str, dict[str, Any]] | None]
) -> list[float]:
    lat: list[float] = []
    sessions = [
        aiohttp.ClientSession(
            base_url=api,
            headers={"Authorization": f"Bearer {key}"},
            connector=aiohttp.TCPConnector(limit=CLIENTS),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        for api in apis
    ]

    async def client(c: aiohttp.ClientSession) -> None:
        while (req := next_request()) is not None:
            path, params = req
            t0 = time.perf_counter()
            async with c.get(_url(path, params)) as r:
                await r.read()
                lat.append(time.perf_counter() - t0)
                r.raise_for_status()

    try:
        await asyncio.gather(*(client(sessions[k % len(sessions)]) for k in range(CLIENTS)))
    finally:
        for c in sessions:
            await c.close()
    return lat


async def _round_trips(
    settings: Settings, api: str, key: str, kinds: dict[str, list[Any]], dbs: dict[str, str], n: int = 50
) -> dict[str, dict[str, float]]:
    """Statements per request, by database, and Redis commands per request: each kind's
    ``n`` requests one after another, counted from the servers' own statistics (PostgreSQL's
    transactions per database, every statement outside a transaction block being one; Redis's
    commands processed), less what the same time window holds while idle (the refresher and
    the coordinator run meanwhile). PostgreSQL publishes a backend's counts within 10 s of it
    going idle, hence the waits."""
    import redis.asyncio as aioredis

    obs = await asyncpg.connect(settings.dsn("postgres"))
    red = aioredis.from_url(settings.redis_url)

    async def snap() -> dict[str, float]:
        rows = await obs.fetch(
            "SELECT datname, xact_commit + xact_rollback AS n "
            "FROM pg_stat_database WHERE datname = ANY($1::text[])",
            list(dbs.values()),
        )
        by = {r["datname"]: float(r["n"]) for r in rows}
        out = {role: by.get(db, 0.0) for role, db in dbs.items()}
        out["redis"] = float((await red.info("stats"))["total_commands_processed"])
        return out

    settle = 11.0
    await asyncio.sleep(settle)
    a, t0 = await snap(), time.perf_counter()
    await asyncio.sleep(settle)
    b = await snap()
    idle_rate = {k: (b[k] - a[k] - (1 if k == "redis" else 0)) / (time.perf_counter() - t0) for k in a}
    out: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(base_url=api, timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
        for kind, make in kinds.items():
            a, t0 = await snap(), time.perf_counter()
            for _ in range(n):
                path, params = make[0]()
                (await c.get(path, params=params)).raise_for_status()
            await asyncio.sleep(settle)
            b = await snap()
            span = time.perf_counter() - t0
            out[kind] = {
                k: round(max(0.0, (b[k] - a[k] - (1 if k == "redis" else 0) - idle_rate[k] * span) / n), 1)
                for k in a
            }
            log(f"{kind}: round trips per request {out[kind]}")
    await red.aclose()
    await obs.close()
    return out


async def _baseline(
    dsn: str, queries: list[tuple[int, datetime, datetime, timedelta]], requests: int
) -> tuple[list[float], dict[tuple[int, datetime, datetime], Any]]:
    pool = await asyncpg.create_pool(dsn, min_size=CLIENTS, max_size=CLIENTS)
    lat: list[float] = []
    answers: dict[tuple[int, datetime, datetime], Any] = {}
    todo = list(range(requests))

    async def client() -> None:
        while todo:
            todo.pop()
            tag, lo, hi, width = random.choice(queries)
            t0 = time.perf_counter()
            rows = await pool.fetch(_BASELINE, tag, lo, hi, width)
            lat.append(time.perf_counter() - t0)
            answers[(tag, lo, hi)] = rows

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    await pool.close()
    return lat, answers


def _speedup(base_lat: list[float], queries: dict[str, Any] | None) -> float | None:
    if not queries or "auto_30d" not in queries:
        return None
    return round(statistics.median(base_lat) * 1000 / max(float(queries["auto_30d"]["p50_ms"]), 1e-3), 1)


async def _measure_each(apis: list[str], key: str, make: list[Any]) -> list[float]:
    """Each factory's request once, 10 at a time."""
    todo = list(make)

    def next_request() -> tuple[str, dict[str, Any]] | None:
        if not todo:
            return None
        path, params = todo.pop()()
        return path, params

    return await _clients(apis, key, next_request)


def _mismatches(api_rows: list[list[Any]], fields: list[str], sql_rows: list[Any]) -> int:
    f = {k: i for i, k in enumerate(fields)}
    bad = abs(len(api_rows) - len(sql_rows))
    for a, s in zip(api_rows, sql_rows, strict=False):
        same = (
            datetime.fromisoformat(a[f["time"]]) == s["b"]
            and a[f["count"]] == s["n"]
            and a[f["min"]] == s["min"]
            and a[f["max"]] == s["max"]
            and a[f["first"]] == s["first"]
            and a[f["last"]] == s["last"]
            and math.isclose(a[f["sum"]], s["sum"], rel_tol=1e-9)
        )
        bad += 0 if same else 1
    return bad


def run(
    tags: int = 100,
    days: int = 30,
    interval_s: int = 10,
    year_tags: int = 4,
    year_interval_s: int = 600,
    requests: int = 2000,
    paths: tuple[str, ...] = ("direct", "proxy"),
    round_trips: bool = True,
    api_replicas: int = 2,
    only: tuple[str, ...] = (),
) -> dict[str, Any]:
    from scale_tests.bench_devices import deploy_bench

    # The stack's folder and ports come from the environment (SCADA_LOCAL_DIR, SCADA_PG_PORT,
    # ...) so a checkout can bench against its own stack.
    settings = Settings(
        namespace="scada-bench", http_port=free_port(), api_replicas=api_replicas
    ).with_local_secrets()
    # Both ways in, measured one after the other in this run: the proxy (Serve's HTTP port) and
    # the replica's own port (direct ingress, on by default).
    client, slug = deploy_bench(settings)
    api, key = str(client.base_url).rstrip("/"), client.headers["Authorization"][7:]
    return asyncio.run(
        _run(
            settings,
            client,
            api,
            key,
            slug,
            tags,
            days,
            interval_s,
            year_tags,
            year_interval_s,
            requests,
            paths,
            round_trips,
            only,
        )
    )


async def _run(
    settings: Settings,
    client: httpx.Client,
    api: str,
    key: str,
    slug: str,
    tags: int,
    days: int,
    interval_s: int,
    year_tags: int,
    year_interval_s: int,
    requests: int,
    paths: tuple[str, ...],
    round_trips: bool,
    only: tuple[str, ...] = (),
) -> dict[str, Any]:
    ac = httpx.AsyncClient(base_url=api, timeout=120, headers={"Authorization": f"Bearer {key}"})
    r = await ac.post(
        f"/v1/tenants/{slug}/connections",
        json={
            "name": "bench",
            "protocol": "opcua",
            "endpoint": "opc.tcp://127.0.0.1:1/bench",
            "enabled": False,
            "tags": [
                {"name": f"t{i}", "node_id": f"ns=2;s=T{i}", "well": f"W{i % 10}"} for i in range(tags + year_tags)
            ],
        },
    )
    r.raise_for_status()
    ids = [t["tag_id"] for t in r.json()["tags"]]
    month_ids, year_ids = ids[:tags], ids[tags:]
    # A year of raw readings is kept (the default raw retention, 90 days, would have the writer's
    # retention job drop the year tags' older chunks whenever it happens to run during the load).
    r = await ac.patch(f"/v1/tenants/{slug}", json={"raw_retention_days": 400})
    r.raise_for_status()
    dsn = settings.dsn(f"scada_t_{slug}")
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    t0 = time.perf_counter()
    rows = await _build(
        dsn,
        _pieces("m", month_ids, end, days, interval_s, timedelta(days=1))
        + _pieces("y", year_ids, end, 365, year_interval_s, timedelta(days=30)),
    )
    year_rows = len(year_ids) * (365 * 86_400 // year_interval_s)
    rows -= year_rows
    load_s = time.perf_counter() - t0
    log(f"loaded {rows + year_rows} rows in {load_s:.0f} s; rolling up")
    t0 = time.perf_counter()
    refresher = RollupRefresher(dsn, max_minutes_per_pass=1440)
    await refresher.run_until_idle()
    await refresher.close()
    rollup_s = time.perf_counter() - t0
    log(f"rolled up in {rollup_s:.0f} s")
    await _seed_latest(settings, dsn, slug, ids)
    # What autovacuum and the checkpointer would otherwise do to the fresh tables (gigabytes of
    # dirty pages after a large load) while the queries are timed.
    conn = await asyncpg.connect(dsn)
    for table in ("scada_readings", "rollup_10s", "rollup_1m", "rollup_1h", "rollup_1d", "rollup_1d_local"):
        await conn.execute(f"VACUUM ANALYZE {table}")
    await conn.execute("CHECKPOINT")
    await conn.close()
    # Refresh lag: one reading committed now, until the writer actor's refresher has it in 1d.
    conn = await asyncpg.connect(dsn)
    w = TenantWriter(dsn, flush_interval_ms=10)
    await w.start()
    now = datetime.now(UTC)
    await w.write(
        ReadingBatch(
            "lag",
            np.array([int(now.timestamp() * 1e6)], np.int64),
            np.array([month_ids[0]], np.int32),
            np.array([1.0]),
            np.zeros(1, np.int32),
        )
    )
    committed = time.perf_counter()
    await w.stop()
    # The refresher commits in another process: polling the database is the only signal.
    while not await conn.fetchval(  # noqa: ASYNC110
        "SELECT 1 FROM rollup_1d WHERE tag_id = $1 AND last_time >= $2", month_ids[0], now
    ):
        await asyncio.sleep(0.1)
    lag_s = time.perf_counter() - committed
    await conn.close()

    def iso(t: datetime) -> str:
        return t.isoformat()

    readings = f"/v1/tenants/{slug}/readings"
    month_lo, year_lo = end - timedelta(days=days), end - timedelta(days=365)
    kinds: dict[str, list[Any]] = {
        "latest_100": [lambda: (f"/v1/tenants/{slug}/latest", {"tag_id": ids[:100]})],
        "raw_1h": [
            lambda: (
                readings,
                {
                    "tag_id": random.choice(month_ids),
                    "resolution": "raw",
                    "start": iso(end - timedelta(hours=1)),
                    "end": iso(end),
                },
            )
        ],
        "auto_24h": [
            lambda: (
                readings,
                {"tag_id": random.choice(month_ids), "start": iso(end - timedelta(days=1)), "end": iso(end)},
            )
        ],
        "auto_30d": [
            lambda: (readings, {"tag_id": random.choice(month_ids), "start": iso(month_lo), "end": iso(end)})
        ],
        "auto_1y": [
            lambda: (
                readings,
                {"tag_id": random.choice(year_ids), "days": "utc", "start": iso(year_lo), "end": iso(end)},
            )
        ],
    }
    if only:  # a profile of one kind (--kinds)
        kinds = {k: v for k, v in kinds.items() if k in only}
    trips = (
        await _round_trips(
            settings, api, key, kinds, {"tenant_db": f"scada_t_{slug}", "master_db": settings.master_db}
        )
        if round_trips
        else {}
    )
    # Dashboards ask for the same tags again and again: one request per tag and kind first, so
    # the replica's caches (keys, catalog, rollup rows) hold them, timed apart ("cold").
    warm = {
        "latest_100": kinds.get("latest_100", []),  # the same 100 tags, once
        "auto_24h": [
            lambda t=t: (readings, {"tag_id": t, "start": iso(end - timedelta(days=1)), "end": iso(end)})
            for t in month_ids
        ],
        "auto_30d": [
            lambda t=t: (readings, {"tag_id": t, "start": iso(month_lo), "end": iso(end)}) for t in month_ids
        ],
        "auto_1y": [
            lambda t=t: (readings, {"tag_id": t, "days": "utc", "start": iso(year_lo), "end": iso(end)})
            for t in year_ids
        ],
    }
    warm = {k: v for k, v in warm.items() if k in kinds}
    by_path: dict[str, dict[str, Any]] = {}
    cold: dict[str, dict[str, Any]] = {}  # the first path's first request per tag
    urls = {"proxy": [api], "direct": direct_apis(api, slug, key, settings.api_replicas)}
    # The clients (and the plain-SQL ones) run at the niceness of Ray's workers: on a shared
    # machine neither side takes the CPU first (scale_tests.common.at_worker_priority).
    with at_worker_priority():
        for path in paths:
            out = by_path[path] = {}
            # Each replica keeps its own caches: each is warmed (a load balancer's replicas warm
            # as they serve); the first one's requests are timed as the cold figures.
            for i, url in enumerate(urls[path] if path == paths[0] else []):
                for kind, factories in warm.items():
                    lat = await _measure_each([url], key, factories)
                    if i == 0:
                        cold[kind] = {
                            "p50_ms": _pct(lat, 50),
                            "p99_ms": _pct(lat, 99),
                            "n": len(lat),
                            "path": path,
                        }
            for kind, make in kinds.items():
                # Where a request's time goes: with 10 clients always waiting, p50 is about 10
                # over the rate, and the rate is the CPU each request costs on these cores.
                # The client is this thread (time.thread_time).
                meters = stage_meters()
                client0, wall0 = time.thread_time(), time.perf_counter()
                lat = await _measure(urls[path], key, make, requests)
                wall = time.perf_counter() - wall0
                cpu = {name: m.stop() for name, m in meters.items()} | {"client": time.thread_time() - client0}
                out[kind] = {
                    "p50_ms": _pct(lat, 50),
                    "p99_ms": _pct(lat, 99),
                    "n": len(lat),
                    "requests_per_s": round(len(lat) / wall, 1),
                    "cpu_ms_per_request": {k: round(v / len(lat) * 1000, 2) for k, v in cpu.items()},
                }
                log(f"{path} {kind}: {out[kind]}")
        # The same answers by plain SQL over raw, timed under the same concurrency, compared.
        base_lat, answers = await _baseline(
            dsn, [(t, month_lo, end, timedelta(hours=1)) for t in month_ids[:20]], min(requests, 200)
        )
    sql_raw = {"p50_ms": _pct(base_lat, 50), "p99_ms": _pct(base_lat, 99), "n": len(base_lat)}
    log(f"plain SQL, 30 d of raw into hours: {sql_raw}")
    _, year_answers = await _baseline(
        dsn, [(t, year_lo, end, timedelta(days=1)) for t in year_ids], len(year_ids) * 4
    )
    mismatches = 0
    compared = 0
    for (tag, lo, hi), sql_rows in list(answers.items()) + list(year_answers.items()):
        params: dict[str, Any] = {"tag_id": tag, "start": iso(lo), "end": iso(hi), "days": "utc"}
        body = (await ac.get(readings, params=params)).json()
        mismatches += _mismatches(body["series"][0]["points"], body["fields"], sql_rows)
        compared += len(sql_rows)
    await ac.aclose()
    return {
        "dataset": {
            "tags": tags,
            "days": days,
            "interval_s": interval_s,
            "rows": rows,
            "year_tags": year_tags,
            "year_interval_s": year_interval_s,
            "year_rows": year_rows,
        },
        "load_s": round(load_s, 1),
        "rollup_build_s": round(rollup_s, 1),
        "build_s": round(load_s + rollup_s, 1),
        "refresh_lag_s": round(lag_s, 2),
        "clients": CLIENTS,
        "api_replicas": settings.api_replicas,
        "latest_tags": len(ids[:100]),  # latest_100 asks for the first 100 tags (fewer when --tags is small)
        # The headline: the replica's own port (Serve's direct ingress, the way the live page
        # and a load balancer over the replicas' ports come in); Serve's proxy beside it.
        "queries": by_path.get("direct", {}) | {"sql_raw_30d": sql_raw},
        "queries_proxy": by_path.get("proxy", {}),
        "queries_cold": cold,
        "round_trips_per_request": trips,
        "speedup_30d_vs_raw": _speedup(base_lat, by_path.get("direct")),
        "speedup_30d_vs_raw_proxy": _speedup(base_lat, by_path.get("proxy")),
        "rollup_mismatches": mismatches,
        "buckets_compared": compared,
    }
