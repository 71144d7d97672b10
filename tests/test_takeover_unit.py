"""The pieces a takeover rests on, one class at a time: the acknowledgement ledger, the sender's
commit marks, the stream's floors and the gap causes (the whole, against real servers, is
``test_takeover.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from asyncua import ua

from ingest.core.batch import ReadingBatch
from ingest.core.order import Place
from ingest.device import opcua_service as svc
from ingest.device.host_takeover import HostTakeovers
from ingest.device.opcua_stream import NotificationStream
from ingest.device.opcua_values import GAP_CAUSES, GapTracker, Readings
from ingest.device.sender import BatchSender
from ingest.device.takeover import AckLedger, TakeoverRecord


def _ledger(mark: list[int], recorded: bool = True) -> AckLedger:
    return AckLedger("c1", "fp", "opc.tcp://x", "conn-a:1", lambda: mark[0], recorded=recorded)


def test_a_message_is_acknowledged_only_once_committed_and_recorded() -> None:
    mark = [1]
    ledger = _ledger(mark)
    ledger.subscribed(7, 50.0, 20, next_seq=1, server_start_us=123)
    ledger.delivered(1)
    ledger.delivered(2)
    mark[0] = 2
    ledger.delivered(3)
    assert ledger.ackable(7) == 0
    ledger.advance(1)  # tick 1 committed: messages 1 and 2
    assert ledger.committed_through == 2 and ledger.ackable(7) == 0  # not recorded yet
    rec = ledger.pending_record()
    assert rec is not None and (rec.subscription_id, rec.acked_through, rec.server_start_us) == (7, 2, 123)
    ledger.saved(rec)
    assert ledger.ackable(7) == 2 and ledger.ackable(8) == 0  # another subscription: nothing
    assert ledger.pending_record() is None  # nothing new to say
    ledger.advance(2)
    assert ledger.committed_through == 3 and ledger.ackable(7) == 2
    assert TakeoverRecord.from_json(rec.to_json()) == rec


def test_without_a_store_committed_is_enough_and_a_new_subscription_starts_over() -> None:
    mark = [1]
    ledger = _ledger(mark, recorded=False)
    ledger.subscribed(7, 50.0, 20, next_seq=1, server_start_us=None)
    ledger.delivered(1)
    ledger.advance(1)
    assert ledger.ackable(7) == 1
    ledger.subscribed(9, 50.0, 20, next_seq=41, server_start_us=None)  # taken over at 40
    assert ledger.ackable(9) == 40 and ledger.ackable(7) == 0


class _Store:
    """Takeover records in a dict (``TakeoverStore``'s two calls); ``down`` makes saving fail."""

    def __init__(self) -> None:
        self.records: dict[str, TakeoverRecord] = {}
        self.down = False

    async def load(self, connection_id: str) -> TakeoverRecord | None:
        return self.records.get(connection_id)

    async def save(self, records: list[TakeoverRecord]) -> None:
        if self.down:
            raise ConnectionError("redis away")
        self.records.update({r.connection_id: r for r in records})


async def test_a_session_is_passed_on_once_what_it_delivered_is_committed_and_recorded() -> None:
    store = _Store()
    takeovers = HostTakeovers("conn-a:1", store, None)  # type: ignore[arg-type]
    tick, committed = [5], [3]
    ledger = _ledger(tick)
    ledger.subscribed(7, 50.0, 20, next_seq=1, server_start_us=None)
    ledger.delivered(1)
    ledger.delivered(2)  # both ride on tick 5's batch
    settle = takeovers.settler(ledger, lambda: tick[0] + 1, lambda: committed[0])
    waiting = asyncio.create_task(settle())
    await asyncio.sleep(0.1)
    assert not waiting.done() and "c1" not in store.records  # tick 6 not committed yet
    committed[0] = 6
    assert await waiting is True
    assert store.records["c1"].acked_through == 2 and store.records["c1"].subscription_id == 7


async def test_a_session_is_not_passed_on_without_a_record_of_its_subscription(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ingest.device.host_takeover as ht

    monkeypatch.setattr(ht, "SETTLE_WAIT_S", 0.2)
    store = _Store()
    takeovers = HostTakeovers("conn-a:1", store, None)  # type: ignore[arg-type]
    ledger = _ledger([1])
    ledger.subscribed(7, 50.0, 20, next_seq=1, server_start_us=None)
    ledger.delivered(1)
    # Never committed: ended as a plain stop would end it.
    assert await takeovers.settler(ledger, lambda: 2, lambda: 1)() is False
    # Committed, but Redis away and no earlier record: the next owner could not find it.
    store.down = True
    assert await takeovers.settler(ledger, lambda: 2, lambda: 2)() is False
    # An earlier record of the same subscription is enough (the next owner Republishes more).
    store.down = False
    await takeovers.record([ledger])
    ledger.delivered(2)
    store.down = True
    assert await takeovers.settler(ledger, lambda: 3, lambda: 3)() is True
    # No store at all: nobody could take it over.
    assert await HostTakeovers("conn-a:1", None, None).settler(ledger, lambda: 3, lambda: 3)() is False


def _batch(i: int) -> ReadingBatch:
    return ReadingBatch(
        f"b{i}", np.array([i], np.int64), np.array([1], np.int32), np.array([1.0]), np.zeros(1, np.int32)
    )


async def test_the_sender_says_up_to_which_mark_everything_is_committed() -> None:
    gates: dict[str, asyncio.Event] = {}

    async def send(b: ReadingBatch, _place: Place) -> None:
        await gates.setdefault(b.batch_id, asyncio.Event()).wait()

    sender = BatchSender(send, max_inflight=4)
    sender.start()
    try:
        assert sender.oldest_unacked_mark is None
        sender.submit(_batch(1), 1)
        sender.submit(_batch(2), 2)
        sender.submit(_batch(3), 2)
        await asyncio.sleep(0.05)
        assert sender.oldest_unacked_mark == 1
        gates["b2"].set()  # out of order: mark 1 still open
        await asyncio.sleep(0.05)
        assert sender.oldest_unacked_mark == 1
        gates["b1"].set()
        await asyncio.sleep(0.05)
        assert sender.oldest_unacked_mark == 2
        gates["b3"].set()
        await asyncio.sleep(0.05)
        assert sender.oldest_unacked_mark is None
    finally:
        await sender.stop()


def _stream(stats: dict[str, Any], got: list[Any]) -> NotificationStream:
    items = [svc.ItemSpec(h, ua.NodeId(f"T{h}", 2), 0.0, 10, True, None, 0.0) for h in range(3)]
    return NotificationStream(
        "opc.tcp://x",
        items,
        np.array([10, 11, 12], np.int32),
        lambda t, ts, v, q: got.append((t.tolist(), ts.tolist())),
        None,
        None,
        stats,
        history_backfill=False,
    )


def test_floors_drop_what_is_stored_and_bound_the_gaps() -> None:
    stats = {"duplicates_dropped": 0}
    stream = _stream(stats, [])
    stream.set_floors({10: 100, 12: 300})  # tag 11 has nothing stored
    r = Readings(
        np.array([0, 0, 1, 2, 2], np.int64),
        np.array([90, 110, 5, 300, 301], np.int64),
        np.zeros(5),
        np.zeros(5, np.uint32),
        np.zeros(5, np.bool_),
        [None] * 5,
    )
    kept = stream._above_floor(r)
    assert kept.times.tolist() == [110, 5, 301] and stats["duplicates_dropped"] == 2
    # A gap opened now starts where each tag's stored history ends.
    stream.gaps.open_all("subscription_gone")
    assert stream.gaps.gap_from.tolist()[0] == 100 and stream.gaps.gap_from.tolist()[2] == 300


def test_each_gap_remembers_why_it_opened() -> None:
    g = GapTracker(3)
    g.last_time[:] = [10, 20, 30]
    g.open_all("messages_unavailable")
    g.close(np.array([1]))
    g.open_all("server_restarted")
    assert [GAP_CAUSES[c] for c in g.cause] == ["messages_unavailable", "server_restarted", "messages_unavailable"]
    with pytest.raises(ValueError):
        g.open_all("no such cause")
