"""The rollup refresher: turns the ledger's committed time ranges into rebuilt rollup buckets.

One pass, in one transaction:
1. take the ledger rows of transactions that finished since the last pass (at most
   ``max_xacts_per_pass`` of them), as ranges of 10-second buckets, into ``rollup_pending``;
2. rebuild at most ``max_minutes_per_pass`` minutes of pending ranges, newest first (current data
   stays fresh while a large backfill is worked through), at every level (the 1-minute one summed
   from 10-second partials, of which only the touched ones are read from raw again);
3. keep the rest pending and advance the watermark.

A crash anywhere rolls the whole pass back, so nothing is lost or counted twice. Only one pass runs
per tenant database at a time (an advisory lock), so two writer actors briefly alive during a
failover do not race.

Why transaction ids rather than a sequence number: numbers are drawn when a row is inserted but
become visible when its transaction commits, so a lower number can appear after a higher one was
already passed. ``pg_snapshot_xmin`` is the oldest transaction still running; every ledger row of
an older transaction is final (committed and visible, or rolled back), so "everything below it"
is a watermark nothing can slip under. The price: the refresher waits for the oldest write
transaction running in the cluster, so a long one (a bulk load) delays rollups until it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from ingest.read.rollups import (
    MINUTE,
    PARTIALS_WINDOW,
    TEN_S,
    Horizons,
    ceil_to,
    floor_to,
    merge_ranges,
    rebuild,
    widen,
)

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every refresher of a tenant database.
_LOCK_KEY = 0x5CADA + 6
# Ledger min/max times pass through a float (to_timestamp) on their way in and may be a
# microsecond off: widen before rounding to minutes, so a reading on a boundary is never missed.
_SLACK = timedelta(milliseconds=1)
_WORK_MEM = "64MB"

_INTAKE = """
WITH x AS (SELECT DISTINCT xact FROM ingest_ledger
           WHERE xact >= $1 AND xact < $2 ORDER BY xact LIMIT $3)
