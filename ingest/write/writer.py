"""The per-tenant writer: merges micro-batches and lands them exactly once with binary COPY.

A flush validates the new readings, then writes one ledger row per batch id and the COPY of the
kept rows in one transaction (ingest.write.commit). A batch whose id the ledger already holds was
committed before (a resend after a lost acknowledgement) and is acknowledged without being written
again. ``write`` returns only once its batch is committed, durably spooled or quarantined, so the
sender knows when it may forget it. String readings (TextBatch) take the same path.

One task, the flush loop, owns the database connection: it alone opens transactions on it,
replaces it when the database fails, and is cancelled before ``stop`` closes it. Text batches are
queued like numeric ones rather than given a connection or a lock of their own, because sharing
the loop is what makes their ledger row and rows commit with the flush they ride in, lets them be
spooled and drained in order while the database is away, and leaves one place where the
connection can be in a transaction, so none can ever be opened inside another (issue 17).

While the database is away, or a move holds the writer (``hold``/``release``), batches go to the
durable spool (ingest.write.spool) and every new batch follows them there, so the spool drains in
order when the database returns (or into the new one); drain attempts back off exponentially
(capped) meanwhile. A batch the database refuses for good is isolated from its flush-mates and
quarantined; the rest keep flowing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncpg

from ingest.core.aio import cancel_and_wait
from ingest.core.backoff import Backoff
from ingest.core.batch import Batch, ReadingBatch, TextBatch
from ingest.core.errors import (
    BatchRejected,
    IngestError,
    OutOfOrder,
    SpoolFull,
    SpoolUnavailable,
    StorageError,
    StorageUnavailable,
)
from ingest.core.models import GAP_QUALITY
from ingest.core.order import Place
from ingest.write.commit import commit_flush
from ingest.write.queue import Pending, WriteQueue, WriteResult
from ingest.write.stats import WriterStats

if TYPE_CHECKING:
    from ingest.write.fanout import RedisFanout
    from ingest.write.spool import Quarantine, RedisSpool
    from ingest.write.validation import Validator

log = logging.getLogger(__name__)


OnCommit = Callable[[ReadingBatch, float], None]
OnEvent = Callable[[str, int], None]


class TenantWriter:
    def __init__(
        self,
        dsn: str,
        *,
        flush_rows: int = 20_000,
        flush_interval_ms: int = 100,
        prompt_gap_ms: float = 0.0,
        spool: RedisSpool | None = None,
        quarantine: Quarantine | None = None,
        validator: Validator | None = None,
        fanout: RedisFanout | None = None,
        on_commit: OnCommit | None = None,
        on_event: OnEvent | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 15.0,
    ) -> None:
        self._dsn = dsn
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_ms / 1000.0
        self.prompt_gap_s = prompt_gap_ms / 1000.0
        self._flush_started = float("-inf")  # loop time when the last flush began
        self.spool = spool
        self.quarantine = quarantine
        self.validator = validator
        self.fanout = fanout
        self._on_commit = on_commit
        self._on_event = on_event
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)  # between drain attempts
        self._next_drain = 0.0
        self.queue = WriteQueue()  # what callers wait on; each sender's batches settle in order
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.stats = WriterStats()
        # A move (ingest.store.move) holds the writer: every batch goes to the spool, nothing
        # commits or drains, until release() names the database to drain into.
        self._held = False
        self._hold_acks: list[asyncio.Future[None]] = []
        self._reconnect = False
        # Bookkeeping of a committed flush (latency, fan-out, metrics) held for the next flush's
        # COPY when that flush follows at once: it then runs while the server copies, instead of
        # between the two transactions, where the database would wait for it.
        self._deferred: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.spool is not None:
            # A spool left by a previous incarnation (killed actor, other node) drains first.
            self.stats.spool_rows = await self.spool.rows()
        if self.fanout is not None:
            self.fanout.start()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="writer-flush")

    async def stop(self) -> None:
        # The flush task goes first: only then is nobody in a transaction on the connection.
        await cancel_and_wait(self._task)
        self._task = None
        self._run_deferred()  # the last flush's fan-out and figures
        # Never acknowledged, so their senders keep them and resend (harmless if the cancelled
        # flush had committed them: the ledger knows their ids).
        self.queue.fail_all(StorageUnavailable("writer stopped"))
        for ack in self._hold_acks:  # a hold waiting on the stopped loop
            if not ack.done():
                ack.set_exception(StorageUnavailable("writer stopped"))
        self._hold_acks = []
        if self.fanout is not None:
            await self.fanout.stop()
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def write_text(self, batch: TextBatch) -> WriteResult:
        """String readings: queued, committed, spooled and quarantined like numeric ones."""
        return await self.write(batch)

    async def write(self, batch: Batch, prompt: bool = False, place: Place | None = None) -> WriteResult:
        """Queue a batch and wait until it is committed, spooled or quarantined.

        A batch waits for the next flush: at ``flush_rows`` pending, or ``flush_interval_ms``
        after the last one (a device's small batches cost a transaction a tick). ``prompt``
        (an HTTP push waits on the answer): flush when the loop is free, but not sooner than
        ``prompt_gap_ms`` after the previous flush started. Under load that is a group commit;
        a whole tick there would cap a client that sends its next batch after the answer at a
        batch per tick, and no gap at all cost lighter loads a transaction per batch.

        ``place``: where the batch stands among its sender's; refused with OutOfOrder while an
        older unacknowledged one of them is neither settled nor queued here (ingest.core.order)."""
        if self._task is None:
            raise StorageUnavailable("writer is not running")
        try:
            fut = self.queue.add(batch, place)
        except OutOfOrder:
            self.stats.out_of_order += 1
            raise
        if prompt or self.queue.rows >= self.flush_rows:
            self._wake.set()
        return await fut

    async def hold(self) -> None:
        """Spool every batch from now on and commit nothing until ``release``; returns once the
        flush loop is between flushes, so no transaction on the database is open or to come.
        Batches keep being acknowledged (as spooled), so senders never wait on a move."""
        if self.spool is None or self._task is None:
            raise StorageUnavailable("the writer is not running with a spool: it cannot be held")
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._hold_acks.append(ack)
        self._held = True
        self._wake.set()
        await ack

    def release(self, dsn: str | None = None) -> None:
        """End a hold: drain the spool, in order, into ``dsn`` (a moved tenant's new database)."""
        if dsn is not None and dsn != self._dsn:
            self._dsn = dsn
            self._reconnect = True  # the flush task replaces its connection (the rule above)
        self._held = False
        self._next_drain = 0.0
        self._wake.set()

    # -- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._wake.is_set():
                self._run_deferred()  # no flush follows at once to carry it
            timeout = self.flush_interval_s
            if self.stats.spool_rows > 0:
                timeout = min(timeout, max(0.0, self._next_drain - loop.time()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
            if self.queue.pending and self.queue.rows < self.flush_rows:
                wait = self._flush_started + self.prompt_gap_s - loop.time()
                if wait > 0:  # woken by a prompt batch right after a flush: let a few join it
                    self._run_deferred()
                    await asyncio.sleep(wait)
            if self._held:  # between flushes here: acknowledge the hold
                for ack in self._hold_acks:
                    if not ack.done():
                        ack.set_result(None)
                self._hold_acks = []
            try:
                while self.queue.pending:
                    take = self.queue.take(self.flush_rows)
                    if self._held or self.stats.spool_rows > 0 or not self.stats.db_available:
                        await self._to_spool(take)
                    else:
                        self._flush_started = loop.time()
                        await self._flush(take)
                    self.queue.flushing = []
                    if self.queue.rows < self.flush_rows:
                        break
                if self.stats.spool_rows > 0 and not self._held and loop.time() >= self._next_drain:
                    await self._drain()
            except Exception as e:  # the loop must survive anything; futures carry the errors
                log.exception("writer loop iteration failed")
                err = e if isinstance(e, IngestError) else StorageUnavailable(f"flush failed: {e!r}")
                self.queue.fail(self.queue.flushing, err)
                self.queue.flushing = []

    def _event(self, reason: str, n: int = 1) -> None:
        if self._on_event is not None:
            try:
                self._on_event(reason, n)
            except Exception:
                log.debug("event hook failed", exc_info=True)

    def _db_down(self, e: BaseException) -> None:
        self.stats.failures += 1
        self.stats.db_available = False
        self.stats.last_error = f"{type(e).__name__}: {e}"[:300]
        if self._conn is not None and not self._conn.is_closed():
            self._conn.terminate()
        self._conn = None
        self._next_drain = asyncio.get_running_loop().time() + self._backoff.next_delay()
        self._event("db_unavailable")

    def _db_up(self) -> None:
        self.stats.db_available = True
        self._backoff.reset()

    async def _to_spool(self, items: list[Pending]) -> None:
        if self.spool is None:
            err: IngestError = StorageUnavailable("tenant database unavailable and no spool")
            self.queue.fail(items, err)
            return
        try:
            self.stats.spool_rows = await self.spool.push([p.batch for p in items])
        except (SpoolFull, SpoolUnavailable) as e:
            self._event("spool_full" if isinstance(e, SpoolFull) else "spool_unavailable")
            self.queue.fail(items, e)
            return
        self.stats.spooled_batches += len(items)
        for p in items:
            if not p.done.done():
                p.done.set_result(WriteResult(p.batch.batch_id, len(p.batch), spooled=True))

    async def _flush(self, items: list[Pending]) -> None:
        batches = [p.batch for p in items]
        try:
            results = await self._commit(batches)
        except BatchRejected:
            isolated = await self._isolate(batches)
            if isolated is None:  # the database went away while isolating
                await self._to_spool(items)
                return
            results = isolated
        except IngestError as e:
            if not e.retriable:
                raise
            self._db_down(e)
            await self._to_spool(items)
            return
        self._db_up()
        for p, r in zip(items, results, strict=True):
            if not p.done.done():
                p.done.set_result(r)

    async def _isolate(self, batches: list[Batch]) -> list[WriteResult] | None:
        """Commit batches one by one; quarantine those the database refuses for good."""
        out: list[WriteResult] = []
        for b in batches:
            try:
                out.extend(await self._commit([b]))
            except BatchRejected as e:
                self.stats.last_error = str(e)[:300]
                if self.quarantine is None:
                    raise StorageError(f"database refused batch {b.batch_id}: {e}") from e
                await self.quarantine.add(b, str(e))
                self.stats.quarantined_batches += 1
                self._event("quarantined")
                out.append(WriteResult(b.batch_id, len(b), quarantined=True))
            except IngestError as e:
                if not e.retriable:
                    raise
                self._db_down(e)
                return None
        return out

    async def _drain(self) -> None:
        """Commit the spool's oldest batches, in order, until it is empty or the DB fails."""
        assert self.spool is not None
        while self.stats.spool_rows > 0:
            try:
                batches = await self.spool.peek(self.flush_rows)
            except SpoolUnavailable as e:
                self._db_down(e)  # same backoff; the spool's Redis is what is away
                return
            if not batches:
                self.stats.spool_rows = await self.spool.rows()
                if self.stats.spool_rows > 0:  # counter drifted from the list: trust the list
                    await self.spool.client.set(self.spool.rows_key, 0)
                    self.stats.spool_rows = 0
                return
            try:
                await self._commit(batches)
            except BatchRejected:
                if await self._isolate(batches) is None:
                    return
            except IngestError as e:
                if not e.retriable:
                    raise
                self._db_down(e)
                return
            await self.spool.pop(batches)
            self.stats.spool_rows -= sum(len(b) for b in batches)
            self.stats.drained_batches += len(batches)
            self._db_up()
            if self.queue.rows >= self.flush_rows:
                return  # let fresh batches join the spool's tail, then continue draining

    async def _connection(self) -> asyncpg.Connection:
        # Called by the flush task only (module docstring): replacing the connection here or
        # closing it in _db_down can never pull it from under another coroutine's transaction.
        if self._reconnect:
            self._reconnect = False
            if self._conn is not None and not self._conn.is_closed():
                self._conn.terminate()
            self._conn = None
        if self._conn is None or self._conn.is_closed():
            try:
                self._conn = await asyncpg.connect(self._dsn, timeout=10)
            except Exception as e:
                # Whatever stops us connecting (server down, database not accepting
                # connections, auth being reset) is the database being away, not the batch.
                raise StorageUnavailable(f"cannot connect: {type(e).__name__}: {e}") from e
        return self._conn

    # -- one transaction -------------------------------------------------------------------------
    async def _commit(self, batches: list[Batch]) -> list[WriteResult]:
        t0 = time.perf_counter()
        f = await commit_flush(self._connection, batches, self.validator, self._run_deferred)
        commit_s, write_s = time.time(), time.perf_counter() - t0
        counts = f.outcome.counts if f.outcome is not None else {}  # folded into the validator
        for event, n in self.stats.note_flush(counts, f.text_rows, f.new_batches, len(batches)).items():
            self._event(event, n)
        if self.fanout is not None and f.texts:
            self.fanout.submit_text(f.texts, int(commit_s * 1e6))
        rows = f.numeric
        if rows is not None and len(rows):
            self.stats.rows_committed += len(rows)
            work = functools.partial(self._after_commit, rows, commit_s, write_s)
            if self._wake.is_set() or self.queue.rows >= self.flush_rows:
                # The next flush starts at once: this runs during its COPY (or before the loop
                # waits again, if it copies nothing), in commit order either way.
                self._deferred.append(work)
            else:
                # At the loop's next turn, still before any sender's ``write`` returns (their
                # wake-ups are queued after this): live values never wait for a flush that may
                # be a tick away.
                self._run_deferred()
                asyncio.get_running_loop().call_soon(work)
        return [WriteResult(b.batch_id, len(b), duplicate=b.batch_id in f.seen) for b in batches]

    def _run_deferred(self) -> None:
        work, self._deferred = self._deferred, []
        for w in work:
            w()

    def _after_commit(self, rows: ReadingBatch, commit_s: float, write_s: float) -> None:
        try:
            live = rows.quality != GAP_QUALITY
            self.stats.latency.add(int(commit_s * 1e6) - rows.time_us[live])
            if self.fanout is not None:
                self.fanout.submit(rows, int(commit_s * 1e6))
        except Exception:  # the rows are committed; nothing here may fail the flush loop
            log.exception("after-commit bookkeeping failed")
        if self._on_commit is not None:
            try:
                self._on_commit(rows, write_s)
            except Exception:  # metrics never break the data path
                log.exception("on_commit hook failed")
