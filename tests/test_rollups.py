"""Rollups against the real database: every level equals a plain SQL aggregation of the raw rows,
whatever order batches arrive in, resent, Bad, gap markers and DST days included."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import asyncpg
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.core.batch import ReadingBatch
from ingest.core.config import Settings
from ingest.core.models import Quality, quality_as_int4
from ingest.read import rollups
from ingest.read.catalog import Catalog
from ingest.read.one_statement import CacheSlot, _read_one
from ingest.read.query import ReadRequest, _read_paged
from ingest.read.refresher import RollupRefresher, refresh_pass
from ingest.read.rollup_cache import RollupCache
from ingest.write.writer import TenantWriter
from tests.conftest import fresh_database

TZ = "America/New_York"
TAGS = (1, 2, 3)
GOOD, UNCERTAIN = 0, int(Quality.UNCERTAIN)
BAD, GAP = quality_as_int4(Quality.BAD), quality_as_int4(Quality.BAD_DATA_LOST)
# Around both 2024 DST changes in New York (spring 2024-03-10 07:00 UTC: a 23-hour day; autumn
# 2024-11-03 06:00 UTC: a 25-hour day) and a day 90 days before the first, for late arrivals.
ANCHORS = (
    datetime(2024, 3, 10, 7, tzinfo=UTC),
    datetime(2024, 11, 3, 6, tzinfo=UTC),
    datetime(2023, 12, 11, 0, tzinfo=UTC),
)


async def register_tags(dsn: str, tags: tuple[int, ...], tz: str = TZ) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        cid = await conn.fetchval(
            "INSERT INTO scada_connections (name, protocol, endpoint) "
            "VALUES ('c', 'opcua', 'opc.tcp://x') RETURNING id"
        )
        for t in tags:
            await conn.execute(
                "INSERT INTO tag_mappings (tag_id, connection_id, name, node_id) VALUES ($1, $2, $3, $4)",
                t,
                cid,
                f"tag{t}",
                f"ns=2;s=T{t}",
            )
        await conn.execute("UPDATE tenant_meta SET value = $1 WHERE key = 'timezone'", tz)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def rollup_db(stack: Settings) -> str:
    dsn = stack.dsn(asyncio.run(fresh_database(stack, "roll")))
    asyncio.run(register_tags(dsn, TAGS))
    return dsn


def batch(batch_id: str, rows: list[tuple[int, int, float, int]]) -> ReadingBatch:
    return ReadingBatch(
        batch_id,
        np.array([r[1] for r in rows], np.int64),
        np.array([r[0] for r in rows], np.int32),
        np.array([r[2] for r in rows], np.float64),
        np.array([r[3] for r in rows], np.int32),
    )


def us(t: datetime) -> int:
    return int((t - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def readings_near(anchor: datetime) -> st.SearchStrategy[tuple[int, int, float, int]]:
    """(tag, time in µs, value, quality) within 30 hours of an anchor. Times fall on whole
    seconds, or just beside one, so minute and hour boundaries are hit exactly."""
    return st.tuples(
        st.sampled_from(TAGS),
        st.tuples(st.integers(-30 * 3600, 30 * 3600), st.sampled_from([0, 1, 999_999])).map(
            lambda a: us(anchor) + a[0] * 1_000_000 + a[1]
        ),
        st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.integers(-5, 5).map(float), st.just(math.nan)),
        st.sampled_from([GOOD, GOOD, GOOD, UNCERTAIN, BAD, GAP]),
    )


# An action: write a new batch (its readings near one anchor, as a device's batch is), resend an
# earlier one, or run a refresh pass in between (so later batches arrive late for built buckets).
action = st.one_of(
    st.tuples(
        st.just("write"),
        st.sampled_from(ANCHORS).flatmap(lambda a: st.lists(readings_near(a), min_size=1, max_size=25)),
    ),
    st.tuples(st.just("resend"), st.integers(0, 50)),
    st.tuples(st.just("refresh"), st.just(0)),
)


async def _reset(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "TRUNCATE scada_readings, ingest_ledger, rollup_pending, rollup_10s, rollup_1m, rollup_1h, rollup_1d, "
        "rollup_1d_local"
    )
    # Minutes before the first anchor are rebuilt from raw whole, later ones summed from their
    # 10-second partials (as in a database that had readings when migration 022 came): both ways
    # are checked against plain SQL, and a batch may straddle the two.
    await conn.execute("UPDATE rollup_state SET partials_from = $1", ANCHORS[0])


async def expected(conn: asyncpg.Connection, width: str, tz: str | None) -> list[asyncpg.Record]:
    bucket = f"time_bucket(INTERVAL '{width}', time" + (f", '{tz}')" if tz else ")")
    return await conn.fetch(f"""
        SELECT tag_id, {bucket} AS bucket, count(*) FILTER (WHERE ok) AS n,
               sum(value) FILTER (WHERE ok) AS sum, min(value) FILTER (WHERE ok) AS min,
               max(value) FILTER (WHERE ok) AS max,
               min(time) FILTER (WHERE ok) AS first_time, max(time) FILTER (WHERE ok) AS last_time,
               sum(abs(value)) FILTER (WHERE ok) AS magnitude,
               count(*) FILTER (WHERE quality < 0 AND quality <> {GAP}) AS bad
        FROM (SELECT *, quality >= 0 AND value IS NOT NULL AND value <> 'NaN' AS ok
              FROM scada_readings) r
        GROUP BY 1, 2 ORDER BY 1, 2""")


async def values_at(conn: asyncpg.Connection, tag: int, t: datetime | None) -> list[float | None]:
    """The values that may stand first or last at that time: the readings that count (Good or
    Uncertain, not NaN). Two of them can share a time (a batch may repeat one), so either is right."""
    if t is None:
        return [None]
    rows = await conn.fetch(
        "SELECT value FROM scada_readings WHERE tag_id = $1 AND time = $2 AND quality >= 0 "
        "AND value IS NOT NULL AND value <> 'NaN'",
        tag,
        t,
    )
    return [r["value"] for r in rows]


async def check_levels(conn: asyncpg.Connection) -> None:
    for table, width, tz in (
        ("rollup_1m", "1 minute", None),
        ("rollup_1h", "1 hour", None),
        ("rollup_1d", "1 day", None),
        ("rollup_1d_local", "1 day", TZ),
    ):
        want = await expected(conn, width, tz)
        got = await conn.fetch(f"SELECT * FROM {table} ORDER BY tag_id, bucket")
        assert [(r["tag_id"], r["bucket"]) for r in got] == [(r["tag_id"], r["bucket"]) for r in want], table
        for g, w in zip(got, want, strict=True):
            where = f"{table} tag {g['tag_id']} bucket {g['bucket']}"
            for col in ("n", "min", "max", "first_time", "last_time", "bad"):
                assert g[col] == w[col], f"{where}: {col} {g[col]} != {w[col]}"
            if w["sum"] is None:
                assert g["sum"] is None, where
            else:  # summation order differs between levels: relative 1e-9 of the magnitudes
                assert math.isclose(g["sum"], w["sum"], rel_tol=1e-9, abs_tol=1e-9 * w["magnitude"]), where
            # First / last values are defined by their times (NaN and Bad readings never count).
            assert g["first_value"] in await values_at(conn, g["tag_id"], w["first_time"]), where
            assert g["last_value"] in await values_at(conn, g["tag_id"], w["last_time"]), where


async def check_read_paths(conn: asyncpg.Connection) -> None:
    """The one-statement read path answers exactly as the paged one (rows, level, cursor, the
    fresh buckets from raw), over these readings' Bad values, gaps, NaN and DST days."""
    tags = list((await Catalog.load(conn)).tags.values())
    for anchor in ANCHORS:
        now = anchor + timedelta(hours=2, minutes=30)  # fresh buckets from raw inside the data
        for span, res, local, limit in (
            (timedelta(hours=3), "auto", True, 10_000),
            (timedelta(hours=3), "raw", True, 7),
            (timedelta(hours=30), "auto", True, 10_000),
            (timedelta(days=3), "auto", True, 50),
            (timedelta(days=3), "1h", False, 10_000),
            (timedelta(days=20), "auto", True, 10_000),
            (timedelta(days=40), "auto", False, 10_000),
            (timedelta(days=3), "1d", True, 2),
        ):
            for n in (1, len(tags)):
                req = ReadRequest(
                    tags[:n], now - span + timedelta(seconds=17), now + timedelta(hours=1), res, 200, limit, local
                )
                one = await _read_one(conn, req, TZ, timedelta(seconds=30), now)
                paged = await _read_paged(conn, req, TZ, fresh_window=timedelta(seconds=30), now=now)
                if one is None:
                    continue
                assert repr((one.level, one.next, [x.points for x in one.series])) == repr(
                    (paged.level, paged.next, [x.points for x in paged.series])
                ), req


