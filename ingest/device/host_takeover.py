"""The connection host's side of ``ingest.device.takeover``: a ledger per OPC UA connection,
the floors a new session reads before it starts, and the records saved for the next owner."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ingest.core.backoff import Backoff
from ingest.core.models import ConnectionSpec
from ingest.device.takeover import AckLedger, TakeoverHooks, TakeoverRecord, TakeoverStore

log = logging.getLogger(__name__)

# The newest stored time (µs) of each tag before a given time: the session-start gap check's query.
LastTimes = Callable[[ConnectionSpec, dict[int, int]], Awaitable[dict[int, int]]]
FAR_FUTURE_US = 2**55  # (the year 3112) "before" bound asking for the newest stored time of each tag
FLOORS_WAIT_S = 10.0  # how long a new OPC UA session waits for them before starting without
SETTLE_WAIT_S = 5.0  # how long a session passed on waits for its last values' commit


async def _committed(mark: int, committed_mark: Callable[[], int], deadline: float) -> bool:
    """Wait until every batch up to tick ``mark`` is committed, or the loop's clock passes
    ``deadline``; True if committed."""
    loop = asyncio.get_running_loop()
    while committed_mark() < mark:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


class HostTakeovers:
    def __init__(self, owner: str, store: TakeoverStore | None, last_times: LastTimes | None) -> None:
        self.owner = owner
        self.store = store
        self._last_times = last_times
        self.save_failures = 0

    def hooks(
        self,
        spec: ConnectionSpec,
        fingerprint: str,
        next_mark: Callable[[], int],
        committed_mark: Callable[[], int],
        *,
        ran_here: bool,
        stand_down: Callable[[], None] | None,
    ) -> tuple[AckLedger, TakeoverHooks]:
        """What an OPC UA session needs to carry on the subscription a previous owner left, and
        to acknowledge a message only once it is committed. ``next_mark``: the batch tick that
        will carry what is handed over now; ``committed_mark``: the newest tick of the tenant
        all committed; ``ran_here``: an earlier session of this connection ran on this host;
        ``stand_down``: the host's own session-start gap check, told once floors are known."""
        store, last_times = self.store, self._last_times
        ledger = AckLedger(
            spec.connection_id, fingerprint, spec.endpoint, self.owner, next_mark, recorded=store is not None
        )

        async def load() -> TakeoverRecord | None:
            if store is None:
                return None
            rec = await store.load(spec.connection_id)
            if rec is None or (rec.fingerprint, rec.endpoint) != (fingerprint, spec.endpoint):
                return None  # none, or the connection was edited since: nothing to carry on
            return rec

        async def newest_stored() -> dict[int, int] | None:
            if last_times is None:
                return None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + FLOORS_WAIT_S
            if ran_here:
                # What the earlier session handed over must be committed first, or the floors
                # would miss it.
                await _committed(next_mark(), committed_mark, deadline)
            backoff = Backoff(0.05, 0.25)  # the writer holds older rows of these tags: briefly
            while True:
                try:
                    newest = await last_times(spec, {t.tag_id: FAR_FUTURE_US for t in spec.tags})
                    if stand_down is not None:
                        stand_down()  # the session bounds and reports its own gaps now
                    return newest
                except Exception as e:  # writer or database away: retried, then started without
                    log.info("connection %s: stored times not known yet: %s", spec.connection_id, type(e).__name__)
                if loop.time() >= deadline:
                    log.warning("connection %s: starting without stored times", spec.connection_id)
                    return None
                await asyncio.sleep(backoff.next_delay())

        return ledger, TakeoverHooks(ledger, load, newest_stored)

    def settler(
        self, ledger: AckLedger, next_mark: Callable[[], int], committed_mark: Callable[[], int]
    ) -> Callable[[], Awaitable[bool]]:
        """For ``OpcUaSession.pass_on``, called once the session has stopped publishing: waits
        until everything it handed over is committed (the next batch tick carries the last of
        it), then records how far that is. True when the next owner may carry on the
        subscription: committed, and a record of this subscription saved (now or before; an
        older one only makes the next owner Republish more and drop it against the floors)."""
        store = self.store

        async def settle() -> bool:
            if store is None:
                return False
            deadline = asyncio.get_running_loop().time() + SETTLE_WAIT_S
            if not await _committed(next_mark(), committed_mark, deadline):
                log.warning("connection %s: last values not committed; not passed on", ledger.connection_id)
                return False
            ledger.advance(committed_mark())
            await self.record([ledger])
            return ledger.has_record()

        return settle

    async def record(self, ledgers: list[AckLedger]) -> None:
        """Save what the ledgers have new to say, in one pipeline; only then may it be
        acknowledged. With Redis away nothing is acknowledged until it is back."""
        store = self.store
        if store is None:
            return
        records = [rec for rec in (ledger.pending_record() for ledger in ledgers) if rec is not None]
        if not records:
            return
        try:
            await store.save(records)
        except Exception as e:
            self.save_failures += 1
            if self.save_failures % 100 == 1:
                log.warning("takeover records not saved (%d times): %s", self.save_failures, e)
            return
        by_id = {ledger.connection_id: ledger for ledger in ledgers}
        for rec in records:
            by_id[rec.connection_id].saved(rec)
