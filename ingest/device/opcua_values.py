"""OPC UA DataValues -> numpy columns, and the per-tag bookkeeping that finds gaps.

``decode_notifications`` / ``decode_history`` turn asyncua objects into ``Readings`` (one row per
value, in arrival order, tag addressed by its client handle). ``GapTracker`` remembers the last
source time seen per tag, so that after a lost subscription (or a lost NotificationMessage) each
tag's first new value says where its gap ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
from asyncua import ua

__all__ = [
    "GAP_CAUSES",
    "UNSEEN",
    "GapTracker",
    "Readings",
    "decode_history",
    "decode_notifications",
    "now_us",
    "to_us",
]

_GOOD = 0
_BAD = 0x80000000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
UNSEEN = np.iinfo(np.int64).min  # last_time of a tag that has not reported yet
NO_GAP = np.iinfo(np.int64).min  # gap_from of a tag without an open gap


def to_us(ts: datetime) -> int:
    """Microseconds since the Unix epoch; naive datetimes are UTC (as asyncua decodes them)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def now_us() -> int:
    return to_us(datetime.now(UTC))


@dataclass
class Readings:
    """Decoded values in arrival order. ``texts[i]`` is set where ``is_text[i]`` (else ``None``)."""

    handles: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint32]
    is_text: npt.NDArray[np.bool_]
    texts: list[str | None]

    def __len__(self) -> int:
        return int(self.handles.shape[0])

    def select(self, mask: npt.NDArray[np.bool_]) -> Readings:
        idx = np.flatnonzero(mask)
        return Readings(
            self.handles[idx],
            self.times[idx],
            self.values[idx],
            self.quality[idx],
            self.is_text[idx],
            [self.texts[i] for i in idx.tolist()] if self.is_text.any() else [None] * len(idx),
        )

    @staticmethod
    def empty() -> Readings:
        return Readings(
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0, np.float64),
            np.empty(0, np.uint32),
            np.empty(0, np.bool_),
            [],
        )

    @staticmethod
    def concat(parts: Sequence[Readings]) -> Readings:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Readings.empty()
        if len(parts) == 1:
            return parts[0]
        texts: list[str | None] = []
        for p in parts:
            texts += p.texts
        return Readings(
            np.concatenate([p.handles for p in parts]),
            np.concatenate([p.times for p in parts]),
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.quality for p in parts]),
            np.concatenate([p.is_text for p in parts]),
            texts,
        )


def _decode(handles_in: Sequence[int], dvs: Sequence[ua.DataValue | None], text: bool) -> Readings:
    n = len(dvs)
    handles = np.fromiter(handles_in, dtype=np.int64, count=n)
    times = np.empty(n, dtype=np.int64)
    values = np.empty(n, dtype=np.float64)
    quality = np.empty(n, dtype=np.uint32)
    is_text = np.zeros(n, dtype=np.bool_)
    texts: list[str | None] = [None] * n
    now: int | None = None
    for i, dv in enumerate(dvs):
        if dv is None:
            code, raw, ts = _BAD, None, None
        else:
            code = dv.StatusCode.value if dv.StatusCode is not None else _GOOD
            raw = dv.Value.Value if dv.Value is not None else None
            ts = dv.SourceTimestamp or dv.ServerTimestamp
        if type(raw) is float:
            values[i] = raw
        elif isinstance(raw, int | float):  # bool and int included; stored as float8
            values[i] = float(raw)
        elif text and isinstance(raw, str):
            values[i] = math.nan
            is_text[i] = True
            texts[i] = raw
        else:
            # Anything else (strings without a text consumer, byte strings, structures, or a
            # value the server already marked Bad, often null) is a NaN reading marked Bad, so
            # it is visible rather than dropped. A Bad code from the server is kept.
            values[i] = math.nan
            if not code & _BAD:
                code = _BAD
        if ts is None:
            if now is None:
                now = now_us()
            times[i] = now
        else:
            times[i] = to_us(ts)
        quality[i] = code
    return Readings(handles, times, values, quality, is_text, texts)


