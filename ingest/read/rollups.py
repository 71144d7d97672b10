"""Rollup levels, their bucket maths and the SQL that rebuilds a time range of each.

A range is rebuilt, never patched: the buckets of [lo, hi) are deleted and aggregated again from
the level below (1 minute from raw, 1 hour from 1 minute, 1 day from 1 hour), so late, resent and
backfilled data all come out exactly as a plain aggregation of the raw rows would. Every column
composes (count and sum add, min of mins, first of firsts), which is what makes the cheap
level-on-level rebuild equal to aggregating raw.

Numeric aggregates take readings that are not Bad (the StatusCode's severity bit is the int4's
sign bit) and carry a number; gap markers are Bad and never count. ``bad`` counts Bad readings,
gap markers not included.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from ingest.core.models import GAP_QUALITY

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)  # "from the beginning", for the change log
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
RAW_TABLE = "scada_readings"
# Tags per statement when rollup_1m is rebuilt from raw: the refresher's pass is cut into
# statements it can pause between (``pace``), so it never holds a core for long. At 80,000
# readings/s a closed minute of 100 tags took a core for ~0.3 s, and the pushes answered meanwhile
# queued behind it (paced p99 240 ms); at 25 tags a statement, 143 ms in the next run.
RAW_SLICE_TAGS = 25
# The 1-minute level is summed from 10-second partials (migration 022): a pass rebuilds from raw
# only the 10-second buckets its ledger rows touched, not every touched minute whole.
TEN_S = timedelta(seconds=10)
PARTIAL_TABLE = "rollup_10s"
# Partials are kept for minutes this recent (and newer): where a stream's passes come back again
# and again. An older minute (a backfill, a batch an hour late) is rebuilt from raw whole, once,
# and no partials are written for it (for data every 10 s they would be as many rows as raw).
PARTIALS_WINDOW = timedelta(minutes=10)
TEXT_TABLE = "scada_readings_text"


class Level(enum.StrEnum):
    """Resolutions a query can be answered at."""

    RAW = "raw"
    MINUTE = "1m"
    HOUR = "1h"
    DAY = "1d"


STEP: dict[Level, timedelta] = {Level.MINUTE: MINUTE, Level.HOUR: HOUR, Level.DAY: DAY}
# The 1-day level exists twice: UTC days, and days from the tenant's local midnight.
TABLE: dict[Level, str] = {Level.MINUTE: "rollup_1m", Level.HOUR: "rollup_1h", Level.DAY: "rollup_1d"}
LOCAL_DAY_TABLE = "rollup_1d_local"
ROLLUP_TABLES = ("rollup_1m", "rollup_1h", "rollup_1d", LOCAL_DAY_TABLE)
COLUMNS = ("n", "sum", "min", "max", "first_time", "first_value", "last_time", "last_value", "bad")


def floor_to(t: datetime, step: timedelta) -> datetime:
    """Start of the UTC-aligned bucket of ``step`` holding ``t`` (as time_bucket does)."""
    return EPOCH + ((t - EPOCH) // step) * step


def ceil_to(t: datetime, step: timedelta) -> datetime:
    f = floor_to(t, step)
    return f if f == t else f + step


def merge_ranges(ranges: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Union of half-open ranges, sorted, touching ranges joined."""
    out: list[tuple[datetime, datetime]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def widen(
    ranges: list[tuple[datetime, datetime]],
    step: timedelta,
) -> list[tuple[datetime, datetime]]:
    return merge_ranges([(floor_to(lo, step), ceil_to(hi, step)) for lo, hi in ranges])


def clip_below(
    ranges: list[tuple[datetime, datetime]], horizon: datetime | None, step: timedelta | None = None
) -> list[tuple[datetime, datetime]]:
    """Drop what starts below ``horizon``: the source level holds nothing there any more, and
    rebuilding from it would erase what this level still keeps. With ``step`` the cut moves up to
    the next bucket start, so a bucket straddling the horizon is kept as it is."""
    if horizon is None:
        return ranges
    cut = ceil_to(horizon, step) if step is not None else horizon
    return [(max(lo, cut), hi) for lo, hi in ranges if hi > cut]


def whole_hour_offsets(tz: str, lo: datetime, hi: datetime) -> bool:
    """True when every local midnight in [lo, hi) falls on a UTC hour, so local days are unions
    of 1-hour buckets. Offsets only change at transitions, months apart, so a daily probe sees
    every offset in force."""
    zone = ZoneInfo(tz)
    t = lo - DAY
    while t <= hi + DAY:
        off = t.astimezone(zone).utcoffset()
        if off is None or off % HOUR:
            return False
        t += DAY
    return True


# -- SQL ------------------------------------------------------------------------------------------
_INSERT = "INSERT INTO {dst} (tag_id, bucket, " + ", ".join(COLUMNS) + ") "

_FROM_RAW = (
    _INSERT
    + f"""
SELECT tag_id, time_bucket(INTERVAL '{{width}}', time) AS b,
       count(*) FILTER (WHERE ok), sum(value) FILTER (WHERE ok),
       min(value) FILTER (WHERE ok), max(value) FILTER (WHERE ok),
       min(time) FILTER (WHERE ok), first(value, time) FILTER (WHERE ok),
       max(time) FILTER (WHERE ok), last(value, time) FILTER (WHERE ok),
       count(*) FILTER (WHERE quality < 0 AND quality <> {GAP_QUALITY})
FROM (SELECT tag_id, time, value, quality,
             quality >= 0 AND value IS NOT NULL AND value <> 'NaN' AS ok
      FROM {RAW_TABLE} WHERE tag_id = ANY($3::int4[]) AND time >= $1 AND time < $2) r
GROUP BY 1, 2"""
)

_FROM_LEVEL = (
    _INSERT
    + """
SELECT tag_id, {bucket} AS b,
       sum(n)::int8, sum(sum), min(min), max(max),
       min(first_time), first(first_value, first_time) FILTER (WHERE n > 0),
       max(last_time), last(last_value, last_time) FILTER (WHERE n > 0),
       sum(bad)::int8
FROM {src} WHERE bucket >= $1 AND bucket < $2
GROUP BY 1, 2"""
)


@dataclass(frozen=True)
class Horizons:
    """Below these times a table holds nothing any more (retention dropped its chunks)."""

    by_table: dict[str, datetime]

    def of(self, table: str) -> datetime | None:
        return self.by_table.get(table)

    @classmethod
    async def load(cls, conn: asyncpg.Connection) -> Horizons:
        rows = await conn.fetch("SELECT table_name, dropped_before FROM retention_horizon")
        return cls({r["table_name"]: r["dropped_before"] for r in rows})


# Versions of the change log (rollup_changes) kept for readers' caches.
CHANGES_KEPT = 1000


async def note_changes(conn: asyncpg.Connection, earliest: dict[str, datetime]) -> int:
    """Record, inside the transaction that changes rollup rows, the earliest bucket it changes
    in each table; returns the new version. The transaction must hold the version row before it
    touches a rollup table (a refresh pass locks it first thing; the others call this first, or
    ``lock_version``), so every writer takes the same locks in the same order."""
    version: int = await conn.fetchval("UPDATE rollup_state SET version = version + 1 RETURNING version")
    await conn.executemany(
        "INSERT INTO rollup_changes (version, table_name, lo) VALUES ($1, $2, $3)",
        [(version, table, lo) for table, lo in earliest.items()],
    )
    await conn.execute("DELETE FROM rollup_changes WHERE version <= $1", version - CHANGES_KEPT)
    return version


async def lock_version(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT 1 FROM rollup_state FOR UPDATE")


async def _rebuild(
    conn: asyncpg.Connection,
    changed: dict[str, datetime],
    dst: str,
    sql: str,
    lo: datetime,
    hi: datetime,
    *args: object,
) -> None:
    changed[dst] = min(lo, changed.get(dst, lo))
    await conn.execute(f"DELETE FROM {dst} WHERE bucket >= $1 AND bucket < $2", lo, hi)
    await conn.execute(sql, lo, hi, *args)


async def _rebuild_from_raw(
    conn: asyncpg.Connection,
    changed: dict[str, datetime],
    dst: str,
    width: str,
    lo: datetime,
    hi: datetime,
    tag_ids: list[int],
    pace: float,
) -> None:
    """``dst`` (buckets of ``width``) over [lo, hi) from raw, ``RAW_SLICE_TAGS`` tags a statement;
    after each, a pause of ``pace`` times the statement's own time (0: none)."""
    changed[dst] = min(lo, changed.get(dst, lo))
    await conn.execute(f"DELETE FROM {dst} WHERE bucket >= $1 AND bucket < $2", lo, hi)
    loop = asyncio.get_running_loop()
    sql = _FROM_RAW.format(dst=dst, width=width)
    for at in range(0, len(tag_ids), RAW_SLICE_TAGS):
        t0 = loop.time()
        await conn.execute(sql, lo, hi, tag_ids[at : at + RAW_SLICE_TAGS])
        if pace > 0:
            await asyncio.sleep(pace * (loop.time() - t0))


async def local_day_bounds(
    conn: asyncpg.Connection,
    tz: str,
    lo: datetime,
    hi: datetime,
) -> tuple[datetime, datetime]:
    """[first local midnight <= lo, first local midnight >= hi), as TimescaleDB counts them
    (time_bucket with a time zone), so both sides agree on every DST day."""
    # A local day lasts 23 to 25 hours: 36 hours past a midnight is always inside the next day.
    r = await conn.fetchrow(
        "SELECT time_bucket(INTERVAL '1 day', $1::timestamptz, $3::text) AS lo, "
        "time_bucket(INTERVAL '1 day', $2::timestamptz - INTERVAL '1 microsecond', $3::text) AS last",
        lo,
        hi,
        tz,
    )
    last: datetime = r["last"]
    end = await conn.fetchval(
        "SELECT time_bucket(INTERVAL '1 day', $1::timestamptz + INTERVAL '36 hours', $2::text)",
        last,
        tz,
    )
    return r["lo"], end


async def rebuild(
    conn: asyncpg.Connection,
    ranges: list[tuple[datetime, datetime]],
    tz: str,
    horizons: Horizons,
    partials_from: datetime,
    pace: float = 0.0,
) -> int:
    """Rebuild every level over the given ranges (aligned to 10 s or to minutes; inside the
    caller's transaction, which holds the version row: see ``note_changes``). Returns the
    number of 1-minute buckets' worth of time rebuilt.

    Minutes from ``partials_from`` on are summed from their 10-second partials, of which only
    those in ``ranges`` are rebuilt from raw; earlier minutes are rebuilt from raw whole. The
    refresher moves ``partials_from`` only forward, to ``PARTIALS_WINDOW`` before now: a minute
    summed from partials has had every reading of it land while partials were kept for it."""
    changed: dict[str, datetime] = {}
    tag_ids = await conn.fetchval("SELECT coalesce(array_agg(tag_id), '{}') FROM tag_mappings")
    fine = clip_below(merge_ranges(ranges), horizons.of(RAW_TABLE), MINUTE)
    m = widen(fine, MINUTE)
    split = partials_from
    h10 = horizons.of(PARTIAL_TABLE)
    if h10 is not None:  # partials dropped below it: those minutes come from raw (if it has them)
        split = max(split, ceil_to(h10, MINUTE))
    whole = [(lo, min(hi, split)) for lo, hi in m if lo < split]
    for lo, hi in whole:
        await _rebuild_from_raw(conn, changed, "rollup_1m", "1 minute", lo, hi, tag_ids, pace)
    for lo, hi in clip_below(fine, split):
        await _rebuild_from_raw(conn, changed, PARTIAL_TABLE, "10 seconds", lo, hi, tag_ids, pace)
    for lo, hi in clip_below(m, split):
        await _rebuild(
            conn,
            changed,
            "rollup_1m",
            _FROM_LEVEL.format(
                dst="rollup_1m", src=PARTIAL_TABLE, bucket="time_bucket(INTERVAL '1 minute', bucket)"
            ),
            lo,
            hi,
        )
    changed.pop(PARTIAL_TABLE, None)  # no reader holds partials
    h = clip_below(widen(m, HOUR), horizons.of("rollup_1m"), HOUR)
    for lo, hi in h:
        await _rebuild(
            conn,
            changed,
            "rollup_1h",
            _FROM_LEVEL.format(dst="rollup_1h", src="rollup_1m", bucket="time_bucket(INTERVAL '1 hour', bucket)"),
            lo,
            hi,
        )
    for lo, hi in clip_below(widen(h, DAY), horizons.of("rollup_1h"), DAY):
        await _rebuild(
            conn,
            changed,
            "rollup_1d",
            _FROM_LEVEL.format(dst="rollup_1d", src="rollup_1h", bucket="time_bucket(INTERVAL '1 day', bucket)"),
            lo,
            hi,
        )
    local: list[tuple[datetime, datetime]] = []
    for lo, hi in m:
        local.append(await local_day_bounds(conn, tz, lo, hi))
    for lo, hi in merge_ranges(local):
        src = "rollup_1h" if whole_hour_offsets(tz, lo, hi) else "rollup_1m"
        src_horizon = horizons.of(src)
        if src_horizon is not None and lo < src_horizon:
            # Local days starting below what the source still holds keep what they have.
            day_lo, next_day = await local_day_bounds(conn, tz, src_horizon, src_horizon + MINUTE)
            lo = src_horizon if day_lo == src_horizon else next_day
            if lo >= hi:
                continue
        await _rebuild(
            conn,
            changed,
            LOCAL_DAY_TABLE,
            _FROM_LEVEL.format(
                dst=LOCAL_DAY_TABLE, src=src, bucket="time_bucket(INTERVAL '1 day', bucket, $3::text)"
            ),
            lo,
            hi,
            tz,
        )
    if changed:
        await note_changes(conn, changed)
    return sum(int((hi - lo) / MINUTE) for lo, hi in m)
