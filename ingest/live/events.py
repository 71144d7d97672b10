"""Live-stream entries and the events a subscriber receives, encoded once for SSE or WebSocket.

Events (JSON objects with a ``type``):

- ``snapshot``: ``id``, ``values``: the latest value of every subscribed tag; deltas follow.
- ``update``: ``id``, ``commit_us``, ``values``, ``every``: one committed batch (or several,
  conflated); ``every`` true when it holds every value of the batch for the watched tags (asked
  for with ``every=true``), false when the last value per tag.
- ``conflated``: ``id``, ``skipped``: the subscriber fell behind; the next ``update`` carries
  the latest value per tag of everything it skipped.
- ``reset``: ``reason``: the id to resume from is no longer in the stream (trimmed, or the stream
  is not the one the client saw); a fresh ``snapshot`` follows.
- ``heartbeat``: ``id`` (WebSocket only; SSE sends a comment line).

A value is ``{"tag_id", "t_us", "value", "quality"}``: time in µs since the epoch, quality as
stored (int4), value null for NaN, text for text tags. ``id`` is the Redis stream id to resume from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

# tag_id, time (µs), value (None for NaN or no value; text for text tags), quality as stored
Value = tuple[int, int, float | str | None, int]

_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
ZERO_ID = "0-0"


def parse_id(s: str) -> tuple[int, int]:
    """A stream id as a comparable pair; ValueError for anything else."""
    m = _ID.match(s)
    if m is None:
        raise ValueError(f"not a stream id: {s[:40]!r}")
    return int(m.group(1)), int(m.group(2))


def is_stream_id(s: str) -> bool:
    return _ID.match(s) is not None


@dataclass(frozen=True)
class Entry:
    """One live-stream entry: a committed batch's values.

    One entry reaches every subscriber of its tenant: what is derived from it (the part a
    filter keeps, the last value per tag, the encoded event) is made once and shared, so a
    replica's cost per subscriber is a lookup and a send, not a filter and an encoding."""

    id: str
    key: tuple[int, int]
    commit_us: int
    values: tuple[Value, ...]
    every: bool = False  # every value of the batch, not the last per tag
    _memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def from_redis(entry_id: bytes | str, fields: dict[Any, Any]) -> Entry:
        sid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        c = fields.get(b"c", fields.get("c", 0))
        v = fields.get(b"v", fields.get("v", b"[]"))
        every = fields.get(b"a", fields.get("a")) is not None
        values = tuple((int(r[0]), int(r[1]), r[2], int(r[3])) for r in orjson.loads(v))
        return Entry(sid, parse_id(sid), int(c), values, every)

    def only(self, tags: frozenset[int] | None) -> Entry | None:
        """This entry restricted to ``tags`` (all when None); None when nothing is left."""
        if tags is None:
            return self
        memo = self._memo
        if tags in memo:
            found: Entry | None = memo[tags]
            return found
        kept = tuple(v for v in self.values if v[0] in tags)
        if not kept:
            found = None
        elif len(kept) == len(self.values):
            found = self
        else:
            found = Entry(self.id, self.key, self.commit_us, kept, self.every)
        memo[tags] = found
        return found

    def last_per_tag(self) -> Entry:
        """What a subscriber that did not ask for every value gets of an every-value entry."""
        if not self.every:
            return self
        last: Entry | None = self._memo.get("last")
        if last is None:
            last = self._memo["last"] = conflate([self])
        return last

    def wire(self) -> Wire:
        """This entry's ``update`` event, encoded (once)."""
        w: Wire | None = self._memo.get("wire")
        if w is None:
            w = self._memo["wire"] = Wire.of(update_event(self))
        return w


def conflate(entries: list[Entry]) -> Entry:
    """The latest value per tag of ``entries`` (in stream order) as one entry with the last id."""
    latest: dict[int, Value] = {}
    for e in entries:
        for v in e.values:
            prev = latest.get(v[0])
            if prev is None or v[1] >= prev[1]:
                latest[v[0]] = v
    last = entries[-1]
    return Entry(last.id, last.key, max(e.commit_us for e in entries), tuple(latest.values()))


def _values(values: tuple[Value, ...] | list[Value]) -> list[dict[str, Any]]:
    return [{"tag_id": v[0], "t_us": v[1], "value": v[2], "quality": v[3]} for v in values]


def update_event(e: Entry) -> dict[str, Any]:
    return {"type": "update", "id": e.id, "commit_us": e.commit_us, "values": _values(e.values), "every": e.every}


def snapshot_event(stream_id: str, values: list[Value]) -> dict[str, Any]:
    return {"type": "snapshot", "id": stream_id, "values": _values(values)}


def conflated_event(stream_id: str, skipped: int) -> dict[str, Any]:
    return {"type": "conflated", "id": stream_id, "skipped": skipped}


def reset_event(reason: str) -> dict[str, Any]:
    return {"type": "reset", "reason": reason}


def heartbeat_event(stream_id: str) -> dict[str, Any]:
    return {"type": "heartbeat", "id": stream_id}


@dataclass(frozen=True, slots=True)
class Wire:
    """One event as sent: its ``type``, its Server-Sent Event (``sse``) and its WebSocket text
    message (``text``), both from one JSON encoding."""

    type: str
    sse: bytes
    text: str

    @staticmethod
    def of(event: dict[str, Any]) -> Wire:
        """Events that move the position (snapshot, update) carry an SSE ``id:`` line, so the
        browser's EventSource resumes from it by itself (``Last-Event-ID``)."""
        data = orjson.dumps(event)
        head = f"event: {event['type']}\n"
        if event["type"] in ("snapshot", "update"):
            head = f"id: {event['id']}\n" + head
        return Wire(event["type"], head.encode() + b"data: " + data + b"\n\n", data.decode())


def sse(event: dict[str, Any]) -> bytes:
    """One Server-Sent Event (see ``Wire.of``)."""
    return Wire.of(event).sse


SSE_HEARTBEAT = b": heartbeat\n\n"


def ws(event: dict[str, Any]) -> str:
    return Wire.of(event).text
