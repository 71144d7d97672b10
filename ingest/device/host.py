"""Many device sessions in one process: the plain-Python heart of a connection actor.

Readings flow: protocol session -> ``_on_values`` (scaling and offset applied here, once, vectorised)
-> the tenant's BatchBuilder -> every ``batch_interval_ms`` a micro-batch -> the tenant's
BatchSender, which keeps it until the writer acknowledges the commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from ingest.core.aio import cancel_and_wait, wait_all
from ingest.core.batch import BatchBuilder, TextBuilder
from ingest.core.models import GAP_QUALITY, ConnectionSpec, Protocol
from ingest.device.gap_check import SessionStartGaps
from ingest.device.host_running import Running, connection_status
from ingest.device.host_takeover import HostTakeovers, LastTimes
from ingest.device.sender import BatchSender
from ingest.device.session_inputs import Scaler
from ingest.device.sessions import DeviceSession, make_session
from ingest.device.takeover import TakeoverHooks, TakeoverStore

log = logging.getLogger(__name__)


SenderFactory = Callable[[ConnectionSpec], BatchSender]
FAILED = "failed"
IDLE = "idle"  # no tags: nothing to read, so no session (and no failure)
# How long OPC UA sessions starting on a slot wait for the Modbus polls started before them to
# try their first read (2-7 ms when the loop is theirs; a device that does not answer costs this).
FIRST_POLLS_WAIT_S = 0.25
# A session passed on waits for its last values' commit (HostTakeovers.settler, 5 s at most),
# then drops its connection or, failing that, ends its session (3 s at most).
PASS_ON_TIMEOUT_S = 15.0


class ConnectionHost:
    def __init__(
        self,
        source: str,
        sender_factory: SenderFactory,
        *,
        session_factory: Callable[..., DeviceSession] | None = None,
        last_times: LastTimes | None = None,
        on_state_change: Callable[[ConnectionSpec, str, str | None], None] | None = None,
        on_gap_markers: Callable[[ConnectionSpec, int], None] | None = None,
        takeover_store: TakeoverStore | None = None,
    ) -> None:
        self.source = source
        self.epoch = uuid.uuid4().hex[:8]
        self._sender_factory = sender_factory
        self._session_factory = session_factory or make_session
        self._last_times = last_times
        self._on_state_change = on_state_change
        self._on_gap_markers = on_gap_markers  # e.g. the gaps metric; never breaks the data path
        self.gap_markers = 0
        self.passed_on = 0  # OPC UA subscriptions left on their server for a connection's next owner
        self.takeovers = HostTakeovers(f"{source}:{self.epoch}", takeover_store, last_times)
        self._tick_no = 0  # batches cut at tick n carry mark n (BatchSender.oldest_unacked_mark)
        self._running: dict[str, Running] = {}
        self._builders: dict[str, BatchBuilder] = {}
        self._text_builders: dict[str, TextBuilder] = {}
        self._senders: dict[str, BatchSender] = {}
        self.values_received = 0
        # Per connection, kept after its session stops: what benchmarks and audits count.
        self.delivered: dict[str, int] = {}
        self._rate_mark = (time.monotonic(), 0)
        self.values_per_s = 0.0

    # -- desired state ------------------------------------------------------------------------
    async def apply(self, specs: list[ConnectionSpec], pass_on: Collection[str] = ()) -> dict[str, Any]:
        """Run exactly these connections: start new ones, restart edited ones, stop the rest.
        Connections whose fingerprint did not change are not touched.

        ``pass_on``: connections that leave this host for another (a move, not a deletion):
        an OPC UA one leaves its subscription on the server for the next owner once what it
        handed over is committed and recorded (``OpcUaSession.pass_on``); ``passed_on`` in the
        answer lists those that did.

        Each connection starts on its own: one that cannot be built or started is marked FAILED
        with its reason and retried with backoff (``retry_failed``), and never keeps any other
        connection, of its tenant or another, from starting."""
        want = {s.connection_id: s for s in specs}
        started, kept = [], []
        failed: dict[str, str] = {}
        stopped = [
            cid for cid, r in self._running.items() if cid not in want or want[cid].fingerprint() != r.fingerprint
        ]
        left = await asyncio.gather(*(self._stop(c, pass_on=c in pass_on and c not in want) for c in stopped))
        passed_on = [c for c, ok in zip(stopped, left, strict=True) if ok]
        self.passed_on += len(passed_on)
        # Polls first: a moved Modbus poll loop reads at once, and the OPC UA sessions starting
        # beside it (floors, takeover, subscriptions: much work on this one loop) wait for those
        # first reads, at most FIRST_POLLS_WAIT_S.
        order = sorted(want.items(), key=lambda kv: kv[1].protocol is not Protocol.MODBUS)
        first_polls: list[asyncio.Event] = []
        for cid, spec in order:
            if cid in self._running:
                kept.append(cid)
                continue
            if spec.protocol is not Protocol.MODBUS and first_polls:
                await wait_all(first_polls, FIRST_POLLS_WAIT_S)
                first_polls = []
            self._running[cid] = r = Running(spec, spec.fingerprint(), None, None, started_at=time.time())
            self._launch(r)
            first_tick = getattr(r.session, "first_tick", None)  # a Modbus session's
            if isinstance(first_tick, asyncio.Event):
                first_polls.append(first_tick)
            if r.state == FAILED:
                failed[cid] = r.error or FAILED
            else:
                started.append(cid)
        return {"started": started, "stopped": stopped, "kept": kept, "failed": failed, "passed_on": passed_on}

    def retry_failed(self) -> list[str]:
        """Start again the connections that failed, once their backoff has passed."""
        now = time.monotonic()
        retried = []
        for cid, r in self._running.items():
            if r.state == FAILED and r.task is None and now >= r.retry_at:
                retried.append(cid)
                self._launch(r)
        return retried

    def _failed(self, r: Running, e: BaseException) -> None:
        r.failures += 1
        r.state, r.error = FAILED, f"{type(e).__name__}: {e}"[:500]
        r.last_error = r.error
        r.retry_at = time.monotonic() + r.backoff.next_delay()
        if self._on_state_change is not None:
            self._on_state_change(r.spec, FAILED, r.error)
        log.warning("connection %s (%s) failed: %s", r.spec.connection_id, r.spec.tenant_slug, r.error)

    def _launch(self, r: Running) -> None:
        if not r.spec.tags:
            r.session, r.task, r.state, r.error = None, None, IDLE, None
            return
        try:
            r.session = self._build(r)
        except Exception as e:
            r.session, r.task = None, None
            self._failed(r, e)
            return
        r.state, r.error = "connecting", None
        r.task = asyncio.create_task(self._run_session(r), name=f"session-{r.spec.connection_id}")

    async def _run_session(self, r: Running) -> None:
        assert r.session is not None
        try:
            await r.session.run()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the session gave up: FAILED, rebuilt after its backoff
            self._failed(r, e)
            r.task = None

    def _build(self, r: Running) -> DeviceSession:
        spec = r.spec
        tenant = spec.tenant_id
        if tenant not in self._builders:
            self._builders[tenant] = BatchBuilder(f"{self.source}/{spec.tenant_slug}", self.epoch)
            self._text_builders[tenant] = TextBuilder(f"{self.source}/{spec.tenant_slug}", self.epoch)
            sender = self._sender_factory(spec)
            sender.start()
            self._senders[tenant] = sender
        builder = self._builders[tenant]
        text_builder = self._text_builders[tenant]
        scale = Scaler(spec)
        cid = spec.connection_id

        def add_markers(tag_ids: np.ndarray, times: np.ndarray) -> None:
            n = int(tag_ids.shape[0])
            builder.append(tag_ids, times, np.full(n, np.nan), np.full(n, GAP_QUALITY, np.int32))
            self.gap_markers += n
            if self._on_gap_markers is not None and n:
                try:
                    self._on_gap_markers(spec, n)
                except Exception:
                    log.debug("gap marker hook failed", exc_info=True)

        # One check per connection start, kept across rebuilds after a failure: it covers the
        # time since the readings stored before this connection started here.
        if r.gaps is None and self._last_times is not None:
            last_times = self._last_times

            async def last_before(first: dict[int, int]) -> dict[int, int]:
                return await last_times(spec, first)

            r.gaps = SessionStartGaps(cid, [t.tag_id for t in spec.tags], last_before, add_markers)
            r.gap_task = asyncio.create_task(r.gaps.run(), name=f"gap-check-{cid}")
        gaps = r.gaps

        def on_values(tag_ids: np.ndarray, times: np.ndarray, values: np.ndarray, quality: np.ndarray) -> None:
            if gaps is not None:
                gaps.observe(tag_ids, times)
            builder.append(tag_ids, times, scale(tag_ids, values), quality)
            n = int(times.shape[0])
            self.values_received += n
            self.delivered[cid] = self.delivered.get(cid, 0) + n
            r.last_value_at = time.time()
            if r.first_value_at is None:
                r.first_value_at = r.last_value_at

        def on_state(state: str, error: str | None) -> None:
            if r.state == "connected" and state != "connected":
                r.down_since = time.monotonic()
            r.state, r.error = state, error
            if state == "connected":
                if r.connected_at is None:
                    r.connected_at = time.time()
                r.backoff.reset()
                r.ever_connected, r.last_error = True, None
            elif error is not None:
                r.last_error = error
            if self._on_state_change is not None:
                self._on_state_change(spec, state, error)

        def on_text(tag_ids: np.ndarray, times: np.ndarray, texts: list[str], quality: np.ndarray) -> None:
            text_builder.append(tag_ids, times, texts, quality)
            n = len(texts)
            self.values_received += n
            self.delivered[cid] = self.delivered.get(cid, 0) + n
            r.last_value_at = time.time()

        def on_gap(tag_ids: np.ndarray, from_us: np.ndarray, to_us: np.ndarray) -> None:
            # The device session knows readings between from and to are gone (count unknown).
            add_markers(tag_ids, from_us + 1)

        takeover = self._takeover_hooks(r) if spec.protocol is Protocol.OPCUA else None
        return self._session_factory(spec, on_values, on_state, on_text, on_gap, takeover)

    def _committed_mark(self, tenant_id: str) -> int:
        """The newest tick whose batches of this tenant are all committed."""
        sender = self._senders.get(tenant_id)
        oldest = sender.oldest_unacked_mark if sender is not None else None
        return self._tick_no if oldest is None else oldest - 1

    def _takeover_hooks(self, r: Running) -> TakeoverHooks:
        gaps = r.gaps
        r.ledger, hooks = self.takeovers.hooks(
            r.spec,
            r.fingerprint,
            lambda: self._tick_no + 1,
            self._committed_marks(r),
            ran_here=bool(self.delivered.get(r.spec.connection_id)),
            stand_down=gaps.stand_down if gaps is not None else None,
        )
        return hooks

    async def record_takeovers(self) -> None:
        """Every few ticks: what is committed, recorded in one pipeline; only then acknowledged."""
        self._advance_ledgers()
        await self.takeovers.record([r.ledger for r in self._running.values() if r.ledger is not None])

    async def _stop(self, cid: str, *, pass_on: bool = False) -> bool:
        """Stop a connection's session; with ``pass_on``, leave its subscription to the next
        owner where it can be (True if it was)."""
        r = self._running.pop(cid)
        await cancel_and_wait(r.gap_task)
        passed = False
        if r.session is not None:
            leave = getattr(r.session, "pass_on", None) if pass_on else None
            try:
                if leave is not None and r.ledger is not None:
                    settle = self.takeovers.settler(r.ledger, lambda: self._tick_no + 1, self._committed_marks(r))
                    passed = bool(await asyncio.wait_for(leave(settle), PASS_ON_TIMEOUT_S))
                else:
                    await asyncio.wait_for(r.session.stop(), 10)
            except Exception:
                log.warning("session %s did not stop cleanly", cid, exc_info=True)
        if r.task is not None:
            r.task.cancel()
            try:
                await r.task
            except BaseException:  # noqa: BLE001 - a cancelled or failed session is gone either way
                pass
        return passed

    def _committed_marks(self, r: Running) -> Callable[[], int]:
        return lambda: self._committed_mark(r.spec.tenant_id)

    # -- batching -----------------------------------------------------------------------------
    def tick(self) -> int:
        """Cut every tenant's collected readings into a batch and hand it to its sender."""
        rows = 0
        self._tick_no += 1
        for tenant, builder in self._builders.items():
            batch = builder.cut()
            if batch is not None:
                self._senders[tenant].submit(batch, self._tick_no)
                rows += len(batch)
            text = self._text_builders[tenant].cut()
            if text is not None:
                self._senders[tenant].submit(text, self._tick_no)  # type: ignore[arg-type]
                rows += len(text)
        return rows

    def step(self) -> None:
        """One beat of the batch loop: cut batches, restart failed sessions whose backoff passed."""
        self.tick()
        self._advance_ledgers()
        self.retry_failed()

    def _advance_ledgers(self) -> None:
        """What the writer has committed since: acknowledgeable (once recorded, with a store)."""
        for r in self._running.values():
            if r.ledger is not None:
                r.ledger.advance(self._committed_mark(r.spec.tenant_id))

    def unacked_rows(self) -> int:
        return sum(s.unacked_rows for s in self._senders.values())

    async def drain(self, timeout_s: float) -> bool:
        self.tick()
        results = await asyncio.gather(*(s.drain(timeout_s) for s in self._senders.values()))
        return all(results)

    async def close(self) -> None:
        for cid in list(self._running):
            await self._stop(cid)
        self.tick()
        for s in self._senders.values():
            await s.stop()

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        t0, v0 = self._rate_mark
        if now - t0 >= 1.0:
            self.values_per_s = round((self.values_received - v0) / (now - t0), 1)
            self._rate_mark = (now, self.values_received)
        for cid, r in self._running.items():
            t1, n1 = r.rate_mark
            if now - t1 >= 1.0:
                done = self.delivered.get(cid, 0)
                r.values_per_s = round((done - n1) / (now - t1), 1) if t1 else 0.0
                r.rate_mark = (now, done)
        return {
            "values_per_s": self.values_per_s,
            "epoch": self.epoch,
            "values_received": self.values_received,
            "unacked_rows": self.unacked_rows(),
            "gap_markers": self.gap_markers,
            "passed_on": self.passed_on,
            "delivered": dict(self.delivered),
            "connections": {cid: connection_status(r, now) for cid, r in self._running.items()},
            "senders": {
                t: {
                    "acked_rows": s.acked_rows,
                    "retries": s.retries,
                    "gap_readings": s.gap_readings,
                    "last_error": s.last_error,
                }
                for t, s in self._senders.items()
            },
        }
