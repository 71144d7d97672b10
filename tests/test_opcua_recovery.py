"""OPC UA recovery: interruptions against the real asyncua simulator, counted value by value.

The simulator counts (each tag publishes 1, 2, 3, ...), so after a run every count a tag
published is either received exactly once or lies inside a gap the session reported for that
tag: ``from`` is the time of the last value received before it, ``to`` is at or before the first
value received after it, and no received value lies strictly inside a gap.
Timeouts below only keep a broken build from hanging; nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from ingest.core.net import free_port
from ingest.device.opcua import OpcUaSession, OpcUaTag
from ingest.simulators import OpcUaSimulator
from tests.helpers import SimProcess
from tests.test_opcua import Collector, tags_of, wait_until


class Gaps:
    """The on_gap callback: (from_us, to_us) intervals per tag."""

    def __init__(self) -> None:
        self.by_tag: dict[int, list[tuple[int, int]]] = defaultdict(list)

    def __call__(
        self,
        tag_ids: npt.NDArray[np.int32],
        from_us: npt.NDArray[np.int64],
        to_us: npt.NDArray[np.int64],
    ) -> None:
        assert tag_ids.dtype == np.int32 and from_us.dtype == to_us.dtype == np.int64
        assert (from_us < to_us).all()
        for t, a, b in zip(tag_ids.tolist(), from_us.tolist(), to_us.tolist(), strict=True):
            self.by_tag[t].append((a, b))

    def total(self) -> int:
        return sum(len(v) for v in self.by_tag.values())


def check_accounting(
    tags: list[OpcUaTag], got: Collector, gaps: Gaps, published: dict[str, int]
) -> dict[str, int]:
    """Every count 1..N of every tag: received once, or inside a reported gap. Returns totals."""
    missing_total = 0
    for t in tags:
        n = published[t.node_id]
        readings = got.readings[t.tag_id]
        assert all(q == 0 for _, _, q in readings), t.node_id
        counts = [(ts, int(v)) for ts, v, _ in readings if v >= 1]  # 0.0 is a start snapshot
        values = [c for _, c in counts]
        assert len(values) == len(set(values)), f"{t.node_id}: a count arrived twice"
        assert values == sorted(values), f"{t.node_id}: out of order"
        assert values and values[-1] == n, f"{t.node_id}: last count {values[-1:]} != {n}"
        times = [ts for ts, _, _ in readings]
        tag_gaps = gaps.by_tag.get(t.tag_id, [])
        for a, b in tag_gaps:  # nothing received lies inside a gap
            assert not any(a < ts < b for ts in times), f"{t.node_id}: value inside gap"
        previous = (None, 0)  # (time, count) of the last count received
        for ts, c in counts:
            if c > previous[1] + 1:
                assert previous[0] is not None, f"{t.node_id}: counts 1..{c - 1} never seen"
                frm = previous[0]
                assert any(a == frm and frm < b <= ts for a, b in tag_gaps), (
                    f"{t.node_id}: counts {previous[1] + 1}..{c - 1} lost without a gap"
                )
                missing_total += c - previous[1] - 1
            previous = (ts, c)
    return {"missing": missing_total, "gaps": gaps.total()}


class Run:
    """A session against ``endpoint`` with collectors for values and gaps."""

    def __init__(self, endpoint: str, tags: list[OpcUaTag], **kwargs: object) -> None:
        self.got = Collector()
        self.gaps = Gaps()
        self.states: list[tuple[str, str | None]] = []
        self.session = OpcUaSession(
            endpoint,
            tags,
            self.got,
            on_gap=self.gaps,
            on_state=lambda s, e: self.states.append((s, e)),
            reconnect_initial_s=0.2,
            reconnect_max_s=1.0,
            **kwargs,  # type: ignore[arg-type]
        )
        self.task = asyncio.create_task(self.session.run())

    def stat(self, name: str) -> int:
        return int(self.session.stats[name])

    async def close(self) -> None:
        await self.session.stop()
        await self.task


async def settle(sim: OpcUaSimulator, run: Run, tags: list[OpcUaTag]) -> dict[str, int]:
    """Stop publishing, let the session take everything in, return what was published."""
    await sim.pause()
    published = sim.published_per_node()

    def done() -> bool:
        return all(any(v == published[t.node_id] for _, v, _ in run.got.readings[t.tag_id][-3:]) for t in tags)

    await wait_until(done, "the last counts to arrive", 60)
    await sim.drain(5.0)
    await asyncio.sleep(0.3)  # a duplicate would show up now
    return published


async def restart(
    first: OpcUaSimulator, run: Run, make: Callable[[dict[str, int]], OpcUaSimulator]
) -> OpcUaSimulator:
    """Stop ``first`` abruptly (queued values die with it), start its successor."""
    await first.stop()
    await wait_until(lambda: run.session.stats["state"] != "connected", "the loss")
    await asyncio.sleep(1.0)  # long enough for the successor to publish before we resubscribe
    second = make(first.published_per_node())
    await second.start()
    return second


async def test_restart_without_history_reports_exact_gaps() -> None:
    port = free_port()

    def make(counts: dict[str, int] | None = None) -> OpcUaSimulator:
        return OpcUaSimulator(
            port=port,
            wells=1,
            tags_per_well=4,
            interval_ms=20,
            start_counts=counts,
            paused=counts is None,
        )

    first = make()
    await first.start()
    tags = tags_of(first)
    run = Run(first.endpoint, tags, publishing_interval_ms=200)
    second: OpcUaSimulator | None = None
    try:
        await wait_until(lambda: all(run.got.readings[t.tag_id] for t in tags), "snapshots")
        await first.resume()
        await wait_until(lambda: all(len(run.got.good(t.tag_id)) > 5 for t in tags), "values")
        second = await restart(first, run, make)
        await wait_until(lambda: run.stat("resubscribed") >= 1, "a new subscription")
        await asyncio.sleep(1.0)  # a window: values flow on the new subscription before the stop
        published = await settle(second, run, tags)
        totals = check_accounting(tags, run.got, run.gaps, published)
        # The successor published for a while before the session could subscribe again: those
        # counts are lost (no history), and said so, one gap per tag.
        assert totals["missing"] > 0
        assert run.stat("gaps") == run.gaps.total() == len(tags)
        assert run.stat("backfilled") == 0 and run.stat("resumed") == 0
    finally:
        await run.close()
        if second is not None:
            await second.stop()


async def test_restart_with_history_backfills_every_value(tmp_path: Path) -> None:
    port = free_port()
    history = tmp_path / "history.sqlite"

    def make(counts: dict[str, int] | None = None) -> OpcUaSimulator:
        return OpcUaSimulator(
            port=port,
            wells=1,
            tags_per_well=3,
            interval_ms=25,
            start_counts=counts,
            history_db=history,
            paused=counts is None,
        )

    first = make()
    await first.start()
    tags = tags_of(first)
    run = Run(first.endpoint, tags, publishing_interval_ms=200)
    second: OpcUaSimulator | None = None
    try:
        await wait_until(lambda: all(run.got.readings[t.tag_id] for t in tags), "snapshots")
        await first.resume()
        await wait_until(lambda: all(len(run.got.good(t.tag_id)) > 5 for t in tags), "values")
        second = await restart(first, run, make)
        await wait_until(lambda: run.stat("resubscribed") >= 1, "a new subscription")
        await asyncio.sleep(1.0)  # a window: values flow on the new subscription before the stop
        published = await settle(second, run, tags)
        totals = check_accounting(tags, run.got, run.gaps, published)
        assert totals == {"missing": 0, "gaps": 0}
        assert run.stat("backfilled") > 0  # what the session missed came from history
        for t in tags:  # every count exactly once, in order
            counts = [int(v) for _, v, _ in run.got.readings[t.tag_id] if v >= 1]
            assert counts == list(range(1, published[t.node_id] + 1))
    finally:
        await run.close()
        if second is not None:
            await second.stop()


async def test_dropped_connections_resume_the_same_subscription() -> None:
    sim = OpcUaSimulator(port=free_port(), wells=1, tags_per_well=5, interval_ms=20, paused=True)
    await sim.start()
    tags = tags_of(sim)
    run = Run(sim.endpoint, tags, publishing_interval_ms=100)
    try:
        await wait_until(lambda: all(run.got.readings[t.tag_id] for t in tags), "snapshots")
        await sim.resume()
        for i in range(1, 5):
            await asyncio.sleep(0.4)  # a window of streaming between two faults
            assert sim.drop_sessions() >= 1
            await wait_until(lambda i=i: run.stat("resumed") >= i, f"resume #{i}")  # type: ignore[misc]
        await asyncio.sleep(0.5)  # a window: values flow after the last fault before the stop
        published = await settle(sim, run, tags)
        totals = check_accounting(tags, run.got, run.gaps, published)
        assert totals == {"missing": 0, "gaps": 0}
        stats = run.session.stats
        assert stats["resumed"] == stats["reconnects"] == 4
        assert stats["resubscribed"] == 0 and stats["lost_messages"] == 0
        for t in tags:  # exactly once, the start snapshot included
            values = [v for _, v, _ in run.got.readings[t.tag_id]]
            assert values == [float(k) for k in range(published[t.node_id] + 1)]
    finally:
        await run.close()
        await sim.stop()


async def test_transfer_when_the_session_cannot_be_resumed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that cannot re-activate its session (here: it forgets the session token) moves
    the subscription to a new session with TransferSubscriptions, then Republishes."""
    from asyncua.client.ua_session import UaSession

    monkeypatch.setattr(UaSession, "rebind_authentication_token", UaSession.reset_authentication_token)
    sim = OpcUaSimulator(port=free_port(), wells=1, tags_per_well=3, interval_ms=20, paused=True)
    await sim.start()
    tags = tags_of(sim)
    run = Run(sim.endpoint, tags, publishing_interval_ms=100)
    try:
        await wait_until(lambda: all(run.got.readings[t.tag_id] for t in tags), "snapshots")
        await sim.resume()
        for i in range(1, 3):
            await asyncio.sleep(0.4)  # a window of streaming between two faults
            sim.drop_sessions()
            await wait_until(lambda i=i: run.stat("transferred") >= i, f"transfer #{i}")  # type: ignore[misc]
        await asyncio.sleep(0.5)  # a window: values flow after the last fault before the stop
        published = await settle(sim, run, tags)
        assert check_accounting(tags, run.got, run.gaps, published) == {"missing": 0, "gaps": 0}
        assert run.stat("resumed") == run.stat("resubscribed") == 0
    finally:
        await run.close()
        await sim.stop()


