"""A read replica's cache of rollup rows, already encoded as the answer's JSON.

A 30-day trend is 720 one-hour rows; decoding them from the database and encoding them again as
JSON cost the replica about 12 microseconds a row, which put a 30-day query at 10 CPU ms: most of
what a request costs on two cores. Rollup rows of past buckets rarely change, so the replica keeps
each tag's run of rows of one table, encoded once, and asks the database only for what it does not
hold, in the same statement as always (``ingest.read.one_statement``): the rows from the end of the run
on, the newest buckets from raw, and what changed in the rollups since the run was read.

Validity. Every transaction that writes rollup rows bumps ``rollup_state.version`` and records,
per table, the earliest bucket it touched (``rollup_changes``, see ``note_changes``). A run read
at version V is exact below its end as long as no change since V starts below that end. The
statement that reads the new rows reads the version and the changes in the same snapshot, so an
answer is either proven current (then served, and the runs brought up to the new version) or
not (then the statement is repeated without the cache, and the table's runs are cut back or
dropped). Answers with and without the cache are the same bytes (tests/test_rollup_cache.py).

Only tables of UTC buckets are cached (1 minute, 1 hour, UTC days): where the bucket holding a
time starts is then plain arithmetic, which the lookup needs. Local days are read as before.
Bounded by rows held (least recently used runs go first); one event loop uses it, so no lock.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

DEFAULT_MAX_ROWS = 400_000  # about 120 MB at 1-hour rows' size


def encode_row(row: list[Any]) -> orjson.Fragment:
    """One answer row as it goes out (the route encodes with ``OPT_UTC_Z`` too)."""
    return orjson.Fragment(orjson.dumps(row, option=orjson.OPT_UTC_Z))


@dataclass
class _Run:
    """A tag's rows of one table, exact for buckets in [lo, hi) at the table's version."""

    lo: datetime
    hi: datetime
    times: list[datetime] = field(default_factory=list)
    rows: list[orjson.Fragment] = field(default_factory=list)

    def cut(self, at: datetime) -> None:
        """Forget everything at or after ``at``."""
        k = bisect.bisect_left(self.times, at)
        del self.times[k:], self.rows[k:]
        self.hi = min(self.hi, at)


@dataclass
class _Table:
    version: int = -1
    runs: dict[int, _Run] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What one request takes from the cache: per tag, the rows already held, and where the
    database's part starts for every tag (``None``: from the request's first bucket). One bound
    for all tags keeps it a plain parameter of the statement, so the planner reads each tag's
    rows by the (tag_id, bucket) key; a per-tag bound made it scan the bucket index instead."""

    version: int
    held: list[list[orjson.Fragment]]
    fetch_from: datetime | None

    @property
    def used(self) -> bool:
        return self.fetch_from is not None


def _log_reaches(oldest: int | None, version: int) -> bool:
    """Whether the change log (oldest version ``oldest``) still holds every change after ``version``."""
    return oldest is not None and oldest <= version + 1


class RollupCache:
    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.max_rows = max_rows
        self._tables: dict[tuple[str, str], _Table] = {}
        self._lru: OrderedDict[tuple[str, str, int], int] = OrderedDict()  # rows per run
        self._rows = 0
        self.hits = 0  # requests answered with rows from the cache
        self.misses = 0  # requests whose cached rows had changed: read again whole

    def plan(self, db: str, table: str, tag_ids: list[int], lo: datetime, split: datetime) -> Plan:
        """Rows held for buckets in [lo, split); the database reads from where the shortest run
        ends (every tag must have one, else from ``lo``)."""
        t = self._tables.get((db, table))
        runs = [None if t is None else t.runs.get(tag) for tag in tag_ids]
        if t is None or any(r is None or r.lo > lo or r.hi <= lo for r in runs):
            return Plan(-1 if t is None else t.version, [[] for _ in tag_ids], None)
        end = min(split, *(r.hi for r in runs if r is not None))
        held = []
        for tag, run in zip(tag_ids, runs, strict=True):
            assert run is not None
            self._lru.move_to_end((db, table, tag))
            held.append(run.rows[bisect.bisect_left(run.times, lo) : bisect.bisect_left(run.times, end)])
        return Plan(t.version, held, end)

    def valid(self, plan: Plan, version: int, oldest: int | None, changed_lo: datetime | None) -> bool:
        """Whether the rows the plan took are still exact at ``version``, from what the statement
        read beside them: the oldest version the change log holds and the earliest change to
        the table since the plan's version."""
        if not plan.used or version == plan.version:
            return True
        if not _log_reaches(oldest, plan.version):
            return False
        return changed_lo is None or plan.fetch_from is None or changed_lo >= plan.fetch_from

    def advance(
        self, db: str, table: str, from_version: int, version: int, oldest: int | None, changed_lo: datetime | None
    ) -> None:
        """Bring the table's runs from ``from_version`` to ``version``: cut at the earliest change,
        or drop them when the log does not say. Nothing if another request moved them already."""
        t = self._tables.setdefault((db, table), _Table())
        if t.version != from_version or version == from_version:
            return
        if from_version < 0 or not _log_reaches(oldest, from_version):
            for tag in list(t.runs):
                self._drop(db, table, tag)
        elif changed_lo is not None:
            for tag, run in list(t.runs.items()):
                if run.lo >= changed_lo:
                    self._drop(db, table, tag)
                else:
                    before = len(run.rows)
                    run.cut(changed_lo)
                    self._count(db, table, tag, len(run.rows) - before)
        t.version = version

    def store(
        self,
        db: str,
        table: str,
        version: int,
        tag: int,
        lo: datetime,
        fetched_from: datetime,
        hi: datetime,
        times: list[datetime],
        rows: list[orjson.Fragment],
    ) -> None:
        """Rows read at ``version`` for buckets in [fetched_from, hi): a new run (fetched from
        ``lo``) or the continuation of the tag's run."""
        t = self._tables.get((db, table))
        if t is None or t.version != version or hi <= fetched_from:
            return
        run = t.runs.get(tag)
        if run is not None and run.lo <= fetched_from <= run.hi:
            run.cut(fetched_from)
            before = len(run.rows)
            run.times += times
            run.rows += rows
            run.hi = hi
            self._count(db, table, tag, len(run.rows) - before)
        elif fetched_from == lo:
            if run is not None:
                self._drop(db, table, tag)
            t.runs[tag] = _Run(lo, hi, list(times), list(rows))
            self._lru[(db, table, tag)] = 0
            self._count(db, table, tag, len(rows))
        else:
            return
        self._lru.move_to_end((db, table, tag))
        while self._rows > self.max_rows and self._lru:
            (d, tb, tg), _ = next(iter(self._lru.items()))
            self._drop(d, tb, tg)

    def forget(self, db: str) -> None:
        for key in [k for k in self._tables if k[0] == db]:
            for tag in list(self._tables[key].runs):
                self._drop(key[0], key[1], tag)
            del self._tables[key]

    @property
    def rows(self) -> int:
        return self._rows

    def _count(self, db: str, table: str, tag: int, delta: int) -> None:
        self._lru[(db, table, tag)] += delta
        self._rows += delta

    def _drop(self, db: str, table: str, tag: int) -> None:
        self._tables[(db, table)].runs.pop(tag, None)
        self._rows -= self._lru.pop((db, table, tag), 0)
