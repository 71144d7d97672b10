"""The sending side of a tenant's micro-batches: keep every batch until the writer acknowledges it.

A batch leaves the sender only when the writer says it is committed (or was committed before). On a
failure it is resent with the same id after a capped, jittered backoff, so a writer that restarts
mid-call sees the resend and its ledger skips what the first attempt already committed. In-flight
calls are bounded; ``unacked_rows`` is what callers use for backpressure. Each batch may carry a
``mark`` (the caller's tick number): ``oldest_unacked_mark`` says up to where everything submitted
is committed, which is what lets an OPC UA session acknowledge a message only once it is stored.

Memory is bounded too: when the rows held exceed ``max_unacked_rows`` (the writer is refusing
because its spool is full, or is unreachable for long), the oldest queued batches are replaced by
gap markers, one row per tag with quality Bad_DataLost whose value counts the readings lost from
that timestamp on. The loss is then explicit, counted and itself stored, never silent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ingest.core.aio import cancel_and_wait
from ingest.core.backoff import Backoff
from ingest.core.batch import ReadingBatch, per_tag
from ingest.core.models import GAP_QUALITY

log = logging.getLogger(__name__)

Send = Callable[[ReadingBatch], Awaitable[Any]]


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
        self._queue: deque[ReadingBatch] = deque()
        self._marks: dict[str, int] = {}  # batch id -> its mark, until acknowledged
        self._outstanding: dict[int, int] = {}  # mark -> batches of it not acknowledged yet
        self._slots = asyncio.Semaphore(max_inflight)
        self._inflight: set[asyncio.Task[None]] = set()
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
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
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._slots.acquire()
            batch = self._queue.popleft()
            t = asyncio.create_task(self._deliver(batch))
            self._inflight.add(t)
            t.add_done_callback(self._inflight.discard)

    async def _deliver(self, batch: ReadingBatch) -> None:
        backoff = Backoff(self._backoff_initial_s, self._backoff_max_s)
        try:
            while True:
                try:
                    await self._send(batch)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    # Every failure is retried, ``retriable`` or not: the batch id makes a resend
                    # harmless, and giving up would drop readings silently. A batch the database
                    # refuses for good is the writer's to quarantine, which acknowledges it.
                    self.retries += 1
                    self.last_error = f"{type(e).__name__}: {e}"[:500]
                    if self._on_error is not None:
                        self._on_error(e)
                    await asyncio.sleep(backoff.next_delay())
            self._acked(batch)
            self.unacked_rows -= len(batch)
            self.acked_rows += len(batch)
            self.acked_batches += 1
        finally:
            self._slots.release()
