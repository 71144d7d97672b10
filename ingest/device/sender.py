"""The sending side of a tenant's micro-batches: keep every batch until the writer acknowledges it.

A batch leaves the sender only when the writer says it is committed (or was committed before). On a
failure it goes back into the queue in the order it was cut and sending pauses for a capped,
jittered backoff; then the queue is sent again from its oldest batch, with the same ids, so a writer
that restarts mid-call sees the resends and its ledger skips what the first attempts committed.
Each send carries the batch's ``Place`` (ingest.core.order): the writer refuses a batch that would
settle before an older unacknowledged one, so a lost actor never leaves a hole behind newer stored
readings, where no gap check looks. In-flight calls are bounded; ``unacked_rows`` is what callers
use for backpressure. Each batch may carry a ``mark`` (the caller's tick number):
``oldest_unacked_mark`` says up to where everything submitted is committed, which is what lets an
OPC UA session acknowledge a message only once it is stored.

Memory is bounded too: when the rows held exceed ``max_unacked_rows`` (the writer is refusing
because its spool is full, or is unreachable for long), the oldest queued batches are replaced by
gap markers, one row per tag with quality Bad_DataLost whose value counts the readings lost from
that timestamp on. The loss is then explicit, counted and itself stored, never silent.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ingest.core.aio import cancel_and_wait
from ingest.core.backoff import Backoff
from ingest.core.batch import ReadingBatch, per_tag
from ingest.core.models import GAP_QUALITY
from ingest.core.order import Place

log = logging.getLogger(__name__)

Send = Callable[[ReadingBatch, Place], Awaitable[Any]]


def gap_markers(batch: ReadingBatch) -> ReadingBatch:
    """One marker row per tag of ``batch``: first timestamp, value = readings of it lost."""
    first, counts = per_tag(batch.tag_id, batch.time_us)
    return ReadingBatch(
        batch.batch_id + ":gap",
        batch.time_us[first],
        batch.tag_id[first],
        counts.astype(np.float64),
        np.full(first.shape[0], GAP_QUALITY, np.int32),
    )


class BatchSender:
    def __init__(
        self,
        send: Send,
        *,
        max_inflight: int = 4,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        on_error: Callable[[Exception], None] | None = None,
        max_unacked_rows: int | None = None,
        on_gap: Callable[[int], None] | None = None,
    ) -> None:
        self._send = send
        self.name = uuid.uuid4().hex[:16]  # this sender, among the writer's (ingest.core.order)
        self._queue: deque[ReadingBatch] = deque()  # in the order cut (``_n``), resends too
        self._n: dict[str, int] = {}  # batch id -> its place in the order cut, until acknowledged
        self._next_n = 0
        self._flying: dict[str, int] = {}  # in flight: batch id -> n
        self._resume_at = 0.0  # after a failure nothing is sent before this (loop time)
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._marks: dict[str, int] = {}  # batch id -> its mark, until acknowledged
        self._outstanding: dict[int, int] = {}  # mark -> batches of it not acknowledged yet
        self._slots = asyncio.Semaphore(max_inflight)
        self._inflight: set[asyncio.Task[None]] = set()
        self._on_error = on_error
        self._max_unacked_rows = max_unacked_rows
        self._on_gap = on_gap
        self.gap_readings = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.unacked_rows = 0
        self.acked_rows = 0
        self.acked_batches = 0
        self.retries = 0
        self.last_error: str | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="batch-sender")

    def submit(self, batch: ReadingBatch, mark: int = 0) -> None:
        self._queue.append(batch)
        self._n[batch.batch_id] = self._next_n
        self._next_n += 1
        self._marks[batch.batch_id] = mark
        self._outstanding[mark] = self._outstanding.get(mark, 0) + 1
        self.unacked_rows += len(batch)
        if self._max_unacked_rows is not None and self.unacked_rows > self._max_unacked_rows:
            self._shed()
        self._wake.set()

    def _shed(self) -> None:
        """Replace the oldest queued readings with gap markers until back under the bound."""
        assert self._max_unacked_rows is not None
        kept: deque[ReadingBatch] = deque()
        while self._queue and self.unacked_rows > self._max_unacked_rows:
            b = self._queue.popleft()
            if b.batch_id.endswith(":gap"):
                kept.append(b)  # markers are tiny and are the record of the loss: never shed
                continue
            marker = gap_markers(b)
            self._marks[marker.batch_id] = self._marks.pop(b.batch_id)
            self._n[marker.batch_id] = self._n.pop(b.batch_id)  # in its place
            kept.append(marker)
            self.unacked_rows += len(marker) - len(b)
            self.gap_readings += len(b)
            if self._on_gap is not None:
                self._on_gap(len(b))
        kept.extend(self._queue)
        self._queue = kept

    @property
    def oldest_unacked_mark(self) -> int | None:
        """The smallest mark with a batch not yet acknowledged (None: everything is)."""
        return min(self._outstanding) if self._outstanding else None

    def _acked(self, batch: ReadingBatch) -> None:
        self._n.pop(batch.batch_id, None)
        mark = self._marks.pop(batch.batch_id, 0)
        left = self._outstanding.get(mark, 0) - 1
        if left > 0:
            self._outstanding[mark] = left
        else:
            self._outstanding.pop(mark, None)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._inflight

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything submitted is acknowledged; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.idle:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for t in list(self._inflight):
            t.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if (pause := self._resume_at - loop.time()) > 0:
                await asyncio.sleep(pause)
                continue
            await self._slots.acquire()
            if not self._queue or self._resume_at > loop.time():  # a failure while waiting
                self._slots.release()
                continue
            batch = self._queue.popleft()
            n = self._n[batch.batch_id]
            place = Place(self.name, n, min(n, *self._flying.values()) if self._flying else n)
            self._flying[batch.batch_id] = n
            t = asyncio.create_task(self._deliver(batch, place))
            self._inflight.add(t)
            t.add_done_callback(self._inflight.discard)

    async def _deliver(self, batch: ReadingBatch, place: Place) -> None:
        try:
            await self._send(batch, place)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # Every failure is resent, ``retriable`` or not: the batch id makes a resend
            # harmless, and giving up would drop readings silently. A batch the database
            # refuses for good is the writer's to quarantine, which acknowledges it.
            self.retries += 1
            self.last_error = f"{type(e).__name__}: {e}"[:500]
            if self._on_error is not None:
                self._on_error(e)
            self._requeue(batch)
            return
        finally:
            self._flying.pop(batch.batch_id, None)
            self._slots.release()
        self._backoff.reset()
        self._acked(batch)
        self.unacked_rows -= len(batch)
        self.acked_rows += len(batch)
        self.acked_batches += 1

    def _requeue(self, batch: ReadingBatch) -> None:
        """Back into the queue in the order cut; sending pauses (one backoff step per failure
        seen after a pause, not one per batch that was in flight when the writer went)."""
        n = self._n[batch.batch_id]
        self._queue.insert(bisect.bisect_left(self._queue, n, key=lambda b: self._n[b.batch_id]), batch)
        now = asyncio.get_running_loop().time()
        if now >= self._resume_at:
            self._resume_at = now + self._backoff.next_delay()
        self._wake.set()
