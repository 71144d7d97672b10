"""Reading queries: the resolution rule, rollups with the newest buckets from raw, cursors.

``auto`` follows seed 003 (up to 1 day raw, up to 7 days 1-minute, up to 30 days 1-hour, beyond
that 1-day), then moves to a coarser level while a tag would exceed ``max_points``. One level
answers the whole request. Aggregate buckets are whole buckets aligned to the level (UTC, or the
tenant's local midnight for days), from the one holding ``start`` up to ``end``.

Rollups lag the writer by up to two refresh intervals, so buckets ending within ``fresh_window``
of now are aggregated from raw at query time: the newest bucket is never stale.

Answers are rows in the order of ``fields``; past ``limit`` rows the answer carries a cursor
(``next``) that resumes exactly where it stopped, instead of being silently cut.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from ingest.core.errors import InvalidQuery
from ingest.core.models import GAP_QUALITY
from ingest.core.translate import translated
from ingest.read.catalog import TagInfo
from ingest.read.one_statement import CacheSlot, _read_one, empty_answer
from ingest.read.request import (
    AUTO,
    ReadAnswer,
    ReadRequest,
    _Cursor,
    coarsen,
    level_for_span,
    quality_code,
    quality_name,
)
from ingest.read.rollups import (
    LOCAL_DAY_TABLE,
    RAW_TABLE,
    STEP,
    TABLE,
    TEXT_TABLE,
    Level,
    floor_to,
)


async def raw_horizon(db: asyncpg.Connection, table: str = RAW_TABLE) -> datetime | None:
    v: datetime | None = await db.fetchval(
        "SELECT dropped_before FROM retention_horizon WHERE table_name = $1", table
    )
    return v


async def choose_level(db: asyncpg.Connection, req: ReadRequest, horizon: datetime | None) -> Level:
    if req.resolution != AUTO:
        return Level(req.resolution)
    level = level_for_span(req.end - req.start)
    if level is Level.RAW:
        numeric = [t.tag_id for t in req.tags if not t.is_text]
        over = await db.fetchval(
            f"SELECT bool_or(n > $4) FROM unnest($1::int4[]) AS u(t), LATERAL (SELECT count(*) AS n "
            f"FROM (SELECT 1 FROM {RAW_TABLE} WHERE tag_id = u.t AND time >= $2 AND time < $3 "
            "LIMIT $4 + 1) x) c",
            numeric,
            req.start,
            req.end,
            req.max_points,
        )
        if over or (horizon is not None and req.start < horizon):
            level = Level.MINUTE
    return coarsen(req, level)


_AGG_RAW = """
SELECT {bucket} AS b, count(*) FILTER (WHERE ok) AS n, {num}
       min(time) FILTER (WHERE ok) AS first_time, first(value, time) FILTER (WHERE ok) AS fv,
       max(time) FILTER (WHERE ok) AS last_time, last(value, time) FILTER (WHERE ok) AS lv,
       count(*) FILTER (WHERE quality < 0 AND quality <> {gap}) AS bad
FROM (SELECT time, value, quality, {ok} AS ok FROM {table}
      WHERE tag_id = $1 AND time >= $2 AND time < $3) r