async def test_stalled_publishing_recycles_the_session() -> None:
    sim = OpcUaSimulator(port=free_port(), wells=1, tags_per_well=4, interval_ms=25, paused=True)
    await sim.start()
    tags = tags_of(sim)
    run = Run(sim.endpoint, tags, publishing_interval_ms=100)
    try:
        await wait_until(lambda: all(run.got.readings[t.tag_id] for t in tags), "snapshots")
        await sim.resume()
        await asyncio.sleep(0.5)  # a window of streaming before the freeze
        # Connected, but no publish response and no keep-alive: longer than the 5 s budget.
        sim.freeze(8.0)
        await wait_until(lambda: run.stat("reconnects") >= 1, "the stall to recycle", 30)
        errors = [e for s, e in run.states if s == "disconnected" and e]
        assert any("no publish response" in e for e in errors), errors
        await wait_until(lambda: not sim.frozen, "the thaw", 30)
        await asyncio.sleep(1.0)  # a window: values flow after the thaw before the stop
        published = await settle(sim, run, tags)
        totals = check_accounting(tags, run.got, run.gaps, published)
        # The server still held the session and its queues: the recycled session carried on.
        assert run.stat("resumed") >= 1
        assert totals["missing"] == 0 and run.gaps.total() == run.stat("gaps")
    finally:
        await run.close()
        await sim.stop()


