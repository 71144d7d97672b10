"""``scada-ingest demo``: a simulated OPC UA fleet streamed end to end, counted at the end.

The simulator runs in counting mode (every tag publishes 1, 2, 3, ...), so after it stops the demo
knows exactly how many values were published and can check that each landed once.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

import asyncpg
import httpx
import numpy as np

from ingest.core.config import Settings
from ingest.simulators.fleet import start_simulator, stop_simulator

DEMO_TENANT = "demo"


class DemoClient:
    def __init__(self, api: str, admin_key: str) -> None:
        self.http = httpx.Client(base_url=api, timeout=60, headers={"Authorization": f"Bearer {admin_key}"})

    def ensure_tenant(self, slug: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/tenants/{slug}")
        if r.status_code == 404:
            r = self.http.post("/v1/tenants", json={"slug": slug, "name": "Demo oilfield"})
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def replace_connections(self, slug: str, body: dict[str, Any]) -> dict[str, Any]:
        """Retire earlier demo runs' connections, then register this run's."""
        for c in self.http.get(f"/v1/tenants/{slug}/connections").json():
            self.http.delete(f"/v1/tenants/{slug}/connections/{c['id']}").raise_for_status()
        r = self.http.post(f"/v1/tenants/{slug}/connections", json=body)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out


async def _count(dsn: str, tag_ids: list[int]) -> tuple[int, int, float | None]:
    """(rows with a counting value >= 1, distinct (tag, value) pairs, newest source time)."""
    conn = await asyncpg.connect(dsn)
    try:
        r = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT (tag_id, value)) AS d, "
            "extract(epoch FROM max(time)) AS newest FROM scada_readings "
            "WHERE tag_id = ANY($1::int[]) AND value >= 1",
            tag_ids,
        )
        return int(r["n"]), int(r["d"]), float(r["newest"]) if r["newest"] else None
    finally:
        await conn.close()


def _latency(before: np.ndarray, after: np.ndarray) -> tuple[float | None, float | None]:
    if before.shape != after.shape:
        before = np.zeros_like(after)
    counts = after - before
    total = int(counts.sum())
    if total == 0:
        return None, None
    cum = np.cumsum(counts)
    return (float(np.searchsorted(cum, 0.5 * total)), float(np.searchsorted(cum, 0.99 * total)))


def run_demo(
    settings: Settings, api: str, duration_s: float, wells: int, tags: int, interval_ms: int
) -> dict[str, Any]:
    import ray

    from actors.common import writer_name

    summary_file = settings.local_dir / "demo-sim-summary.json"
    summary_file.unlink(missing_ok=True)
    proc, endpoint, node_ids = start_simulator(wells, tags, interval_ms, summary_file)
    try:
        client = DemoClient(api, settings.admin_key)
        tenant = client.ensure_tenant(DEMO_TENANT)
        conn = client.replace_connections(
            DEMO_TENANT,
            {
                "name": f"demo-sim-{int(time.time())}",
                "protocol": "opcua",
                "endpoint": endpoint,
                "publishing_interval_ms": min(interval_ms, 100),
                "tags": [
                    {"name": n.split(";s=")[-1], "node_id": n, "well": n.split("=")[-1][:4], "unit": "bar"}
                    for n in node_ids
                ],
            },
        )
        tag_ids = [t["tag_id"] for t in conn["tags"]]
        dsn = settings.dsn(f"scada_t_{DEMO_TENANT}")
        # Start counting only once the subscription delivers (its first notification is each
        # tag's initial value 0), so every counted value was published to a live subscriber.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if asyncio.run(_initial_rows(dsn, tag_ids)) >= len(tag_ids):
                break
            time.sleep(0.3)
        else:
            raise RuntimeError("the demo connection delivered nothing within 60 s")
        # The coordinator created the tenant's writer by now: its first rows have landed.
        writer = ray.get_actor(writer_name(DEMO_TENANT), namespace=settings.namespace)
        hist0: np.ndarray = np.asarray(ray.get(writer.latency_histogram.remote()))
        proc.send_signal(signal.SIGUSR1)  # resume publishing
        sys.stderr.write(
            f"live page: {api}/ui/#tenant={DEMO_TENANT} (type a read key of the tenant there; "
            "it is exchanged for a one-time ticket, never put in a URL)\n"
        )
        t0 = time.monotonic()
        last_n, last_t = 0, t0
        while time.monotonic() - t0 < duration_s:
            time.sleep(1.0)
            n, _, newest = asyncio.run(_count(dsn, tag_ids))
            now = time.monotonic()
            rate = (n - last_n) / max(1e-6, now - last_t)
            lag = time.time() - newest if newest else float("nan")
            p50, p99 = _latency(hist0, ray.get(writer.latency_histogram.remote()))
            sys.stderr.write(
                f"\r[{now - t0:5.1f}s] stored {n:>9,} readings  {rate:>8,.0f}/s  "
                f"latency p50 {p50} ms p99 {p99} ms  lag {lag:5.2f}s   "
            )
            sys.stderr.flush()
            last_n, last_t = n, now
        sys.stderr.write("\n")
        sim = stop_simulator(proc, summary_file)
        published = int(sim["published"])
        # Drain: wait until everything published is stored, or nothing moves for 20 s.
        stored, distinct, _ = asyncio.run(_count(dsn, tag_ids))
        idle_since = time.monotonic()
        while stored < published and time.monotonic() - idle_since < 20:
            time.sleep(0.5)
            n, distinct, _ = asyncio.run(_count(dsn, tag_ids))
            if n != stored:
                idle_since = time.monotonic()
            stored = n
        p50, p99 = _latency(hist0, ray.get(writer.latency_histogram.remote()))
        # The simulator is gone: retire its connection so nothing keeps dialling it.
        client.http.delete(f"/v1/tenants/{DEMO_TENANT}/connections/{conn['id']}")
        return {
            "tenant": tenant["slug"],
            "connection_id": conn["id"],
            "tags": len(tag_ids),
            "duration_s": duration_s,
            "published": published,
            "stored": stored,
            "duplicates": stored - distinct,
            "lost": published - distinct,
            "rate_per_s": round(stored / duration_s, 1),
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "docs": f"{api}/docs",
            "live_page": f"{api}/ui/#tenant={DEMO_TENANT}",
        }
    finally:
        if proc.poll() is None:
            proc.kill()


async def _initial_rows(dsn: str, tag_ids: list[int]) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        n = await conn.fetchval(
            "SELECT count(DISTINCT tag_id) FROM scada_readings WHERE tag_id = ANY($1::int[])",
            tag_ids,
        )
        return int(n)
    finally:
        await conn.close()