GROUP BY 1"""
_NUM = (
    "sum(value) FILTER (WHERE ok) AS sum, min(value) FILTER (WHERE ok) AS min, "
    "max(value) FILTER (WHERE ok) AS max,"
)
_NO_NUM = "NULL::float8 AS sum, NULL::float8 AS min, NULL::float8 AS max,"


def _agg_sql(table: str, bucket: str, numeric: bool) -> str:
    ok = "quality >= 0 AND value IS NOT NULL" + (" AND value <> 'NaN'" if numeric else "")
    return _AGG_RAW.format(bucket=bucket, num=_NUM if numeric else _NO_NUM, gap=GAP_QUALITY, ok=ok, table=table)


class _Fetcher:
    """Rows of one tag at one level, from ``after`` on, at most ``n``."""

    def __init__(
        self, db: asyncpg.Connection, req: ReadRequest, level: Level, tz: str, fresh_from: datetime
    ) -> None:
        self.db, self.req, self.level, self.tz = db, req, level, tz
        self.fresh_from = fresh_from

    def _bucket_expr(self, col: str) -> str:
        if self.level is Level.DAY and self.req.local_days:
            return f"time_bucket(INTERVAL '1 day', {col}, $4::text)"
        return f"time_bucket(INTERVAL '{int(STEP[self.level].total_seconds())} s', {col})"

    async def _first_bucket(self) -> datetime:
        if self.level is Level.DAY and self.req.local_days:
            b: datetime = await self.db.fetchval(
                "SELECT time_bucket(INTERVAL '1 day', $1::timestamptz, $2::text)", self.req.start, self.tz
            )
            return b
        return floor_to(self.req.start, STEP[self.level])

    async def rows(self, tag: TagInfo, after: datetime | None, n: int) -> list[list[Any]]:
        if self.level is Level.RAW:
            table = TEXT_TABLE if tag.is_text else RAW_TABLE
            recs = await self.db.fetch(
                f"SELECT time, value, quality FROM {table} WHERE tag_id = $1 AND time >= $2 "
                "AND time < $3 AND ($4::timestamptz IS NULL OR time > $4) ORDER BY time LIMIT $5",
                tag.tag_id,
                self.req.start,
                self.req.end,
                after,
                n,
            )
            return [[r["time"], r["value"], quality_code(r["quality"]), quality_name(r["quality"])] for r in recs]
        lo = await self._first_bucket()
        if after is not None:
            lo = max(lo, after + timedelta(microseconds=1))
        tz_args: tuple[Any, ...] = (self.tz,) if "$4" in self._bucket_expr("x") else ()
        out: list[asyncpg.Record] = []
        split = max(lo, min(self.fresh_from, self.req.end))
        if not tag.is_text and lo < split:
            table = LOCAL_DAY_TABLE if (self.level is Level.DAY and self.req.local_days) else TABLE[self.level]
            out += await self.db.fetch(
                f"SELECT bucket AS b, n, sum, min, max, first_time, first_value AS fv, "
                f"last_time, last_value AS lv, bad FROM {table} WHERE tag_id = $1 "
                "AND bucket >= $2 AND bucket < $3 ORDER BY bucket LIMIT $4",
                tag.tag_id,
                lo,
                split,
                n,
            )
        if len(out) < n and (tag.is_text or split < self.req.end):
            raw_lo = lo if tag.is_text else split
            sql = _agg_sql(TEXT_TABLE if tag.is_text else RAW_TABLE, self._bucket_expr("time"), not tag.is_text)
            fresh = await self.db.fetch(sql + " ORDER BY 1", tag.tag_id, raw_lo, self.req.end, *tz_args)
            out += [r for r in fresh if r["b"] >= lo][: n - len(out)]
        return [
            [
                r["b"],
                r["n"],
                (r["sum"] / r["n"]) if r["n"] and r["sum"] is not None else None,
                r["min"],
                r["max"],
                r["sum"],
                r["fv"],
                r["first_time"],
                r["lv"],
                r["last_time"],
                r["bad"],
            ]
            for r in out
        ]


async def fresh_from(
    db: asyncpg.Connection, level: Level, local_days: bool, tz: str, now: datetime, fresh_window: timedelta
) -> datetime:
    """Buckets starting at or after this are answered from raw."""
    t = now - fresh_window
    if level is Level.DAY and local_days:
        b: datetime = await db.fetchval("SELECT time_bucket(INTERVAL '1 day', $1::timestamptz, $2::text)", t, tz)
        return b
    if level is Level.RAW:
        return t
    return floor_to(t, STEP[level])


@translated
async def read(
    db: asyncpg.Connection | asyncpg.Pool,
    req: ReadRequest,
    tz: str,
    *,
    fresh_window: timedelta = timedelta(seconds=30),
    now: datetime | None = None,
    cache: CacheSlot | None = None,
) -> ReadAnswer:
    """The answer to ``req``. With ``cache``, rows of past rollup buckets may come from the
    replica's cache as encoded JSON (``orjson.Fragment``) instead of lists: for answers that go
    out as JSON only."""
    if req.start >= req.end:
        raise InvalidQuery("start", "must be before end")
    now = now or datetime.now(UTC)
    if req.cursor is None:
        answer = await _read_one(db, req, tz, fresh_window, now, cache)
        if answer is not None:
            return answer
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _read_paged(conn, req, tz, fresh_window=fresh_window, now=now)
    return await _read_paged(db, req, tz, fresh_window=fresh_window, now=now)


async def _read_paged(
    db: asyncpg.Connection, req: ReadRequest, tz: str, *, fresh_window: timedelta, now: datetime
) -> ReadAnswer:
    horizon = await raw_horizon(db)
    cur = _Cursor.decode(req, req.cursor) if req.cursor else None
    level = cur.level if cur else await choose_level(db, req, horizon)
    fetch = _Fetcher(db, req, level, tz, await fresh_from(db, level, req.local_days, tz, now, fresh_window))
    answer = empty_answer(req, level, tz, horizon)
    left = req.limit
    first = cur.position if cur else 0
    for i in range(first, len(req.tags)):
        after = cur.after if cur and i == cur.position else None
        rows = await fetch.rows(req.tags[i], after, left + 1)
        if len(rows) > left:
            answer.series[i].points = rows[:left]
            last = rows[left - 1][0] if left else after
            if left == 0:  # nothing of this tag fits: resume at its start
                answer.next = _Cursor(level, i, after).encode(req)
            else:
                answer.next = _Cursor(level, i, last).encode(req)
            break
        answer.series[i].points = rows
        left -= len(rows)
    return answer


async def stream_rows(
    db: asyncpg.Connection,
    req: ReadRequest,
    tz: str,
    *,
    page: int = 5000,
    fresh_window: timedelta = timedelta(seconds=30),
) -> AsyncIterator[tuple[ReadAnswer, TagInfo, list[Any]]]:
    """Every row of the answer, page by page through the cursor (for CSV: no limit)."""
    paged = ReadRequest(
        req.tags, req.start, req.end, req.resolution, req.max_points, page, req.local_days, req.cursor
    )
    while True:
        answer = await read(db, paged, tz, fresh_window=fresh_window)
        for s in answer.series:
            for row in s.points:
                yield answer, s.tag, row
        if answer.next is None:
            return
        paged = ReadRequest(
            req.tags, req.start, req.end, req.resolution, req.max_points, page, req.local_days, answer.next
        )
