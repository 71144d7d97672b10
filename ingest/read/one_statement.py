"""The common reading query in one statement: every tag through unnest + LATERAL, the rollup rows
before the fresh split (from the replica's rollup cache where it holds them) and the newest buckets
aggregated from raw after it, the retention horizon beside them. ``ingest.read.query`` falls back
to its paged path for what this does not answer (cursors, text tags, answers past ``limit``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from ingest.core.models import GAP_QUALITY
from ingest.read.request import (
    AGG_FIELDS,
    RAW_FIELDS,
    ReadAnswer,
    ReadRequest,
    Series,
    _Cursor,
    agg_row,
    coarsen,
    fixed_level,
    max_buckets,
    raw_row,
)
from ingest.read.rollup_cache import Plan, RollupCache, encode_row
from ingest.read.rollups import (
    LOCAL_DAY_TABLE,
    RAW_TABLE,
    STEP,
    TABLE,
    Level,
    floor_to,
)


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
# outside the range are excluded while planning. Everything else takes the paged path
# (ingest.read.query).
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
# For ``auto`` over a short span ($5 = max_points), first whether some tag holds more raw rows
# than that (an index-only count, stopping at $5 + 1): then no row is sent, and the caller reads a
# rollup instead of receiving and decoding rows it would throw away.
_ONE_RAW = """
WITH o AS (
  SELECT coalesce(bool_or(c.n > $5), false) AS over FROM unnest($1::int4[]) AS v(t) CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM (SELECT 1 FROM {raw} WHERE tag_id = v.t AND time >= $2 AND time < $3
                               LIMIT $5 + 1) y) c
  WHERE $5::int8 IS NOT NULL)
SELECT {horizon}, (SELECT over FROM o) AS over, x.*
FROM (SELECT 1) one LEFT JOIN LATERAL (
  SELECT u.i, r.* FROM unnest($1::int4[]) WITH ORDINALITY AS u(t, i) CROSS JOIN LATERAL (
    SELECT time, value, quality FROM {raw}
    WHERE tag_id = u.t AND time >= $2 AND time < $3 ORDER BY time LIMIT $4) r
) x ON NOT coalesce((SELECT over FROM o), false)
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
    answer = empty_answer(req, level, tz, horizon)
    left = req.limit
    for i, rows in enumerate(per_tag):
        if len(rows) > left:
            answer.series[i].points = rows[:left]
            answer.next = _Cursor(level, i, rows[left - 1][0] if left else None).encode(req)
            break
        answer.series[i].points = rows
        left -= len(rows)
    return answer


def empty_answer(req: ReadRequest, level: Level, tz: str, horizon: datetime | None) -> ReadAnswer:
    """An answer at ``level`` with no points yet, saying where retention dropped raw data."""
    answer = ReadAnswer(
        level,
        RAW_FIELDS if level is Level.RAW else AGG_FIELDS,
        [Series(t) for t in req.tags],
        tz if req.local_days else "UTC",
    )
    _note_horizon(answer, req, level, horizon)
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
        probe = None if level is Level.RAW else req.max_points
        rows = await db.fetch(_ONE_RAW_SQL, ids, req.start, req.end, cap, probe)
        horizon, per_tag = _split(req, rows, raw_row)
        if level is Level.RAW or not (
            rows[0]["over"]
            or any(len(p) > req.max_points for p in per_tag)
            or (horizon is not None and req.start < horizon)
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
