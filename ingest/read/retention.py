"""Per-tenant read settings (time zone, retention) and the retention job.

Defaults (set by migration 006, changed through ``PATCH /v1/tenants/{t}``): raw readings 90 days
(seed 003), rollups 730 days. Retention drops whole chunks with ``drop_chunks`` (every edition has
it) and records how far it dropped, so queries can say a range is gone and the refresher never
rebuilds a level from an emptied one.

Raw data is never dropped before its rollups are written: the raw cut stops at the oldest time
the refresher still has to roll up (pending ranges and ledger rows it has not taken yet).
Readings arriving later than the raw retention, into an already dropped range, are not rolled
up: the rollups there are final (rebuilding them from the emptied raw range would erase them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from ingest.core.errors import InvalidRegistration
from ingest.core.translate import translated
from ingest.read.rollups import (
    EARLIEST,
    LOCAL_DAY_TABLE,
    PARTIAL_TABLE,
    RAW_TABLE,
    ROLLUP_TABLES,
    TEXT_TABLE,
    Horizons,
    local_day_bounds,
    lock_version,
    note_changes,
    whole_hour_offsets,
)

log = logging.getLogger(__name__)

DEFAULT_RAW_RETENTION_DAYS = 90
DEFAULT_ROLLUP_RETENTION_DAYS = 730
# The same lock as the refresher's: retention and a refresh pass never interleave.
_LOCK_KEY = 0x5CADA + 6


@dataclass(frozen=True)
class ReadSettings:
    timezone: str = "UTC"
    raw_retention_days: int = DEFAULT_RAW_RETENTION_DAYS
    rollup_retention_days: int = DEFAULT_ROLLUP_RETENTION_DAYS


def check_timezone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise InvalidRegistration("timezone", f"unknown IANA time zone {tz!r}") from e
    return tz


@translated
async def load_settings(conn: asyncpg.Connection | asyncpg.Pool) -> ReadSettings:
    rows = {
        r["key"]: r["value"]
        for r in await conn.fetch(
            "SELECT key, value FROM tenant_meta WHERE key = ANY($1::text[])",
            ["timezone", "raw_retention_days", "rollup_retention_days"],
        )
    }
    return ReadSettings(
        timezone=rows.get("timezone", "UTC"),
        raw_retention_days=int(rows.get("raw_retention_days", DEFAULT_RAW_RETENTION_DAYS)),
        rollup_retention_days=int(rows.get("rollup_retention_days", DEFAULT_ROLLUP_RETENTION_DAYS)),
    )


@translated
async def save_settings(
    db: asyncpg.Connection | asyncpg.Pool,
    *,
    timezone: str | None = None,
    raw_retention_days: int | None = None,
    rollup_retention_days: int | None = None,
) -> ReadSettings:
    """Change what is given. A new time zone rebuilds the local-day rollups in the same
    transaction (from 1-hour or 1-minute rollups, never from raw)."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as c:
            return await save_settings(
                c,
                timezone=timezone,
                raw_retention_days=raw_retention_days,
                rollup_retention_days=rollup_retention_days,
            )
    conn = db
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        before = await load_settings(conn)
        raw = raw_retention_days or before.raw_retention_days
        rollup = rollup_retention_days or before.rollup_retention_days
        if rollup < raw:
            field = "rollup_retention_days" if rollup_retention_days else "raw_retention_days"
            raise InvalidRegistration(
                field, f"rollups ({rollup} days) must be kept at least as long as raw data ({raw} days)"
            )
        for key, value in (
            ("timezone", timezone),
            ("raw_retention_days", raw_retention_days),
            ("rollup_retention_days", rollup_retention_days),
        ):
            if value is not None:
                await conn.execute(
                    "INSERT INTO tenant_meta (key, value) VALUES ($1, $2) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    key,
                    str(value),
                )
        if timezone is not None and timezone != before.timezone:
            await rebuild_local_days(conn, check_timezone(timezone))
        return await load_settings(conn)


