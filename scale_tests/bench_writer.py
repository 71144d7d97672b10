"""``scada-ingest bench writer``: the writer path against the database's own COPY, in one run.

Four ways to land the same N rows into the same tenant schema (hypertable + (tag_id, time DESC)
index), each starting from an empty table:
  writer       the writer actor, fed 10k-row Arrow batches by a Ray caller (validation, ledger,
               binary COPY, Redis fan-out: the write path), its rollup refresher paused
  writer_with_rollups
               the same actor as deployed: its rollup refresher also re-reads every committed
               range into the 1m/1h/1d rollups every 5 s, on the same two cores (read-side work
               the server's COPY does not do, so it is shown apart rather than in the ratio)
  server_copy  COPY ... FROM '<file>' (FORMAT binary) run by the server itself: the ceiling
  unnest       INSERT ... SELECT FROM unnest(...) in 10k-row batches: what the replaced system did
Methods alternate over rounds; the best round of each is reported (the machine is shared).
A second phase runs two tenants' writers at once to show each gets its share.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from ingest.core.batch import ReadingBatch
from ingest.core.config import Settings
from ingest.write.copy_binary import encode_readings
from scale_tests.common import (
    count_rows,
    ensure_tenant,
    log,
    prepare_stack,
    ratio,
    start_private_ray,
    summary_rates,
    truncate,
)
from scale_tests.cpu import start_profile, stop_profile, summarise

BATCH = 10_000


def make_rows(n: int, tag_ids: list[int], seed: int = 7) -> ReadingBatch:
    rng = np.random.default_rng(seed)
    tags = np.asarray(tag_ids, np.int32)
    t0 = int((time.time() - 86_400) * 1e6)
    k = np.arange(n)
    return ReadingBatch(
        "bench",
        t0 + (k // tags.shape[0]) * 1000 + (k % tags.shape[0]),
        tags[k % tags.shape[0]],
        rng.uniform(10, 1000, n),
        np.zeros(n, np.int32),
    )


def slices(rows: ReadingBatch, prefix: str) -> list[ReadingBatch]:
    out = []
    for i, s in enumerate(range(0, len(rows), BATCH)):
        sl = slice(s, s + BATCH)
        out.append(
            ReadingBatch(f"{prefix}:{i}", rows.time_us[sl], rows.tag_id[sl], rows.value[sl], rows.quality[sl])
        )
    return out


async def run_server_copy(settings: Settings, db: str, rows: ReadingBatch) -> float:
    payload = encode_readings(rows.time_us, rows.tag_id, rows.value, rows.quality)
    fd, path = tempfile.mkstemp(prefix="scada-bench-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(path, 0o644)  # the server process (user postgres) reads it
        conn = await asyncpg.connect(settings.dsn(db))
        try:
            t = time.perf_counter()
            await conn.execute(f"COPY scada_readings (time, tag_id, value, quality) FROM '{path}' (FORMAT binary)")
            return len(rows) / (time.perf_counter() - t)
        finally:
            await conn.close()
    finally:
        os.unlink(path)


async def run_unnest(settings: Settings, db: str, rows: ReadingBatch) -> float:
    # The arguments are built before the clock starts: only the database work is timed.
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    args = []
    for b in slices(rows, "u"):
        args.append(
            (
                [epoch + timedelta(microseconds=int(t)) for t in b.time_us],
                b.tag_id.tolist(),
                b.value.tolist(),
                b.quality.tolist(),
            )
        )
    conn = await asyncpg.connect(settings.dsn(db))
    try:
        t = time.perf_counter()
        for a in args:
            await conn.execute(
                "INSERT INTO scada_readings (time, tag_id, value, quality) "
                "SELECT * FROM unnest($1::timestamptz[], $2::int4[], $3::float8[], $4::int4[])",
                *a,
            )
        return len(rows) / (time.perf_counter() - t)
    finally:
        await conn.close()


# Batches in flight to the writer: enough that the next flush's rows are already queued when a
# flush commits (flush_rows 50,000 = 5 batches; a tenant's senders hold 4 each, and a tenant with
# several connection actors has several senders), so the round measures the writer, not the
# caller's round trip.
INFLIGHT = 16


async def feed_writer(writer: Any, batches: list[ReadingBatch], inflight: int = INFLIGHT) -> float:
    arrow = [b.to_arrow() for b in batches]  # encoding for transport happens at the source
    sem = asyncio.Semaphore(inflight)

    async def one(rb: Any) -> None:
        async with sem:
            await writer.write.remote(rb)

    t = time.perf_counter()
    await asyncio.gather(*(one(rb) for rb in arrow))
    return sum(len(b) for b in batches) / (time.perf_counter() - t)


def new_writer(settings: Settings, tenant_id: str, slug: str, tag: str, rollups: bool = True) -> Any:
    import ray

    from actors.writer import WriterActor

    if not rollups:  # the refresher's first pass finds an empty ledger; the next is an hour away
        settings = settings.model_copy(update={"rollup_refresh_interval_s": 3600.0})
    w = WriterActor.options(name=f"bench-writer-{slug}-{tag}").remote(  # type: ignore[attr-defined]
        settings, tenant_id, slug
    )
    ray.get(w.health.remote())
    # Built before the clock starts, as the coordinator starts every active tenant's writer
    # before its first batch: the round times landing rows, not connecting and loading rules.
    ray.get(w.start.remote())
    return w


def run(settings: Settings, n_rows: int, rounds: int = 2, profile: Path | None = None) -> dict[str, Any]:
    """``profile``: a folder to sample each writer round's actor into with py-spy (collapsed
    stacks plus a top-functions summary per round)."""
    import ray

    prepare_stack(settings)
    start_private_ray()
    tenant, tag_ids = asyncio.run(ensure_tenant(settings, "bench_a", 1000))
    tenant_b, tag_ids_b = asyncio.run(ensure_tenant(settings, "bench_b", 1000))
    db, db_b = f"scada_t_{tenant.slug}", f"scada_t_{tenant_b.slug}"
    rows = make_rows(n_rows, tag_ids)
    order = ["server_copy", "writer", "unnest", "writer_with_rollups"]
    results: dict[str, list[float]] = {m: [] for m in order}
    for r in range(rounds):
        for method in order[r % 4 :] + order[: r % 4]:
            asyncio.run(truncate(settings, db))
            if method == "server_copy":
                rate = asyncio.run(run_server_copy(settings, db, rows))
            elif method == "unnest":
                rate = asyncio.run(run_unnest(settings, db, rows))
            else:
                w = new_writer(settings, tenant.id, tenant.slug, f"{method}-r{r}", method == "writer_with_rollups")
                spy = None
                if profile is not None:
                    spy = start_profile(ray.get(w.stats.remote())["pid"], profile / f"{method}-r{r}.txt")
                    time.sleep(1.0)  # py-spy attaches
                rate = asyncio.run(feed_writer(w, slices(rows, f"bench-r{r}")))
                if profile is not None:
                    stop_profile(spy)
                    summary = summarise(profile / f"{method}-r{r}.txt")
                    (profile / f"{method}-r{r}.summary.txt").write_text(summary + "\n")
                    log(summary)
                ray.kill(w)
            stored = asyncio.run(count_rows(settings, db))
            if stored != n_rows:
                raise RuntimeError(f"{method}: {stored} rows stored, expected {n_rows}")
            results[method].append(rate)
            log(f"round {r + 1}: {method:<12} {rate:>10,.0f} rows/s")
    best = summary_rates(results)
    # Two tenants at once: each should get about half of what one gets alone.
    for d in (db, db_b):
        asyncio.run(truncate(settings, d))
    wa = new_writer(settings, tenant.id, tenant.slug, "ca", rollups=False)
    wb = new_writer(settings, tenant_b.id, tenant_b.slug, "cb", rollups=False)
    rows_b = make_rows(n_rows // 2, tag_ids_b, seed=8)
    rows_a = make_rows(n_rows // 2, tag_ids, seed=9)

    async def both() -> list[float]:
        return list(
            await asyncio.gather(feed_writer(wa, slices(rows_a, "ca")), feed_writer(wb, slices(rows_b, "cb")))
        )

    conc = asyncio.run(both())
    ray.kill(wa)
    ray.kill(wb)
    log(f"concurrent: tenant a {conc[0]:,.0f} rows/s, tenant b {conc[1]:,.0f} rows/s")
    return {
        "bench": "writer",
        "rows": n_rows,
        "batch_rows": BATCH,
        "inflight_batches": INFLIGHT,
        "flush_rows": settings.flush_rows,
        "rounds": rounds,
        "rows_per_s": best,
        "all_rounds": {k: [round(x) for x in v] for k, v in results.items()},
        "ratio_vs_server_copy": ratio(best["writer"], best["server_copy"]),
        "ratio_vs_unnest": ratio(best["writer"], best["unnest"]),
        "ratio_with_rollups_vs_server_copy": ratio(best["writer_with_rollups"], best["server_copy"]),
        "concurrent_tenants": {
            "rows_per_s": [round(x) for x in conc],
            "fairness_min_over_max": ratio(min(conc), max(conc)),
            "combined_vs_single_writer": ratio(sum(conc), best["writer"]),
        },
    }
