"""The sending side of a tenant's micro-batches: keep every batch until the writer acknowledges it.

A batch leaves the sender only when the writer says it is committed (or was committed before). On a
failure it is resent with the same id after a capped, jittered backoff, so a writer that restarts
mid-call sees the resend and its ledger skips what the first attempt already committed. In-flight
calls are bounded; ``unacked_rows`` is what callers use for backpressure.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ingest.batch import ReadingBatch

log = logging.getLogger(__name__)

Send = Callable[[ReadingBatch], Awaitable[Any]]


class BatchSender:
    def __init__(
        self,
        send: Send,
        *,
        max_inflight: int = 4,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self._send = send
        self._queue: deque[ReadingBatch] = deque()
        self._slots = asyncio.Semaphore(max_inflight)
        self._inflight: set[asyncio.Task[None]] = set()
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._on_error = on_error
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

    def submit(self, batch: ReadingBatch) -> None:
        self._queue.append(batch)
        self.unacked_rows += len(batch)
        self._wake.set()

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
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
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
        delay = self._backoff_initial_s
        try:
            while True:
                try:
                    await self._send(batch)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # every failure is retried; the id makes it harmless
                    self.retries += 1
                    self.last_error = f"{type(e).__name__}: {e}"[:500]
                    if self._on_error is not None:
                        self._on_error(e)
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, self._backoff_max_s)
            self.unacked_rows -= len(batch)
            self.acked_rows += len(batch)
            self.acked_batches += 1
        finally:
            self._slots.release()
