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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from ingest.core.errors import InvalidQuery
from ingest.core.models import GAP_QUALITY
from ingest.core.translate import translated
from ingest.read.catalog import TagInfo
from ingest.read.request import (
    AGG_FIELDS,
    AUTO,
    RAW_FIELDS,
    ReadAnswer,
    ReadRequest,
    Series,
    _Cursor,
    agg_row,
    coarsen,
    fixed_level,
    level_for_span,
    max_buckets,
    quality_code,
    quality_name,
    raw_row,
)
from ingest.read.rollup_cache import Plan, RollupCache, encode_row
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


@dataclass(frozen=True)
class CacheSlot:
    """A replica's rollup cache and the database a query reads (the cache's key for it)."""

    cache: RollupCache
    db: str


# -- one statement per request -------------------------------------------------------------------
# The common request (no cursor, numeric tags, an answer that cannot pass ``limit``) is answered
# by one statement: every tag through unnest + LATERAL, the rollup rows before the fresh split and
# the newest buckets aggregated from raw after it, and the retention horizon beside them. Bucket
# bounds are computed in the statement from its parameters with immutable functions, so chunks
# outside the range are excluded while planning. Everything else takes the paged path below.
_HORIZON = f"(SELECT dropped_before FROM retention_horizon WHERE table_name = '{RAW_TABLE}') AS horizon"
_ONE_AGG = """
SELECT {horizon}, s.version AS ver, (SELECT min(version) FROM rollup_changes) AS oldest,
       (SELECT min(lo) FROM rollup_changes WHERE version > $5 AND table_name = '{table}') AS changed_lo,
       x.*
FROM rollup_state s LEFT JOIN LATERAL (
  SELECT u.i, r.* FROM unnest($1::int4[]) WITH ORDINALITY AS u(t, i) CROSS JOIN LATERAL (
    (SELECT bucket AS b, n, sum, min, max, first_time, first_value AS fv, last_time,
            last_value AS lv, bad, false AS fresh
     FROM {table} WHERE tag_id = u.t AND bucket >= greatest({lo}, $6::timestamptz) AND bucket < {split})
{fresh_part}  ) r
) x ON true
ORDER BY x.i, x.b"""
# The newest buckets, from raw: left out when none of the answer is that new (the statement then
# plans no scan of the raw hypertable's chunks).
_FRESH_PART = """    UNION ALL
    (SELECT {bucket} AS b, count(*) FILTER (WHERE ok) AS n, sum(value) FILTER (WHERE ok) AS sum,
            min(value) FILTER (WHERE ok) AS min, max(value) FILTER (WHERE ok) AS max,
            min(time) FILTER (WHERE ok) AS first_time, first(value, time) FILTER (WHERE ok) AS fv,
            max(time) FILTER (WHERE ok) AS last_time, last(value, time) FILTER (WHERE ok) AS lv,
            count(*) FILTER (WHERE quality < 0 AND quality <> {gap}) AS bad, true AS fresh
     FROM (SELECT time, value, quality,
                  quality >= 0 AND value IS NOT NULL AND value <> 'NaN' AS ok
           FROM {raw} WHERE tag_id = u.t AND time >= {split} AND time < $3) fresh
     GROUP BY 1)
"""
_ONE_RAW = """
SELECT {horizon}, x.*
FROM (SELECT 1) one LEFT JOIN LATERAL (
  SELECT u.i, r.* FROM unnest($1::int4[]) WITH ORDINALITY AS u(t, i) CROSS JOIN LATERAL (
    SELECT time, value, quality FROM {raw}
    WHERE tag_id = u.t AND time >= $2 AND time < $3 ORDER BY time LIMIT $4) r
) x ON true
ORDER BY x.i, x.time"""


def _one_agg_sql(level: Level, local_days: bool, fresh_part: bool = True) -> str:
    """Parameters: $1 tag ids, $2 start, $3 end, $4 now - fresh window, $5 the rollup version
    the cache holds, $6 where the rollup rows start (null: the first bucket), [$7 time
    zone]. Beside the rows: the raw horizon, the rollup version, the oldest version the change
    log holds and the earliest change to the table since $5 (``ingest.read.rollup_cache``)."""
    if level is Level.DAY and local_days:
        table, step = LOCAL_DAY_TABLE, "INTERVAL '1 day'"
        lo = f"time_bucket({step}, $2::timestamptz, $7::text)"
        fresh = f"time_bucket({step}, $4::timestamptz, $7::text)"
        bucket = f"time_bucket({step}, time, $7::text)"
    else:
        table, step = TABLE[level], f"INTERVAL '{int(STEP[level].total_seconds())} s'"
        lo = f"time_bucket({step}, $2::timestamptz)"
        fresh = f"time_bucket({step}, $4::timestamptz)"
        bucket = f"time_bucket({step}, time)"
    split = f"greatest({lo}, least({fresh}, $3::timestamptz))"
    part = _FRESH_PART.format(split=split, bucket=bucket, gap=GAP_QUALITY, raw=RAW_TABLE) if fresh_part else ""
    return _ONE_AGG.format(horizon=_HORIZON, table=table, lo=lo, split=split, fresh_part=part)


_ONE_RAW_SQL = _ONE_RAW.format(horizon=_HORIZON, raw=RAW_TABLE)


def _answer(
    req: ReadRequest, level: Level, tz: str, horizon: datetime | None, per_tag: list[list[list[Any]]]
) -> ReadAnswer:
    """The answer from every tag's complete rows, cut at ``limit`` exactly as the paged path
    cuts it (same points, same cursor)."""
    answer = ReadAnswer(
        level,
        RAW_FIELDS if level is Level.RAW else AGG_FIELDS,
        [Series(t) for t in req.tags],
        tz if req.local_days else "UTC",
    )
    _note_horizon(answer, req, level, horizon)
    left = req.limit
    for i, rows in enumerate(per_tag):
        if len(rows) > left:
            answer.series[i].points = rows[:left]
            answer.next = _Cursor(level, i, rows[left - 1][0] if left else None).encode(req)
            break
        answer.series[i].points = rows
        left -= len(rows)
    return answer


