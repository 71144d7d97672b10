"""The push benchmark's load: seed 002 request bodies over the bench tags, and the clients that
send them to ``POST /v1/ingest/realtime``, closed loop (each after its previous answer) or open
loop (offered at a rate, whatever the answers). Used by ``bench push`` and ``capacity``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import numpy as np

PARAMS = [
    ("wellhead_pressure", "psi"),
    ("hookload", "klbs"),
    ("flow_rate", "bbl/day"),
    ("downhole_temperature", "degF"),
]
POINTS = 1000


class Clients:
    """Counts shared by the client tasks of one phase."""

    def __init__(self) -> None:
        self.sent_requests = 0
        self.acked_requests = 0
        self.refused = 0
        self.replayed = 0
        self.acked_points = 0
        self.latencies_ms: list[float] = []


class Bodies:
    """Request bodies of 1,000 points over the bench tags, stamped ``start`` + k µs (k = the
    point's index). Everything but the timestamps is the same in every body, so it is encoded
    once and the timestamps (formatted by numpy, in C) are spliced in: the client shares the
    server's two cores, and building each body point by point in Python cost about 8 ms of them
    per request, near a core at the target rate."""

    def __init__(self, slug: str, wells: int) -> None:
        mark = "\x00"
        points = []
        for k in range(POINTS):
            w, (name, unit) = divmod(k, len(PARAMS))[0] % wells, PARAMS[k % len(PARAMS)]
            points.append(
                {
                    "well_id": f"W{w:04d}",
                    "timestamp": mark,
                    "parameter_name": name,
                    "value": 100.0 + k % 97,
                    "unit": unit,
                }
            )
        text = msgspec.json.encode({"tenant_id": slug, "data_points": points})
        self._parts = text.split(msgspec.json.encode(mark))
        assert len(self._parts) == POINTS + 1
        self._k = np.arange(POINTS, dtype=np.int64)

    def body(self, start_us: int) -> bytes:
        times = (start_us + self._k).astype("datetime64[us]")
        stamps = np.datetime_as_string(times, unit="us", timezone="UTC")
        out = [self._parts[0]]
        for ts, part in zip(stamps.tolist(), self._parts[1:], strict=True):
            out += (b'"', ts.encode(), b'"', part)
        return b"".join(out)


@dataclass(frozen=True)
class PushTarget:
    """Where and as whom a phase pushes: the API's URL, the tenant's key and slug, its wells, and
    the one clock of request times every phase shares (``request_times``)."""

    api: str
    key: str
    slug: str
    wells: int
    starts: Iterator[int]


def request_times() -> Iterator[int]:
    """Each request's start time: the clock when it is built (a site pushes what it just
    measured, so the rollups see data spread over real minutes, as deployed), and at least
    ``POINTS`` µs after the previous request's, so no two points of a tag share a time."""
    last = 0
    while True:
        last = max(time.time_ns() // 1000, last + POINTS)
        yield last


async def _post(
    c: aiohttp.ClientSession, body: bytes, idem: dict[str, str]
) -> tuple[int, dict[str, Any], bool, float]:
    """One push: its status, its JSON answer, whether it was a replay, and Retry-After."""
    async with c.post("/v1/ingest/realtime", data=body, headers=idem) as r:
        answer = await r.json(content_type=None)
        return (
            r.status,
            answer,
            bool(r.headers.get("idempotent-replayed")),
            float(r.headers.get("retry-after", "0.2")),
        )


def _session(to: PushTarget, connections: int) -> aiohttp.ClientSession:
    # aiohttp (its HTTP parser is in C): the clients share the server's two cores, and httpx
    # cost them about 6 CPU ms a request (README, push figures).
    return aiohttp.ClientSession(
        base_url=to.api,
        headers={"Authorization": f"Bearer {to.key}", "Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=120),
        connector=aiohttp.TCPConnector(limit=connections),
    )


async def _push_once(
    c: aiohttp.ClientSession, to: PushTarget, bodies: Bodies, stats: Clients, twice: bool, since: float | None
) -> None:
    """One request (sent twice at once with ``twice``), resent with the same key while it is
    refused, until acknowledged; its latency counted from ``since`` (when it was due) or from
    when it was first sent."""
    start = next(to.starts)
    body = bodies.body(start)
    idem = {"Idempotency-Key": f"bench-{to.slug}-{start}"}
    t = time.perf_counter() if since is None else since
    while True:
        stats.sent_requests += 2 if twice else 1
        rs = await asyncio.gather(*(_post(c, body, idem) for _ in range(2 if twice else 1)))
        ok = [r for r in rs if r[0] == 200]
        stats.replayed += sum(1 for r in ok if r[2])
        if len(ok) == len(rs):
            stats.acked_requests += 1
            stats.acked_points += ok[0][1]["accepted_count"]
            stats.latencies_ms.append((time.perf_counter() - t) * 1000)
            return
        stats.refused += 1
        await asyncio.sleep(rs[0][3])


async def _client(to: PushTarget, stop_at: float, stats: Clients, twice: bool) -> None:
    """Closed loop: pushes until ``stop_at``, each request after the previous one's answer."""
    bodies = Bodies(to.slug, to.wells)
    async with _session(to, 2) as c:
        while time.perf_counter() < stop_at:
            await _push_once(c, to, bodies, stats, twice, None)


# Open loop: requests in flight at most (each on its own keep-alive connection). Far above what
# 80 % of the rate needs (about 8 at 80 requests/s and 100 ms), so a slow answer never holds the
# next request back: the server sees the arrivals it was offered.
PACED_MAX_INFLIGHT = 64


async def _paced(to: PushTarget, stop_at: float, stats: Clients, requests_per_s: float) -> None:
    """Open loop: one request every ``1 / requests_per_s`` seconds until ``stop_at``, each sent
    when due whatever is still waiting, its latency counted from when it was due (a server
    that falls behind is charged for the wait: no coordinated omission)."""
    bodies = Bodies(to.slug, to.wells)
    inflight: set[asyncio.Task[None]] = set()
    async with _session(to, PACED_MAX_INFLIGHT) as c:
        due = time.perf_counter()
        while due < stop_at:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            task = asyncio.create_task(_push_once(c, to, bodies, stats, False, due))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            due += 1.0 / requests_per_s
        await asyncio.gather(*inflight)


def run_phase(
    to: PushTarget,
    clients: int,
    seconds: float,
    twice: bool,
    requests_per_s: float = 0.0,
) -> tuple[Clients, float]:
    """``clients`` pushing for ``seconds``, each after its previous answer; or, with
    ``requests_per_s``, requests offered at that rate whatever the answers (``_paced``)."""
    stats = Clients()

    async def run() -> float:
        t = time.perf_counter()
        if requests_per_s:
            await _paced(to, t + seconds, stats, requests_per_s)
        else:
            await asyncio.gather(*(_client(to, t + seconds, stats, twice) for _ in range(clients)))
        return time.perf_counter() - t

    return stats, asyncio.run(run())
