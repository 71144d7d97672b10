"""Live values, the pure parts: stream ids, entries and their filtering, conflation in the
subscriber queue, holding the feed during a catch-up, and the SSE / WebSocket encodings."""

from __future__ import annotations

import orjson
import pytest

from ingest.live.events import Entry, conflate, parse_id, sse, update_event, ws
from ingest.live.queue import SubscriberQueue


def entry(n: int, values: list[tuple[int, int, float | None, int]], commit_us: int = 0) -> Entry:
    sid = f"1700000000{n:03d}-0"
    return Entry.from_redis(sid.encode(), {b"c": str(commit_us).encode(), b"v": orjson.dumps(values)})


def test_stream_ids_compare_as_numbers_and_bad_ones_are_refused() -> None:
    assert parse_id("9-1") < parse_id("10-0") < parse_id("10-1")
    for bad in ("", "1", "1-", "-1", "1-x", "1-2-3", "$", "+", "0-0 "):
        with pytest.raises(ValueError):
            parse_id(bad)


def test_entry_filter_keeps_only_the_watched_tags() -> None:
    e = entry(1, [(1, 10, 1.0, 0), (2, 10, None, 0), (3, 10, 3.0, 192)], commit_us=99)
    assert e.commit_us == 99 and e.values[1][2] is None
    assert e.only(None) is e
    only = e.only(frozenset({2, 3}))
    assert only is not None and [v[0] for v in only.values] == [2, 3] and only.id == e.id
    assert e.only(frozenset({7})) is None


def test_conflation_keeps_the_newest_value_per_tag_and_the_last_id() -> None:
    a = entry(1, [(1, 10, 1.0, 0), (2, 10, 2.0, 0)], 5)
    b = entry(2, [(1, 20, 1.5, 0)], 7)
    c = entry(3, [(2, 15, 2.5, 0), (1, 12, 9.0, 0)], 6)  # tag 1's reading at 12 is older than 20
    m = conflate([a, b, c])
    assert m.id == c.id and m.commit_us == 7
    assert sorted(m.values) == [(1, 20, 1.5, 0), (2, 15, 2.5, 0)]


def test_queue_overflow_conflates_counts_and_tells_the_consumer() -> None:
    counted: list[int] = []
    q = SubscriberQueue(None, max_entries=4, max_lag_s=30, on_conflated=counted.append)
    for n in range(1, 11):
        q.offer(entry(n, [(n % 3, n, float(n), 0)]))
    entries, skipped = q.take()
    assert skipped == sum(counted) > 0 and len(entries) <= 4
    # Nothing lost: the newest value of every tag is there, and the last id.
    newest: dict[int, float | None] = {}
    for e in entries:
        for v in e.values:
            newest[v[0]] = v[2]
    assert newest == {1: 10.0, 2: 8.0, 0: 9.0}
    assert entries[-1].id == entry(10, []).id
    # Below the bound nothing is conflated.
    q.offer(entry(11, [(1, 11, 11.0, 0)]))
    assert q.take() == ([entry(11, [(1, 11, 11.0, 0)])], 0)


def test_sustained_lag_closes_and_a_short_one_does_not() -> None:
    now = [0.0]
    q = SubscriberQueue(None, max_entries=2, max_lag_s=10, clock=lambda: now[0])
    for n in range(1, 5):
        q.offer(entry(n, [(1, n, 1.0, 0)]))
    q.take()  # conflated since the last take: lag goes on
    now[0] = 5.0
    q.take()  # caught up without conflating: the lag was short
    for n in range(5, 9):
        q.offer(entry(n, [(1, n, 1.0, 0)]))
    now[0] = 14.0
    for n in range(9, 12):
        q.offer(entry(n, [(1, n, 1.0, 0)]))
    assert q.closed is None  # lagging since t=5 only (9 s)
    now[0] = 16.0
    for n in range(12, 15):
        q.offer(entry(n, [(1, n, 1.0, 0)]))
    assert q.closed == "lagging" and len(q) == 0


def test_catch_up_while_held_then_release_sends_each_id_once_in_order() -> None:
    q = SubscriberQueue(frozenset({1}), max_entries=100)
    q.cursor = parse_id(entry(1, []).id)
    q.hold()
    q.offer(entry(4, [(1, 4, 4.0, 0)]))  # the feed, running ahead during the catch-up read
    for n in (2, 3, 4):
        q.catch_up(entry(n, [(1, n, float(n), 0), (2, n, 0.0, 0)]))
    q.release()
    q.offer(entry(3, [(1, 3, 3.0, 0)]))  # a late duplicate
    q.offer(entry(5, [(2, 5, 5.0, 0)]))  # another tag only: advances nothing the client sees
    entries, _ = q.take()
    assert [e.id for e in entries] == [entry(n, []).id for n in (2, 3, 4)]
    assert all(v[0] == 1 for e in entries for v in e.values)


def test_event_encodings() -> None:
    e = entry(7, [(1, 10, float("nan"), 0)], 42)
    ev = update_event(e)
    text = sse(ev).decode()
    assert text.startswith(f"id: {e.id}\nevent: update\ndata: ") and text.endswith("\n\n")
    data = orjson.loads(text.split("data: ", 1)[1])
    assert data == {
        "type": "update",
        "id": e.id,
        "commit_us": 42,
        "values": [{"tag_id": 1, "t_us": 10, "value": None, "quality": 0}],
        "every": False,
    }
    assert orjson.loads(ws(ev)) == data
    assert "id:" not in sse({"type": "reset", "reason": "trimmed"}).decode()


def test_what_subscribers_share_of_an_entry_is_derived_once_and_equals_the_plain_encoding() -> None:
    e = entry(8, [(1, 10, 1.0, 0), (2, 11, 2.0, 0), (3, 12, 3.0, 192)], 5)
    well = frozenset({1, 2})
    a, b = SubscriberQueue(frozenset(well)), SubscriberQueue(frozenset({2, 1}))  # equal filters
    a.offer(e)
    b.offer(e)
    (ea,), _ = a.take()
    (eb,), _ = b.take()
    assert ea is eb and ea.wire() is eb.wire()  # one filtering, one encoding for both
    assert ea.wire().sse == sse(update_event(ea)) and ea.wire().text == ws(update_event(ea))
    assert [v[0] for v in ea.values] == [1, 2]
    every = Entry.from_redis(
        b"1700000000009-0", {b"c": b"1", b"v": orjson.dumps([[1, 1, 1.0, 0], [1, 2, 2.0, 0]]), b"a": b"1"}
    )
    assert every.last_per_tag() is every.last_per_tag() and every.last_per_tag().values == ((1, 2, 2.0, 0),)