async def rebuild_local_days(conn: asyncpg.Connection, tz: str) -> None:
    await note_changes(conn, {LOCAL_DAY_TABLE: EARLIEST})
    await conn.execute(f"TRUNCATE {LOCAL_DAY_TABLE}")
    span = await conn.fetchrow("SELECT min(bucket) AS lo, max(bucket) AS hi FROM rollup_1m")
    if span["lo"] is None:
        return
    lo, hi = await local_day_bounds(conn, tz, span["lo"], span["hi"] + timedelta(minutes=1))
    src = "rollup_1h" if whole_hour_offsets(tz, lo, hi) else "rollup_1m"
    await conn.execute(
        f"INSERT INTO {LOCAL_DAY_TABLE} SELECT tag_id, "
        "time_bucket(INTERVAL '1 day', bucket, $1::text), sum(n)::int8, sum(sum), min(min), "
        "max(max), min(first_time), first(first_value, first_time) FILTER (WHERE n > 0), "
        "max(last_time), last(last_value, last_time) FILTER (WHERE n > 0), sum(bad)::int8 "
        f"FROM {src} GROUP BY 1, 2",
        tz,
    )


@dataclass(frozen=True)
class RetentionResult:
    dropped: dict[str, int]  # chunks dropped per table
    horizons: dict[str, datetime]


async def _drop(conn: asyncpg.Connection, table: str, cutoff: datetime) -> int:
    end = await conn.fetchval(
        "SELECT max(range_end) FROM timescaledb_information.chunks WHERE hypertable_name = $1 AND range_end <= $2",
        table,
        cutoff,
    )
    if end is None:
        return 0
    dropped = await conn.fetch("SELECT drop_chunks($1::regclass, older_than => $2::timestamptz)", table, cutoff)
    await conn.execute(
        "INSERT INTO retention_horizon (table_name, dropped_before) VALUES ($1, $2) "
        "ON CONFLICT (table_name) DO UPDATE "
        "SET dropped_before = greatest(retention_horizon.dropped_before, excluded.dropped_before)",
        table,
        end,
    )
    return len(dropped)


async def not_rolled_up_before(conn: asyncpg.Connection) -> datetime | None:
    """Oldest time the refresher has yet to roll up (None: everything committed is done)."""
    pending = await conn.fetchval("SELECT min(lo) FROM rollup_pending")
    ledger = await conn.fetchval(
        "SELECT min(min_time) FROM ingest_ledger WHERE xact >= (SELECT done_below FROM rollup_state)"
    )
    times = [t for t in (pending, ledger) if t is not None]
    return min(times) if times else None


async def apply_retention(
    conn: asyncpg.Connection,
    now: datetime | None = None,
) -> RetentionResult:
    now = now or datetime.now(UTC)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await lock_version(conn)
        s = await load_settings(conn)
        raw_cut = now - timedelta(days=s.raw_retention_days)
        behind = await not_rolled_up_before(conn)
        if behind is not None and behind < raw_cut:
            log.info("raw retention held back to %s: rollups not written yet", behind)
            raw_cut = behind
        dropped = {
            RAW_TABLE: await _drop(conn, RAW_TABLE, raw_cut),
            PARTIAL_TABLE: await _drop(conn, PARTIAL_TABLE, raw_cut),  # raw's 10-second partials
            # Text readings have no rollups: the raw retention alone applies.
            TEXT_TABLE: await _drop(conn, TEXT_TABLE, now - timedelta(days=s.raw_retention_days)),
        }
        for table in ROLLUP_TABLES:
            dropped[table] = await _drop(conn, table, now - timedelta(days=s.rollup_retention_days))
        if any(dropped[t] for t in ROLLUP_TABLES):
            await note_changes(conn, {t: EARLIEST for t in ROLLUP_TABLES if dropped[t]})
        horizons = await Horizons.load(conn)
    return RetentionResult(dropped, horizons.by_table)


async def retention_loop(dsn: str, interval_s: float) -> None:
    """The scheduled job: apply retention every ``interval_s`` (first run at once), forever."""
    import asyncio

    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                r = await apply_retention(conn)
                if any(r.dropped.values()):
                    log.info("retention dropped chunks: %s", r.dropped)
            finally:
                await conn.close()
        except Exception as e:  # database away: try again next time
            log.warning("retention pass failed: %s: %s", type(e).__name__, e)
        await asyncio.sleep(interval_s)
