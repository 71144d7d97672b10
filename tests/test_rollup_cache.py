"""The replica's rollup cache: its bookkeeping alone (unit), then against the real database, that a
cached answer stays exact through a late batch, a resent one, retention and a time zone change."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from ingest.core.config import Settings
from ingest.read.catalog import Catalog
from ingest.read.one_statement import CacheSlot, _read_one
from ingest.read.query import ReadRequest
from ingest.read.refresher import RollupRefresher
from ingest.read.retention import apply_retention, save_settings
from ingest.read.rollup_cache import RollupCache, encode_row
from ingest.write.writer import TenantWriter
from tests.conftest import fresh_database
from tests.test_rollups import batch, register_tags, us

H = timedelta(hours=1)
T0 = datetime(2024, 6, 1, tzinfo=UTC)


def _rows(hours: range) -> tuple[list[datetime], list[orjson.Fragment]]:
    times = [T0 + k * H for k in hours]
    return times, [encode_row([t, k]) for k, t in zip(hours, times, strict=True)]


def test_plan_takes_held_rows_and_reads_only_past_them() -> None:
    c = RollupCache()
    assert c.plan("db", "rollup_1h", [1], T0, T0 + 10 * H).fetch_from is None  # nothing held
    c.advance("db", "rollup_1h", -1, 7, None, None)
    c.store("db", "rollup_1h", 7, 1, T0, T0, T0 + 10 * H, *_rows(range(0, 10, 2)))  # gaps: no rows there
    assert c.rows == 5
    # Every tag must be held for the plan to use any: tag 2 is not.
    assert not c.plan("db", "rollup_1h", [1, 2], T0 + 3 * H, T0 + 12 * H).used
    p = c.plan("db", "rollup_1h", [1], T0 + 3 * H, T0 + 12 * H)
    assert p.version == 7 and p.fetch_from == T0 + 10 * H
    assert [r[1] for r in orjson.loads(orjson.dumps(p.held[0]))] == [4, 6, 8]
    # A request ending before the run does: everything held, nothing read.
    assert c.plan("db", "rollup_1h", [1], T0, T0 + 5 * H).fetch_from == T0 + 5 * H
    # Starting before the run: read whole.
    assert c.plan("db", "rollup_1h", [1], T0 - H, T0 + 5 * H).fetch_from is None
    # The continuation extends the run.
    c.store("db", "rollup_1h", 7, 1, T0 + 3 * H, T0 + 10 * H, T0 + 12 * H, *_rows(range(10, 12)))
    assert c.plan("db", "rollup_1h", [1], T0, T0 + 12 * H).fetch_from == T0 + 12 * H and c.rows == 7
    # Two tags held to different ends: the database reads both from the nearer end.
    c.store("db", "rollup_1h", 7, 2, T0, T0, T0 + 8 * H, *_rows(range(8)))
    p = c.plan("db", "rollup_1h", [1, 2], T0, T0 + 12 * H)
    assert p.fetch_from == T0 + 8 * H and [len(h) for h in p.held] == [4, 8]


def test_a_change_since_the_plan_below_what_it_took_makes_it_invalid_and_cuts_the_run() -> None:
    c = RollupCache()
    c.advance("db", "rollup_1h", -1, 1, None, None)
    c.store("db", "rollup_1h", 1, 1, T0, T0, T0 + 10 * H, *_rows(range(10)))
    p = c.plan("db", "rollup_1h", [1], T0, T0 + 10 * H)
    assert c.valid(p, 1, 1, None)  # same version
    assert c.valid(p, 3, 1, T0 + 10 * H)  # changed only at or after what it took
    assert not c.valid(p, 3, 1, T0 + 9 * H)  # a change inside the rows it took
    assert not c.valid(p, 3, 3, None)  # the log no longer reaches back to version 1
    c.advance("db", "rollup_1h", 1, 3, 1, T0 + 4 * H)
    assert c.rows == 4 and c.plan("db", "rollup_1h", [1], T0, T0 + 10 * H).fetch_from == T0 + 4 * H
    # Stored rows of an older version are refused; a log that does not reach back drops all.
    c.store("db", "rollup_1h", 1, 1, T0, T0 + 4 * H, T0 + 10 * H, *_rows(range(4, 10)))
    assert c.rows == 4
    c.advance("db", "rollup_1h", 3, 2000, 1500, None)
    assert c.rows == 0


def test_bounded_by_rows_least_recently_used_first() -> None:
    c = RollupCache(max_rows=25)
    c.advance("db", "rollup_1h", -1, 1, None, None)
    for tag in (1, 2, 3):
        c.store("db", "rollup_1h", 1, tag, T0, T0, T0 + 10 * H, *_rows(range(10)))
        c.plan("db", "rollup_1h", [1], T0, T0 + H)  # tag 1 stays in use
    assert c.rows == 20
    assert [c.plan("db", "rollup_1h", [t], T0, T0 + 10 * H).used for t in (1, 2, 3)] == [True, False, True]
    c.forget("db")
    assert c.rows == 0


def _every_10_min(now: datetime, days: int) -> list[tuple[int, int, float, int]]:
    start = us(now - timedelta(days=days))
    return [(tag, start + k * 600_000_000, float(k), 0) for tag in (1, 2) for k in range(days * 144)]


async def _answers(conn: asyncpg.Connection, cache: RollupCache, now: datetime) -> list[bytes]:
    """Cached and plain answers for trends over the data, compared by the caller."""
    tags = list((await Catalog.load(conn)).tags.values())
    out = []
    for span, res in ((timedelta(days=3), "1h"), (timedelta(days=40), "auto"), (timedelta(hours=30), "auto")):
        req = ReadRequest(tags, now - span, now, res, 2000, 10_000, False)
        plain = await _read_one(conn, req, "UTC", timedelta(seconds=30), now)
        cached = await _read_one(conn, req, "UTC", timedelta(seconds=30), now, CacheSlot(cache, "db"))
        assert plain is not None and cached is not None
        a, b = (orjson.dumps([s.points for s in x.series], option=orjson.OPT_UTC_Z) for x in (plain, cached))
        assert a == b, (span, res)
        out.append(b)
    return out


async def test_cached_answers_stay_exact_through_late_data_retention_and_time_zone(stack: Settings) -> None:
    dsn = stack.dsn(await fresh_database(stack, "rcache"))
    await register_tags(dsn, (1, 2), "UTC")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    conn = await asyncpg.connect(dsn)
    w = TenantWriter(dsn, flush_interval_ms=5)
    await w.start()
    refresher = RollupRefresher(dsn)
    cache = RollupCache()
    try:
        # Two days of readings every 10 minutes, rolled up; the cache fills on the first read.
        rows = [
            (tag, us(now - timedelta(days=2)) + k * 600_000_000, float(k), 0) for tag in (1, 2) for k in range(288)
        ]
        await w.write(batch("two-days", rows))
        await refresher.run_until_idle()
        first = await _answers(conn, cache, now)
        assert cache.rows > 0 and cache.hits == 0
        assert await _answers(conn, cache, now) == first and cache.hits > 0
        # A batch 30 hours late, into buckets the cache holds: every answer has it at once.
        hits = cache.hits
        await w.write(batch("late", [(1, us(now - timedelta(hours=30)) + 1, 1e6, 0)]))
        await refresher.run_until_idle()
        late = await _answers(conn, cache, now)
        assert late != first and b"1000000.0" in late[0]
        assert await _answers(conn, cache, now) == late and cache.hits > hits
        # Resent: nothing written, nothing changes.
        assert (await w.write(batch("late", [(1, us(now - timedelta(hours=30)) + 1, 1e6, 0)]))).duplicate
        await refresher.run_until_idle()
        assert await _answers(conn, cache, now) == late
        # Rollup retention drops the chunk the cached rows came from; a new time zone rewrites
        # the local days (not cached, but it moves the version all the same).
        await save_settings(conn, raw_retention_days=1, rollup_retention_days=1)
        assert (await apply_retention(conn, now + timedelta(days=200))).dropped["rollup_1h"] >= 1
        gone = await _answers(conn, cache, now)
        assert gone != late
        await save_settings(conn, timezone="Europe/Berlin")
        assert await _answers(conn, cache, now) == gone
        versions = await conn.fetchval("SELECT version FROM rollup_state")
        assert (
            versions >= 4 and await conn.fetchval("SELECT count(DISTINCT version) FROM rollup_changes") == versions
        )
    finally:
        await w.stop()
        await refresher.close()
        await conn.close()


def test_concurrent_reads_share_one_cache(stack: Settings) -> None:
    """Requests in flight together on one replica's loop, while the rollups change under them."""

    async def run() -> None:
        dsn = stack.dsn(await fresh_database(stack, "rcache"))
        await register_tags(dsn, (1, 2), "UTC")
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
        w = TenantWriter(dsn, flush_interval_ms=5)
        await w.start()
        refresher = RollupRefresher(dsn)
        cache = RollupCache()
        rows = [
            (tag, us(now - timedelta(days=5)) + k * 600_000_000, float(k), 0) for tag in (1, 2) for k in range(720)
        ]
        await w.write(batch("days", rows))
        await refresher.run_until_idle()
        tags = list((await Catalog.load(pool)).tags.values())
        req = ReadRequest(tags, now - timedelta(days=5), now, "1h", 2000, 10_000, False)

        async def reader() -> None:
            for _ in range(20):
                cached = await _read_one(pool, req, "UTC", timedelta(seconds=30), now, CacheSlot(cache, "db"))
                assert cached is not None

        async def writer() -> None:
            for k in range(5):
                await w.write(batch(f"late{k}", [(1 + k % 2, us(now - timedelta(hours=20 + k)) + 7, -1.0 * k, 0)]))
                await refresher.run_pass()

        await asyncio.gather(*(reader() for _ in range(4)), writer())
        await refresher.run_until_idle()
        plain = await _read_one(pool, req, "UTC", timedelta(seconds=30), now)
        cached = await _read_one(pool, req, "UTC", timedelta(seconds=30), now, CacheSlot(cache, "db"))
        assert plain is not None and cached is not None
        assert orjson.dumps([s.points for s in cached.series], option=orjson.OPT_UTC_Z) == orjson.dumps(
            [s.points for s in plain.series], option=orjson.OPT_UTC_Z
        )
        await w.stop()
        await refresher.close()
        await pool.close()

    asyncio.run(run())
