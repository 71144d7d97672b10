"""Shared test helpers: simulator processes and counting checks against the real database."""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from ingest.demo import start_simulator, stop_simulator


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    """Poll until cond() is truthy; fail (not a timed assert: only a guard against hanging)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every_s)
    raise AssertionError(f"gave up waiting {timeout_s:.0f} s for: {what}")


class SimProcess:
    """An OPC UA simulator in its own process, counting mode, started paused."""

    def __init__(self, wells: int, tags: int, interval_ms: int) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self.summary_file = Path(self._dir.name) / "summary.json"
        self.proc, self.endpoint, self.node_ids = start_simulator(
            wells, tags, interval_ms, self.summary_file, paused=True
        )

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGUSR2)

    def stop(self) -> dict[str, Any]:
        return stop_simulator(self.proc, self.summary_file)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._dir.cleanup()

    def connection_body(self, name: str, publishing_interval_ms: int = 50) -> dict[str, Any]:
        return {
            "name": name, "protocol": "opcua", "endpoint": self.endpoint,
            "publishing_interval_ms": publishing_interval_ms,
            "tags": [{"name": n.split(";s=")[-1], "node_id": n} for n in self.node_ids],
        }


def db_fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def counting_check(dsn: str, tag_ids: dict[str, int], published: dict[str, int]) -> dict[str, Any]:
    """Compare what each node published (values 1..N) with what landed for its tag.

    Returns totals and the list of tags whose stored values are not exactly 1..N once each.
    """
    rows = db_fetch(
        dsn,
        "SELECT tag_id, count(*) AS n, count(DISTINCT value) AS d, min(value) AS lo, "
        "max(value) AS hi FROM scada_readings WHERE tag_id = ANY($1::int[]) AND value >= 1 "
        "GROUP BY tag_id",
        list(tag_ids.values()),
    )
    by_tag = {r["tag_id"]: r for r in rows}
    bad = []
    stored = 0
    for node, tag in tag_ids.items():
        n_pub = published.get(node, 0)
        r = by_tag.get(tag)
        n, d, lo, hi = (r["n"], r["d"], r["lo"], r["hi"]) if r else (0, 0, None, None)
        stored += n
        if n_pub and not (n == d == n_pub and lo == 1 and hi == n_pub):
            bad.append({"node": node, "published": n_pub, "stored": n, "distinct": d,
                        "min": lo, "max": hi})
    return {"published": sum(published.values()), "stored": stored, "bad": bad}
