"""What a reading query asks and what it answers: the resolution rule, the request and answer
types, quality names, the cursor, and the shape of answer rows (ingest.read.query runs them).

``auto`` follows seed 003 (up to 1 day raw, up to 7 days 1-minute, up to 30 days 1-hour, beyond
that 1-day), then moves to a coarser level while a tag would exceed ``max_points``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from ingest.core.errors import InvalidQuery
from ingest.core.models import Quality
from ingest.read.catalog import TagInfo
from ingest.read.rollups import EPOCH, STEP, Level

AUTO = "auto"
RAW_FIELDS = ["time", "value", "quality", "quality_name"]
AGG_FIELDS = ["time", "count", "avg", "min", "max", "sum", "first", "first_time", "last", "last_time", "bad_count"]
# Seed 003's rule: the finest level for a span, before max_points applies.
_AUTO_RULE = ((timedelta(days=1), Level.RAW), (timedelta(days=7), Level.MINUTE), (timedelta(days=30), Level.HOUR))
_COARSER = {Level.RAW: Level.MINUTE, Level.MINUTE: Level.HOUR, Level.HOUR: Level.DAY}
_NAMES = {
    int(q): n
    for q, n in (
        (Quality.GOOD, "Good"),
        (Quality.UNCERTAIN, "Uncertain"),
        (Quality.BAD, "Bad"),
        (Quality.BAD_OUT_OF_RANGE, "BadOutOfRange"),
        (Quality.BAD_NO_COMMUNICATION, "BadNoCommunication"),
        (Quality.BAD_DATA_LOST, "BadDataLost"),
    )
}


def quality_code(stored: int) -> int:
    """The OPC UA StatusCode (uint32) from the int4 it is stored as."""
    return stored & 0xFFFFFFFF


def quality_name(stored: int) -> str:
    code = quality_code(stored)
    if code in _NAMES:
        return _NAMES[code]
    severity = ("Good", "Uncertain", "Bad", "Bad")[code >> 30]
    return f"{severity} (0x{code:08X})"


def level_for_span(span: timedelta) -> Level:
    for limit, level in _AUTO_RULE:
        if span <= limit:
            return level
    return Level.DAY


def buckets_in(span: timedelta, level: Level) -> int:
    """Buckets a span can touch at a level (one more when it is not aligned)."""
    return -(-span // STEP[level]) + 1


@dataclass(frozen=True)
class ReadRequest:
    tags: list[TagInfo]
    start: datetime
    end: datetime
    resolution: str = AUTO  # auto | raw | 1m | 1h | 1d
    max_points: int = 2000
    limit: int = 10_000
    local_days: bool = True  # 1-day buckets from the tenant's local midnight
    cursor: str | None = None

    def fingerprint(self) -> str:
        key = json.dumps(
            [
                [t.tag_id for t in self.tags],
                self.start.isoformat(),
                self.end.isoformat(),
                self.resolution,
                self.max_points,
                self.local_days,
            ]
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class Series:
    tag: TagInfo
    # Rows in the answer's ``fields`` order; with the rollup cache, rows may also be already
    # encoded (``orjson.Fragment``: ``ingest.read.rollup_cache``).
    points: list[Any] = field(default_factory=list)


@dataclass
class ReadAnswer:
    level: Level
    fields: list[str]
    series: list[Series]
    timezone: str
    next: str | None = None
    raw_dropped_before: datetime | None = None
    notices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Cursor:
    level: Level
    position: int  # index in the request's tag list
    after: datetime | None  # last time (or bucket) already answered for that tag

    def encode(self, req: ReadRequest) -> str:
        after = None if self.after is None else int((self.after - EPOCH) / timedelta(microseconds=1))
        raw = json.dumps(
            {"q": req.fingerprint(), "l": self.level.value, "p": self.position, "a": after}, separators=(",", ":")
        ).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, req: ReadRequest, token: str) -> _Cursor:
        try:
            d = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            level, position, after = Level(d["l"]), int(d["p"]), d["a"]
            fp = d["q"]
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidQuery("cursor", "not a cursor this API issued") from e
        if fp != req.fingerprint() or not 0 <= position < len(req.tags):
            raise InvalidQuery(
                "cursor", "belongs to another query: repeat the query's tags, start, end and resolution with it"
            )
        at = None if after is None else EPOCH + timedelta(microseconds=int(after))
        return cls(level, position, at)


def agg_row(r: asyncpg.Record) -> list[Any]:
    n, total = r["n"], r["sum"]
    return [
        r["b"],
        n,
        (total / n) if n and total is not None else None,
        r["min"],
        r["max"],
        total,
        r["fv"],
        r["first_time"],
        r["lv"],
        r["last_time"],
        r["bad"],
    ]


def raw_row(r: asyncpg.Record) -> list[Any]:
    q = r["quality"]
    return [r["time"], r["value"], quality_code(q), quality_name(q)]


def fixed_level(req: ReadRequest) -> Level | None:
    """The level, when no data decides it: None for ``auto`` over a span the rule answers raw
    (then the tags' row counts and the retention horizon decide)."""
    if req.resolution != AUTO:
        return Level(req.resolution)
    level = level_for_span(req.end - req.start)
    if level is Level.RAW:
        return None
    return coarsen(req, level)


def coarsen(req: ReadRequest, level: Level) -> Level:
    while level in _COARSER and level is not Level.RAW and buckets_in(req.end - req.start, level) > req.max_points:
        level = _COARSER[level]
    return level


def max_buckets(req: ReadRequest, level: Level) -> int:
    if level is Level.DAY:  # local days last 23 to 25 hours
        return -(-(req.end - req.start) // timedelta(hours=23)) + 2
    return buckets_in(req.end - req.start, level)