async def check_cached_reads(conn: asyncpg.Connection, cache: RollupCache) -> None:
    """Answers read through the replica's rollup cache, kept across the scenario's writes and
    refresh passes, are the bytes the uncached statement answers."""
    tags = list((await Catalog.load(conn)).tags.values())
    for anchor in ANCHORS:
        now = anchor + timedelta(hours=2, minutes=30)
        for span, res, local in (
            (timedelta(hours=30), "auto", True),
            (timedelta(days=3), "1h", False),
            (timedelta(hours=5), "1h", False),
            (timedelta(days=20), "auto", True),
            (timedelta(days=40), "auto", False),
            (timedelta(days=3), "1d", True),
        ):
            for n in (1, len(tags)):
                req = ReadRequest(
                    tags[:n], now - span + timedelta(seconds=17), now + timedelta(hours=1), res, 200, 10_000, local
                )
                plain = await _read_one(conn, req, TZ, timedelta(seconds=30), now)
                cached = await _read_one(conn, req, TZ, timedelta(seconds=30), now, CacheSlot(cache, "db"))
                assert plain is not None and cached is not None
                assert orjson.dumps([x.points for x in cached.series], option=orjson.OPT_UTC_Z) == orjson.dumps(
                    [x.points for x in plain.series], option=orjson.OPT_UTC_Z
                ), req


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=st.lists(action, min_size=1, max_size=12))
def test_every_level_equals_plain_aggregation_of_raw(rollup_db: str, actions: list[tuple[str, Any]]) -> None:
    asyncio.run(_scenario(rollup_db, actions))


