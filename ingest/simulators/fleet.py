"""Simulator fleets and the counting checks that prove where every published value went.

Used by the demo, the scale_tests/ scenarios and benches, and the integration tests.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from ingest.core.models import GAP_QUALITY


def start_simulator(
    wells: int, tags: int, interval_ms: int, summary: Path, paused: bool = True, extra_args: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], str, list[str]]:
    cmd = [
        sys.executable,
        "-m",
        "ingest.simulators.opcua_sim",
        "--port",
        "0",
        "--wells",
        str(wells),
        "--tags",
        str(tags),
        "--interval-ms",
        str(interval_ms),
        "--mode",
        "counting",
        "--summary-file",
        str(summary),
        # Up to 10 s (not the default 3) for the last published values to reach the clients and be
        # acknowledged before the server closes: on a loaded machine 3 s was too short once, and
        # the last cycle then counted as lost. It ends as soon as nothing is pending, except when a
        # killed client's subscription still holds values (until its session times out).
        "--drain-s",
        "10",
    ]
    if paused:
        cmd.append("--start-paused")
    cmd.extend(extra_args)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    endpoint, node_ids = "", []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("simulator exited before it was ready")
        if line.startswith("NODES "):
            node_ids = json.loads(line[6:])
        if line.startswith("READY "):
            endpoint = line.split(" ", 1)[1].strip()
            break
    if not endpoint:
        proc.kill()
        raise RuntimeError("simulator did not become ready within 60 s")
    return proc, endpoint, node_ids


def stop_simulator(proc: subprocess.Popen[str], summary: Path) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    result: dict[str, Any] = json.loads(summary.read_text())
    return result


def wait_for(
    cond: Callable[[], Any],
    timeout_s: float,
    what: str,
    every_s: float = 0.2,
    describe: Callable[[], Any] | None = None,
) -> Any:
    """Poll until cond() is truthy; fail (not a timed assert: only a guard against hanging).
    ``describe`` adds the state seen at the end to the failure message."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every_s)
    state = ""
    if describe is not None:
        try:
            state = f"; last state: {describe()}"
        except Exception as e:
            state = f"; state unavailable: {e!r}"
    raise AssertionError(f"gave up waiting {timeout_s:.0f} s for: {what}{state}")


class SimProcess:
    """An OPC UA simulator in its own process, counting mode, started paused."""

    def __init__(self, wells: int, tags: int, interval_ms: int, extra_args: Sequence[str] = ()) -> None:
        """``extra_args``: more opcua_sim options (``--string-tags``, ``--extra-nodes N``)."""
        self._dir = tempfile.TemporaryDirectory()
        self.summary_file = Path(self._dir.name) / "summary.json"
        self.proc, self.endpoint, self.node_ids = start_simulator(
            wells, tags, interval_ms, self.summary_file, paused=True, extra_args=extra_args
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
            "name": name,
            "protocol": "opcua",
            "endpoint": self.endpoint,
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
            bad.append({"node": node, "published": n_pub, "stored": n, "distinct": d, "min": lo, "max": hi})
    return {"published": sum(published.values()), "stored": stored, "bad": bad}


def counting_check_with_gaps(
    dsn: str, tag_ids: dict[str, int], published: dict[str, int], window_s: float = 30.0
) -> dict[str, Any]:
    """Every published value 1..N of each tag is stored once, or lies in a recorded gap.

    A gap marker at time X says readings after X may be missing; it accounts for the values
    missing between the stored value just before it (at most ``window_s`` earlier, since the
    old session may have committed a little after the marker was placed) and the next stored
    value. ``unaccounted`` is the silent loss, which must be zero.
    """
    ids = list(tag_ids.values())
    rows = db_fetch(
        dsn,
        "SELECT tag_id, (extract(epoch FROM time) * 1e6)::int8 AS t, value, quality "
        "FROM scada_readings WHERE tag_id = ANY($1::int[]) ORDER BY tag_id, time",
        ids,
    )
    by_tag: dict[int, list[tuple[int, float]]] = {t: [] for t in ids}
    markers: dict[int, list[int]] = {t: [] for t in ids}
    for r in rows:
        if r["quality"] == GAP_QUALITY:
            markers[r["tag_id"]].append(r["t"])
        elif r["value"] is not None and r["value"] >= 1:
            by_tag[r["tag_id"]].append((r["t"], r["value"]))
    stored = dups = gap_values = unaccounted = 0
    holes: list[dict[str, Any]] = []  # the first runs of silent loss, to say where they are
    for node, tag in tag_ids.items():
        n_pub = published.get(node, 0)
        vals = by_tag[tag]
        stored += len(vals)
        seen = [int(v) for _, v in vals]
        dups += len(seen) - len(set(seen))
        # Walk the runs of missing values: between consecutive stored values, and after the last.
        prev_v, prev_t = 0, 0
        points = [(t, int(v)) for t, v in sorted(vals, key=lambda x: x[1])]
        points.append((2**62, n_pub + 1))
        for t, v in points:
            missing = v - prev_v - 1
            if missing > 0:
                covered = any(prev_t - window_s * 1e6 <= m < t for m in markers[tag])
                if covered:
                    gap_values += missing
                else:
                    unaccounted += missing
                    if len(holes) < 5:
                        near = [m for m in markers[tag] if prev_t - 60e6 <= m < t + 60e6]
                        holes.append(
                            {"tag": tag, "after": prev_v, "missing": missing, "after_us": prev_t, "next_us": t}
                            | {"markers_within_60s_us": near[:4]}
                        )
            prev_v, prev_t = max(prev_v, v), t
    return {
        "published": sum(published.values()),
        "stored": stored,
        "duplicates": dups,
        "gap_values": gap_values,
        "gap_markers": sum(len(m) for m in markers.values()),
        "unaccounted": unaccounted,
        "holes": holes,
    }