SELECT l.xact, l.min_time, l.max_time, l.committed_at FROM ingest_ledger l JOIN x USING (xact)"""


@dataclass(frozen=True)
class PassResult:
    ledger_rows: int = 0
    minutes_rebuilt: int = 0
    pending_minutes: int = 0  # still to rebuild after this pass
    more: bool = False  # another pass has work now (ledger backlog or pending ranges)
    busy: bool = False  # another refresher holds the lock
    intake_oldest: datetime | None = None  # commit time of the oldest ledger row taken in
    waiting_oldest: datetime | None = None  # of the oldest ledger row left for a later pass


def overlap(
    a: list[tuple[datetime, datetime]], b: list[tuple[datetime, datetime]]
) -> list[tuple[datetime, datetime]]:
    """The parts of the ranges ``a`` that lie inside the ranges ``b`` (each a union: no two of
    its ranges overlap), in one sweep over both."""
    a, b = sorted(a), sorted(b)
    out: list[tuple[datetime, datetime]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def take_newest(
    ranges: list[tuple[datetime, datetime]],
    budget: timedelta,
) -> tuple[list[tuple[datetime, datetime]], list[tuple[datetime, datetime]]]:
    """Split merged minute ranges into (rebuild now, keep pending): newest first up to budget."""
    take: list[tuple[datetime, datetime]] = []
    keep: list[tuple[datetime, datetime]] = []
    left = budget
    for lo, hi in sorted(ranges, key=lambda r: r[1], reverse=True):
        if left <= timedelta(0):
            keep.append((lo, hi))
        elif hi - lo <= left:
            take.append((lo, hi))
            left -= hi - lo
        else:
            cut = hi - left
            take.append((cut, hi))
            keep.append((lo, cut))
            left = timedelta(0)
    return take, keep


async def read_timezone(conn: asyncpg.Connection) -> str:
    tz = await conn.fetchval("SELECT value FROM tenant_meta WHERE key = 'timezone'")
    return str(tz or "UTC")


# Whether a pass has anything to do: ledger rows at or past the watermark (committed or still in
# flight) or ranges put off by an earlier pass. One read, no transaction of its own.
_ANY_WORK = """
SELECT EXISTS (SELECT 1 FROM ingest_ledger WHERE xact >= (SELECT done_below FROM rollup_state))
    OR EXISTS (SELECT 1 FROM rollup_pending)"""


async def refresh_pass(
    conn: asyncpg.Connection,
    *,
    max_xacts: int = 2000,
    max_minutes: int = 360,
    pace: float = 0.0,
    partials_window: timedelta = PARTIALS_WINDOW,
) -> PassResult:
    # An idle tenant's pass is this one read. Without it, every pass of every tenant wrote
    # rollup_state (a committed, fsynced transaction every interval per tenant database, ten
    # statements) to find nothing. Skipping the watermark's advance loses nothing: no ledger
    # row lies at or past it, so the next pass's intake finds the same nothing below it.
    if not await conn.fetchval(_ANY_WORK):
        return PassResult()
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK_KEY):
            return PassResult(busy=True)
        # A pass over a backfill aggregates hours of raw rows of every tag at once: let its
        # hash aggregate stay in memory instead of spilling batches to disk.
        await conn.execute(f"SET LOCAL work_mem = '{_WORK_MEM}'")
        # Read before this transaction takes an id of its own (it writes below).
        xmin = await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8")
        # partials_from only moves forward, to partials_window before now (rollups.rebuild).
        done, partials_from = await conn.fetchrow(
            "SELECT done_below, greatest(partials_from, date_trunc('minute', now() - $1::interval)) "
            "FROM rollup_state FOR UPDATE",
            partials_window,
        )
        rows = await conn.fetch(_INTAKE, done, xmin, max_xacts)
        xacts = {r["xact"] for r in rows}
        backlog = len(xacts) >= max_xacts
        new_done = max(xacts) + 1 if backlog else max(xmin, done)
        ranges = [  # 10-second buckets: the 1-minute level is summed from their partials
            (floor_to(r["min_time"] - _SLACK, TEN_S), ceil_to(r["max_time"] + _SLACK, TEN_S))
            for r in rows
            if r["min_time"] is not None and r["max_time"] is not None
        ]
        ranges += [(r["lo"], r["hi"]) for r in await conn.fetch("DELETE FROM rollup_pending RETURNING lo, hi")]
        merged = merge_ranges(ranges)
        # Whole minutes are taken or put off (a minute is summed from all its partials at once).
        take_m, keep_m = take_newest(widen(merged, MINUTE), MINUTE * max_minutes)
        take, keep = overlap(merged, take_m), overlap(merged, keep_m)
        minutes = 0
        if take:
            minutes = await rebuild(
                conn, take, await read_timezone(conn), await Horizons.load(conn), partials_from, pace
            )
        if keep:
            await conn.executemany("INSERT INTO rollup_pending (lo, hi) VALUES ($1, $2)", keep)
        await conn.execute("UPDATE rollup_state SET done_below = $1, partials_from = $2", new_done, partials_from)
        waiting = await conn.fetchval("SELECT min(committed_at) FROM ingest_ledger WHERE xact >= $1", new_done)
    pending = sum(int((hi - lo) / MINUTE) for lo, hi in keep_m)
    intake = min((r["committed_at"] for r in rows), default=None)
    return PassResult(len(rows), minutes, pending, backlog or bool(keep), False, intake, waiting)


class RollupRefresher:
    """Runs refresh passes for one tenant database: every ``interval_s``, and back to back while
    a pass leaves work behind (each pass itself stays bounded)."""

    def __init__(
        self,
        dsn: str,
        *,
        interval_s: float = 5.0,
        max_xacts_per_pass: int = 2000,
        max_minutes_per_pass: int = 360,
        pace: float = 0.0,
        partials_window: timedelta = PARTIALS_WINDOW,
        on_pass: Callable[[PassResult, float], None] | None = None,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self.interval_s = interval_s
        self.max_xacts_per_pass = max_xacts_per_pass
        self.max_minutes_per_pass = max_minutes_per_pass
        # Pauses inside a pass (``rebuild``'s pace) while it keeps up; none while passes run back
        # to back to catch up (a backfill, a backlog): the rollups' lag comes first then.
        self.pace = pace
        self._behind = False
        self.partials_window = partials_window
        self._on_pass = on_pass
        self._on_lag = on_lag
        # Commit time of the oldest data put off to a later pass (``rollup_pending``), while any
        # is; after a restart, unknown ones count from the first pass that finds them.
        self._pending_since: datetime | None = None
        self.lag_s = 0.0  # rollup lag after the last pass (see ``lag_after``)
        self._lag_at: float | None = None  # monotonic time of that measurement
        self._conn: asyncpg.Connection | None = None
        self.passes = 0
        self.failures = 0
        self.last_error: str | None = None

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn, timeout=10)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def run_pass(self) -> PassResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            r = await refresh_pass(
                await self._connection(),
                max_xacts=self.max_xacts_per_pass,
                max_minutes=self.max_minutes_per_pass,
                pace=0.0 if self._behind else self.pace,
                partials_window=self.partials_window,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if self._conn is not None and not self._conn.is_closed():
                self._conn.terminate()
            self._conn = None
            raise
        self.passes += 1
        self._behind = r.more
        self.lag_s = self.lag_after(r, datetime.now(UTC))
        self._lag_at = loop.time()
        self._report_lag(self.lag_s)
        if self._on_pass is not None:
            try:
                self._on_pass(r, loop.time() - t0)
            except Exception:  # metrics never break the loop
                log.debug("on_pass hook failed", exc_info=True)
        return r

    def lag_after(self, r: PassResult, now: datetime) -> float:
        """Rollup lag: seconds since the commit of the oldest reading not yet in the rollups
        (waiting in the ledger, or put off in ``rollup_pending``); 0 when all are in."""
        if r.busy:
            return self.lag_s
        if r.pending_minutes:
            if self._pending_since is None:
                self._pending_since = r.intake_oldest or now
        else:
            self._pending_since = None
        oldest = min((t for t in (self._pending_since, r.waiting_oldest) if t is not None), default=None)
        return max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0

    def _report_lag(self, lag_s: float) -> None:
        if self._on_lag is not None:
            try:
                self._on_lag(lag_s)
            except Exception:  # metrics never break the loop
                log.debug("on_lag hook failed", exc_info=True)

    async def run_until_idle(self, max_passes: int = 100_000) -> int:
        """Passes until everything committed before the call is rolled up; returns how many
        ran. A transaction still running anywhere in the cluster (an autovacuum's ANALYZE, say)
        can hold the watermark back for a moment: then passes repeat until it has moved on."""
        conn = await self._connection()
        target = await conn.fetchval("SELECT coalesce(max(xact), -1) FROM ingest_ledger")
        for n in range(1, max_passes + 1):
            r = await self.run_pass()
            if not (r.more or r.busy) and await conn.fetchval("SELECT done_below FROM rollup_state") > target:
                return n
            if r.busy or not r.more:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"rollups still behind after {max_passes} passes")

    async def run(self) -> None:
        """Forever; a failing pass (database away) is retried at the next tick."""
        while True:
            try:
                r = await self.run_pass()
                if r.more:
                    await asyncio.sleep(0)  # let the writer in between bounded passes
                    continue
            except Exception as e:
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"[:300]
                log.warning("rollup refresh failed: %s", self.last_error)
                if self._lag_at is not None:  # nothing folds in while passes fail: the lag grows
                    self._report_lag(self.lag_s + asyncio.get_running_loop().time() - self._lag_at)
            await asyncio.sleep(self.interval_s)