def decode_notifications(items: Sequence[ua.MonitoredItemNotification], *, text: bool) -> Readings:
    """One DataChangeNotification's items; ``text=True`` keeps strings as text."""
    return _decode([it.ClientHandle for it in items], [it.Value for it in items], text)


def decode_history(handle: int, dvs: Sequence[ua.DataValue], *, text: bool) -> Readings:
    """HistoryRead values of one tag."""
    return _decode([handle] * len(dvs), dvs, text)


@dataclass
class GapFind:
    keep: npt.NDArray[np.bool_]  # rows of the readings to deliver
    closing: npt.NDArray[np.int64]  # handles whose open gap ends in these readings
    handles: npt.NDArray[np.int64]  # of those, the ones with something missing ...
    from_us: npt.NDArray[np.int64]  # ... after this time (the last value seen) ...
    to_us: npt.NDArray[np.int64]  # ... and before this one (the first value after)


# Why a tag's gap opened (GapTracker.cause): the stats of a session count reported gaps per cause.
GAP_CAUSES = (
    "subscription_gone",  # the server no longer had it (session timed out, transfer refused)
    "server_restarted",
    "not_publishing",  # kept or transferred, then it published nothing: given up and re-created
    "messages_unavailable",  # a NotificationMessage the server could no longer Republish
    "session_start",  # a first subscription here, after readings an earlier session stored
)


class GapTracker:
    """Per tag: last source time delivered, and where an open gap starts.

    A gap opens when values may have been lost without our knowing which (subscription gone,
    NotificationMessage not available for Republish). It closes at the tag's next value: the
    interval (gap_from, first new time), both ends exclusive, holds what is missing.
    """

    def __init__(self, n_tags: int) -> None:
        self.last_time = np.full(n_tags, UNSEEN, dtype=np.int64)
        self.gap_from = np.full(n_tags, NO_GAP, dtype=np.int64)
        self.subscribed_at = np.full(n_tags, UNSEEN, dtype=np.int64)
        self.cause = np.zeros(n_tags, dtype=np.int64)  # index into GAP_CAUSES, of an open gap

    @property
    def open_count(self) -> int:
        return int((self.gap_from != NO_GAP).sum())

    def mark_subscribed(self, handles: npt.NDArray[np.int64], at_us: int) -> None:
        self.subscribed_at[handles] = at_us

    def open_all(self, cause: str) -> None:
        """Open a gap for every tag that is subscribed, starting at its last known time.

        A tag that never reported starts at the time its monitored item was created (client
        clock): the best bound there is for values it may have had since.
        """
        start = np.where(self.last_time != UNSEEN, self.last_time, self.subscribed_at)
        opening = (self.gap_from == NO_GAP) & (start != UNSEEN)
        self.gap_from[opening] = start[opening]
        self.cause[opening] = GAP_CAUSES.index(cause)

    def close(self, handles: npt.NDArray[np.int64]) -> None:
        self.gap_from[handles] = NO_GAP

    def find(self, r: Readings) -> GapFind:
        """Which tags of ``r`` close an open gap, and what each gap spans.

        A gap ends at the tag's first time in ``r``. When that first value is exactly the last
        value already delivered (a new monitored item re-reports the current value) it is not
        new: ``keep`` is False for it and the gap closes with nothing missing. Pure: the caller
        calls ``close(found.closing)`` once it has delivered.
        """
        keep = np.ones(len(r), dtype=np.bool_)
        none = np.empty(0, dtype=np.int64)
        pending = np.flatnonzero(self.gap_from[r.handles] != NO_GAP) if len(r) else none
        if not len(pending):
            return GapFind(keep, none, none, none, none)
        handles, first = np.unique(r.handles[pending], return_index=True)
        first_idx = pending[first]
        to = r.times[first_idx]
        frm = self.gap_from[handles]
        last = self.last_time[handles]
        repeat = (last != UNSEEN) & (to == last)
        keep[first_idx[repeat]] = False
        missing = to > frm
        return GapFind(keep, handles, handles[missing], frm[missing], to[missing])

    def observe(self, r: Readings) -> None:
        if len(r):
            np.maximum.at(self.last_time, r.handles, r.times)