async def test_five_thousand_items_on_one_connection() -> None:
    # 50 x 100 rather than 1 x 5000: asyncua adds a child to a parent in O(children). The server
    # (MaxMonitoredItemsPerCall 1000, enforced) runs in a process of its own: sharing this
    # process's loop, it starved the creation calls past the session's 10 s request timeout on a
    # loaded CI machine (each timeout reconnects and starts over; two CI runs timed out so).
    sim = SimProcess(wells=50, tags=100, interval_ms=1000)
    tags = [OpcUaTag(tag_id=1000 + i, node_id=n) for i, n in enumerate(sim.node_ids)]
    run = Run(sim.endpoint, tags, publishing_interval_ms=500)
    try:
        # Paused while the items are made, then a second value for each.
        await wait_until(lambda: all(run.got.readings[t.tag_id] for t in tags), "a snapshot from every tag", 180)
        sim.resume()
        await wait_until(
            lambda: all(len(run.got.readings[t.tag_id]) >= 2 for t in tags), "a count from every tag", 120
        )
        stats = run.session.stats
        # The server refuses a CreateMonitoredItems call of more than 1000 items whole
        # (BadTooManyOperations): every tag's snapshot came, so every call kept to the limit,
        # and 5,000 items took at least five calls (more when a connection was lost while they
        # were made and the next one made them again: a CI run counted ten).
        assert stats["failed_items"] == 0, stats
        assert stats["item_create_calls"] >= 5, stats
    finally:
        await run.close()
        sim.kill()


@pytest.mark.parametrize("unused", [None])
def test_accounting_helper_catches_a_silent_loss(unused: None) -> None:
    """The checker itself: a missing count without a gap fails it."""
    tags = [OpcUaTag(1, "ns=2;s=W001.T001")]
    got = Collector()
    got(
        np.array([1, 1, 1], dtype=np.int32),
        np.array([10, 20, 40], dtype=np.int64),
        np.array([1.0, 2.0, 4.0]),
        np.zeros(3, dtype=np.int32),
    )
    gaps = Gaps()
    with pytest.raises(AssertionError, match="lost without a gap"):
        check_accounting(tags, got, gaps, {"ns=2;s=W001.T001": 4})
    gaps(np.array([1], np.int32), np.array([20], np.int64), np.array([40], np.int64))
    assert check_accounting(tags, got, gaps, {"ns=2;s=W001.T001": 4}) == {"missing": 1, "gaps": 1}