def _note_horizon(answer: ReadAnswer, req: ReadRequest, level: Level, horizon: datetime | None) -> None:
    if horizon is not None and req.start < horizon:
        answer.raw_dropped_before = horizon
        if level is Level.RAW:
            answer.notices.append(
                f"raw readings before {horizon.isoformat()} were dropped by retention; "
                "ask resolution=1m, 1h or 1d for that range"
            )


def _split(
    req: ReadRequest,
    rows: list[asyncpg.Record],
    convert: Any,
) -> tuple[datetime | None, list[list[list[Any]]]]:
    per_tag: list[list[list[Any]]] = [[] for _ in req.tags]
    horizon = rows[0]["horizon"] if rows else None
    for r in rows:
        if r["i"] is not None:
            per_tag[r["i"] - 1].append(convert(r))
    return horizon, per_tag


async def _read_one(
    db: asyncpg.Connection | asyncpg.Pool,
    req: ReadRequest,
    tz: str,
    fresh_window: timedelta,
    now: datetime,
    cache: CacheSlot | None = None,
) -> ReadAnswer | None:
    """The answer in one statement (two for ``auto`` over a short span whose raw rows are too
    many), or None when the request needs the paged path."""
    if any(t.is_text for t in req.tags):
        return None
    ids = [t.tag_id for t in req.tags]
    level = fixed_level(req)
    if level is None or level is Level.RAW:
        if level is Level.RAW and len(ids) > 1:
            return None  # rows per tag unknown: the paged path fetches only what fits
        cap = req.limit + 1 if level is Level.RAW else req.max_points + 1
        rows = await db.fetch(_ONE_RAW_SQL, ids, req.start, req.end, cap)
        horizon, per_tag = _split(req, rows, raw_row)
        if level is Level.RAW or not (
            any(len(p) > req.max_points for p in per_tag) or (horizon is not None and req.start < horizon)
        ):
            return _answer(req, Level.RAW, tz, horizon, per_tag)
        level = coarsen(req, Level.MINUTE)
    if len(ids) * max_buckets(req, level) > req.limit:
        return None
    local = level is Level.DAY and req.local_days
    # Where rollup rows end and raw buckets begin, as the statement computes it (for UTC levels).
    split = None if local else _split_at(req, level, now - fresh_window)
    sql = _one_agg_sql(level, req.local_days, split is None or split < req.end)
    tail = [tz] if local else []
    if cache is None or split is None:
        rows = await db.fetch(sql, ids, req.start, req.end, now - fresh_window, -1, None, *tail)
        horizon, per_tag = _split(req, rows, agg_row)
        return _answer(req, level, tz, horizon, per_tag)
    return await _read_cached(db, req, level, tz, sql, split, fresh_window, now, cache)


def _split_at(req: ReadRequest, level: Level, fresh_from: datetime) -> datetime:
    step = STEP[level]
    lo = floor_to(req.start, step)
    return max(lo, min(floor_to(fresh_from, step), req.end))


async def _read_cached(
    db: asyncpg.Connection | asyncpg.Pool,
    req: ReadRequest,
    level: Level,
    tz: str,
    sql: str,
    split: datetime,
    fresh_window: timedelta,
    now: datetime,
    cache: CacheSlot,
) -> ReadAnswer:
    """The one-statement answer with the rollup rows the replica holds (``rollup_cache``): the
    statement reads only the rows after them, and proves them current or they are read again."""
    ids = [t.tag_id for t in req.tags]
    table, lo = TABLE[level], floor_to(req.start, STEP[level])
    plan = cache.cache.plan(cache.db, table, ids, lo, split)
    rows = await db.fetch(sql, ids, req.start, req.end, now - fresh_window, plan.version, plan.fetch_from)
    head = rows[0]
    cache.cache.advance(cache.db, table, plan.version, head["ver"], head["oldest"], head["changed_lo"])
    if not cache.cache.valid(plan, head["ver"], head["oldest"], head["changed_lo"]):
        cache.cache.misses += 1
        plan = Plan(head["ver"], [[] for _ in ids], None)
        rows = await db.fetch(sql, ids, req.start, req.end, now - fresh_window, plan.version, plan.fetch_from)
        head = rows[0]
        cache.cache.advance(cache.db, table, plan.version, head["ver"], head["oldest"], head["changed_lo"])
    elif plan.used:
        cache.cache.hits += 1
    per_tag: list[list[Any]] = [list(held) for held in plan.held]
    fetched: list[tuple[list[datetime], list[Any]]] = [([], []) for _ in ids]
    for r in rows:
        if r["i"] is None:
            continue
        k = r["i"] - 1
        if r["fresh"]:
            per_tag[k].append(agg_row(r))
        else:
            row = encode_row(agg_row(r))
            per_tag[k].append(row)
            fetched[k][0].append(r["b"])
            fetched[k][1].append(row)
    for k, tag in enumerate(ids):
        cache.cache.store(cache.db, table, head["ver"], tag, lo, plan.fetch_from or lo, split, *fetched[k])
    return _answer(req, level, tz, head["horizon"], per_tag)


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
    answer = ReadAnswer(
        level,
        RAW_FIELDS if level is Level.RAW else AGG_FIELDS,
        [Series(t) for t in req.tags],
        tz if req.local_days else "UTC",
    )
    _note_horizon(answer, req, level, horizon)
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
