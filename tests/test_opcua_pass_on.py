"""An OPC UA session passed on from one owner to the next, against the real asyncua simulator.

The first owner stops publishing, waits until what it handed over is committed and recorded,
and leaves its subscription on the server (no CloseSession); the next takes the subscription over
(TransferSubscriptions, then Republish of what the first never acknowledged) and drops what the
first had stored against the floors. Every count then arrives exactly once across the two, with
no gap. The ledger, the host's settler and the sessions are the real ones; an owner's "commit" is
its collector (no database), and the record store keeps its records in a dict instead of Redis.
"""

from __future__ import annotations

import asyncio
import contextlib

from ingest.core.net import free_port
from ingest.device.host_takeover import HostTakeovers
from ingest.device.opcua import OpcUaSession, OpcUaTag
from ingest.device.takeover import AckLedger, TakeoverHooks, TakeoverRecord
from ingest.simulators import OpcUaSimulator
from tests.test_opcua import Collector, tags_of, wait_until
from tests.test_opcua_recovery import Gaps


class DictStore:
    """``TakeoverStore``'s two calls over a dict."""

    def __init__(self) -> None:
        self.records: dict[str, TakeoverRecord] = {}

    async def load(self, connection_id: str) -> TakeoverRecord | None:
        return self.records.get(connection_id)

    async def save(self, records: list[TakeoverRecord]) -> None:
        self.records.update({r.connection_id: r for r in records})


class Owner:
    """One owner of connection ``c1``: what its session delivers is committed at the next tick
    (every 100 ms), then recorded, as a connection host does with its writer and Redis."""

    def __init__(self, name: str, endpoint: str, tags: list[OpcUaTag], store: DictStore, floors: dict[int, int]):
        self.got = Collector()
        self.gaps = Gaps()
        self.tick = 0
        self.takeovers = HostTakeovers(name, store, None)  # type: ignore[arg-type]
        self.ledger = AckLedger("c1", "fp", endpoint, name, lambda: self.tick + 1, recorded=True)

        async def newest_stored() -> dict[int, int]:
            return floors

        hooks = TakeoverHooks(self.ledger, lambda: store.load("c1"), newest_stored)
        self.session = OpcUaSession(
            endpoint, tags, self.got, on_gap=self.gaps, publishing_interval_ms=100, takeover=hooks
        )
        self.run = asyncio.create_task(self.session.run())
        self.ticker = asyncio.create_task(self._ticks())

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.tick += 1
            self.ledger.advance(self.tick)
            await self.takeovers.record([self.ledger])

    def stat(self, name: str) -> int:
        return int(self.session.stats[name])

    async def pass_on(self) -> bool:
        settle = self.takeovers.settler(self.ledger, lambda: self.tick + 1, lambda: self.tick)
        passed = await self.session.pass_on(settle)
        await self.close()
        return passed

    async def close(self) -> None:
        await self.session.stop()
        for task in (self.run, self.ticker):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def subscriptions(sim: OpcUaSimulator) -> int:
    """How many subscriptions the server holds (asyncua has no public view of it)."""
    server = sim._server  # noqa: SLF001
    return len(server.iserver.subscription_service.subscriptions) if server is not None else 0


def counts(owner: Owner, tag: OpcUaTag) -> list[int]:
    return [int(v) for _, v, q in owner.got.readings[tag.tag_id] if q == 0 and v >= 1]


async def test_a_session_passed_on_is_carried_on_by_the_next_owner_without_a_gap() -> None:
    sim = OpcUaSimulator(port=free_port(), wells=1, tags_per_well=3, interval_ms=20, paused=True)
    await sim.start()
    tags = tags_of(sim)
    store = DictStore()
    first = Owner("conn-a:1", sim.endpoint, tags, store, floors={})
    second: Owner | None = None
    try:
        await wait_until(lambda: all(first.got.readings[t.tag_id] for t in tags), "snapshots")
        await sim.resume()
        await wait_until(lambda: all(len(counts(first, t)) > 20 for t in tags), "values")
        assert await first.pass_on() is True
        assert first.stat("passed_on") == 1 and subscriptions(sim) == 1  # left on the server
        record = store.records["c1"]
        # The server keeps publishing into the subscription nobody asks for now.
        await asyncio.sleep(0.5)
        floors = {t.tag_id: max(ts for ts, _, _ in first.got.readings[t.tag_id]) for t in tags}
        second = Owner("conn-b:1", sim.endpoint, tags, store, floors=floors)
        await wait_until(lambda: second.stat("transferred") >= 1, "the subscription taken over")
        await wait_until(lambda: all(len(counts(second, t)) > 20 for t in tags), "values after the takeover")
        await sim.pause()
        published = sim.published_per_node()
        await wait_until(
            lambda: all(counts(second, t)[-1:] == [published[t.node_id]] for t in tags), "the last counts"
        )
        await asyncio.sleep(0.3)  # a duplicate would show up now
        print(
            {"record": record, **{k: second.stat(k) for k in ("transferred", "republished", "duplicates_dropped")}}
        )
        assert second.stat("takeover_attempts") == 1 and second.stat("resubscribed") == 0
        for t in tags:
            both = counts(first, t) + counts(second, t)
            assert both == list(range(1, published[t.node_id] + 1)), t.node_id  # once each, in order
        assert first.gaps.total() == second.gaps.total() == second.stat("gaps") == 0
    finally:
        await first.close()
        if second is not None:
            await second.close()
        await sim.stop()


async def test_a_session_not_committed_is_ended_not_passed_on() -> None:
    """If what it handed over cannot be confirmed committed, the subscription is deleted with
    the session (CloseSession), so no next owner carries on from history not stored yet."""
    sim = OpcUaSimulator(port=free_port(), wells=1, tags_per_well=2, interval_ms=50, paused=True)
    await sim.start()
    tags = tags_of(sim)
    owner = Owner("conn-a:1", sim.endpoint, tags, DictStore(), floors={})
    try:
        await wait_until(lambda: all(owner.got.readings[t.tag_id] for t in tags), "snapshots")

        async def never() -> bool:
            return False

        assert await owner.session.pass_on(never) is False
        assert owner.stat("passed_on") == 0
        await wait_until(lambda: not subscriptions(sim), "the subscription deleted with its session")
    finally:
        await owner.close()
        await sim.stop()