async def _scenario(dsn: str, actions: list[tuple[str, Any]]) -> None:
    conn = await asyncpg.connect(dsn)
    await _reset(conn)
    w = TenantWriter(dsn, flush_interval_ms=5)
    await w.start()
    # Small bounds, so ranges are split across passes and the ledger is taken in pieces; two
    # tags a statement, so minutes are rebuilt from raw in slices (with pauses between).
    # Partials kept for every minute from the first anchor on (their window reaching back past
    # every anchor: in the field it is the last 10 minutes).
    refresher = RollupRefresher(
        dsn, max_xacts_per_pass=2, max_minutes_per_pass=720, pace=0.1, partials_window=timedelta(days=20_000)
    )
    sent: list[ReadingBatch] = []
    taken: set[tuple[int, int]] = set()
    cache = RollupCache()
    await check_cached_reads(conn, cache)  # held while the rollups are empty yet
    slices = mock.patch.object(rollups, "RAW_SLICE_TAGS", 2)
    slices.start()
    try:
        for i, (kind, arg) in enumerate(actions):
            if kind == "write":
                rows = [r for r in arg if (r[0], r[1]) not in taken]
                taken |= {(r[0], r[1]) for r in rows}
                if rows:
                    sent.append(batch(f"b{i}", rows))
                    await w.write(sent[-1])
            elif kind == "resend" and sent:
                again = await w.write(sent[arg % len(sent)])
                assert again.duplicate
            else:
                await refresher.run_pass()
                await check_cached_reads(conn, cache)
        await refresher.run_until_idle()
        await check_levels(conn)
        await check_read_paths(conn)
        await check_cached_reads(conn, cache)
    finally:
        slices.stop()
        await w.stop()
        await refresher.close()
        await conn.close()


async def test_pass_is_bounded_and_newest_range_goes_first(stack: Settings) -> None:
    dsn = stack.dsn(await fresh_database(stack, "roll"))
    await register_tags(dsn, (1,), "UTC")
    w = TenantWriter(dsn, flush_interval_ms=5)
    await w.start()
    now = datetime(2024, 6, 1, tzinfo=UTC)
    # One batch spanning 10 hours (a backfill), then one current reading.
    await w.write(batch("old", [(1, us(now - timedelta(hours=10)) + k * 60_000_000, 1.0, 0) for k in range(600)]))
    await w.write(batch("new", [(1, us(now) + 5_000_000, 7.0, 0)]))
    await w.stop()
    conn = await asyncpg.connect(dsn)
    try:
        first = await refresh_pass(conn, max_minutes=60)
        deadline = time.monotonic() + 60
        while first.ledger_rows == 0 and time.monotonic() < deadline:
            # A pass takes in only what every open transaction of the server can see (the
            # snapshot's xmin): a transaction elsewhere that began before our commits (other
            # tests' writers) holds them back for a moment.
            await asyncio.sleep(0.1)
            first = await refresh_pass(conn, max_minutes=60)
        assert first.minutes_rebuilt == 60 and first.more and first.pending_minutes > 0
        # The newest minute is rebuilt in the first pass; the backfill waits its turn.
        assert await conn.fetchval("SELECT last_value FROM rollup_1m WHERE bucket = $1", now) == 7.0
        passes = 1
        while (await refresh_pass(conn, max_minutes=60)).more:
            passes += 1
        assert passes >= 10
        assert await conn.fetchval("SELECT sum(n) FROM rollup_1h") == 601
        assert await conn.fetchval("SELECT count(*) FROM rollup_pending") == 0
    finally:
        await conn.close()


async def test_an_idle_pass_writes_nothing_and_the_next_batch_is_still_taken_in(stack: Settings) -> None:
    """A tenant with nothing new costs its database one read per pass, no transaction: the
    watermark row is not rewritten. A batch committed after idle passes is rolled up as ever."""
    dsn = stack.dsn(await fresh_database(stack, "roll"))
    await register_tags(dsn, (1,), "UTC")
    now = datetime(2024, 6, 1, tzinfo=UTC)
    refresher = RollupRefresher(dsn)
    conn = await asyncpg.connect(dsn)
    w = TenantWriter(dsn, flush_interval_ms=5)
    await w.start()
    try:
        state = "SELECT xmin::text AS x, done_below FROM rollup_state"
        before = await conn.fetchrow(state)
        for _ in range(3):
            r = await refresher.run_pass()
            assert (r.ledger_rows, r.minutes_rebuilt, r.more, r.busy) == (0, 0, False, False)
        assert await conn.fetchrow(state) == before  # the row's version (xmin) unchanged: no write
        assert refresher.passes == 3 and refresher.lag_s == 0.0
        await w.write(batch("late", [(1, us(now) + 1_000_000, 4.0, 0), (1, us(now) + 2_000_000, 6.0, 0)]))
        await refresher.run_until_idle()
        row = await conn.fetchrow("SELECT n, sum, min, max FROM rollup_1m WHERE tag_id = 1 AND bucket = $1", now)
        assert tuple(row) == (2, 10.0, 4.0, 6.0)
        assert (await conn.fetchrow(state))["done_below"] > before["done_below"]
    finally:
        await w.stop()
        await refresher.close()
        await conn.close()


async def test_rollup_lag_counts_put_off_work_until_it_is_in(stack: Settings) -> None:
    """The lag an operator alerts on: from the commit of the oldest reading not yet in the
    rollups (waiting in the ledger or put off by a bounded pass), and 0 once everything is in."""
    dsn = stack.dsn(await fresh_database(stack, "roll"))
    await register_tags(dsn, (1,), "UTC")
    w = TenantWriter(dsn, flush_interval_ms=5)
    await w.start()
    now = datetime(2024, 6, 1, tzinfo=UTC)
    await w.write(batch("old", [(1, us(now - timedelta(hours=10)) + k * 60_000_000, 1.0, 0) for k in range(600)]))
    await w.stop()
    reported: list[float] = []
    refresher = RollupRefresher(dsn, max_minutes_per_pass=60, on_lag=reported.append)
    conn = await asyncpg.connect(dsn)
    try:
        committed = await conn.fetchval("SELECT committed_at FROM ingest_ledger WHERE batch_id = 'old'")
        before = (datetime.now(UTC) - committed).total_seconds()
        r = await refresher.run_pass()
        deadline = time.monotonic() + 60
        while r.ledger_rows == 0 and time.monotonic() < deadline:  # held back by xmin (above)
            await asyncio.sleep(0.1)
            r = await refresher.run_pass()
        assert r.more and r.pending_minutes > 0
        # Nine hours are still put off: the lag runs from that batch's commit, not from now.
        assert refresher.lag_s >= before > 0 and reported[-1] == refresher.lag_s
        while (await refresher.run_pass()).more:
            assert refresher.lag_s >= before
        assert refresher.lag_s == 0.0 and reported[-1] == 0.0
        assert await conn.fetchval("SELECT sum(n) FROM rollup_1h") == 600
    finally:
        await refresher.close()
        await conn.close()


async def test_retention_never_drops_raw_that_is_not_rolled_up(stack: Settings) -> None:
    from ingest.read.retention import apply_retention, save_settings

    dsn = stack.dsn(await fresh_database(stack, "roll"))
    await register_tags(dsn, (1,), "UTC")
    w = TenantWriter(dsn, flush_interval_ms=5)
    await w.start()
    old = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)
    await w.write(batch("old", [(1, us(old) + k * 60_000_000, float(k), 0) for k in range(120)]))
    await w.stop()
    conn = await asyncpg.connect(dsn)
    try:
        await save_settings(conn, raw_retention_days=1)
        held = await apply_retention(conn)  # the refresher has not run: nothing may go
        assert held.dropped["scada_readings"] == 0
        assert await conn.fetchval("SELECT count(*) FROM scada_readings") == 120
        refresher = RollupRefresher(dsn)
        await refresher.run_until_idle()
        await refresher.close()
        done = await apply_retention(conn)
        assert done.dropped["scada_readings"] == 1
        assert await conn.fetchval("SELECT count(*) FROM scada_readings") == 0
        assert done.horizons["scada_readings"] == old + timedelta(days=1)
        # Rollups keep the range, and a later pass does not rebuild it from the emptied raw.
        await w.start()
        await w.write(batch("late", [(1, us(old) + 30 * 60_000_000 + 1, 5.0, 0)]))
        await w.stop()
        refresher = RollupRefresher(dsn)
        await refresher.run_until_idle()
        await refresher.close()
        # Data older than raw retention is not rolled up (documented in ingest.read.retention).
        assert await conn.fetchval("SELECT sum(n) FROM rollup_1h") == 120
    finally:
        await conn.close()
