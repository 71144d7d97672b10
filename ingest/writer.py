"""The per-tenant writer: merges micro-batches and lands them exactly once with binary COPY.

A flush writes one ledger row per batch id and the COPY of the new batches' rows in one
transaction. A batch whose id the ledger already holds was committed before (a resend after a lost
acknowledgement) and is acknowledged without being written again. ``write`` returns only once its
batch is committed, so the sender knows when it may forget it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import numpy as np

from ingest.batch import ReadingBatch
from ingest.copy_binary import encode_readings
from ingest.errors import StorageError, StorageUnavailable

log = logging.getLogger(__name__)

COLUMNS = ["time", "tag_id", "value", "quality"]
# asyncpg's connection-level failures: the database went away or refused us for now.
_TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


class LatencyHistogram:
    """Source-timestamp-to-commit latency of every row, in 1 ms buckets up to 120 s."""

    def __init__(self, max_ms: int = 120_000) -> None:
        self.counts = np.zeros(max_ms + 1, np.int64)

    def add(self, latency_us: np.ndarray) -> None:
        ms = np.clip(latency_us // 1000, 0, self.counts.shape[0] - 1)
        self.counts += np.bincount(ms, minlength=self.counts.shape[0])

    def percentile(self, q: float) -> float | None:
        total = int(self.counts.sum())
        if total == 0:
            return None
        cum = np.cumsum(self.counts)
        return float(np.searchsorted(cum, q / 100.0 * total))


@dataclass
class WriteResult:
    batch_id: str
    rows: int
    duplicate: bool  # True: the ledger already held this id; nothing written again


@dataclass
class _Pending:
    batch: ReadingBatch
    done: asyncio.Future[WriteResult]


@dataclass
class WriterStats:
    rows_committed: int = 0
    batches_committed: int = 0
    duplicates: int = 0
    flushes: int = 0
    failures: int = 0
    last_error: str | None = None
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def as_dict(self) -> dict[str, object]:
        return {
            "rows_committed": self.rows_committed,
            "batches_committed": self.batches_committed,
            "duplicates": self.duplicates,
            "flushes": self.flushes,
            "failures": self.failures,
            "last_error": self.last_error,
            "latency_p50_ms": self.latency.percentile(50),
            "latency_p99_ms": self.latency.percentile(99),
        }


OnCommit = Callable[[ReadingBatch, float], None]


class TenantWriter:
    def __init__(
        self,
        dsn: str,
        *,
        flush_rows: int = 20_000,
        flush_interval_ms: int = 100,
        on_commit: OnCommit | None = None,
    ) -> None:
        self._dsn = dsn
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_ms / 1000.0
        self._on_commit = on_commit
        self._pending: list[_Pending] = []
        self._pending_rows = 0
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.stats = WriterStats()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="writer-flush")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def write(self, batch: ReadingBatch) -> WriteResult:
        """Queue a batch and wait until it is committed (or known to be committed already)."""
        fut: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(batch, fut))
        self._pending_rows += len(batch)
        if self._pending_rows >= self.flush_rows:
            self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            while self._pending:
                take, rows = [], 0
                while self._pending and (rows < self.flush_rows or not take):
                    p = self._pending.pop(0)
                    take.append(p)
                    rows += len(p.batch)
                self._pending_rows -= rows
                await self._flush(take)
                if self._pending_rows < self.flush_rows:
                    break

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn, timeout=10)
        return self._conn

    async def _flush(self, items: list[_Pending]) -> None:
        try:
            results = await self._commit([p.batch for p in items])
        except _TRANSIENT as e:
            self.stats.failures += 1
            self.stats.last_error = f"{type(e).__name__}: {e}"
            if self._conn is not None and not self._conn.is_closed():
                self._conn.terminate()
            self._conn = None
            err: Exception = StorageUnavailable(f"tenant database unavailable: {type(e).__name__}")
            for p in items:
                if not p.done.done():
                    p.done.set_exception(err)
            return
        except asyncpg.PostgresError as e:
            self.stats.failures += 1
            self.stats.last_error = f"{type(e).__name__}: {e}"
            for p in items:
                if not p.done.done():
                    p.done.set_exception(StorageError(f"database refused batch: {e}"))
            return
        for p, r in zip(items, results, strict=True):
            if not p.done.done():
                p.done.set_result(r)

    async def _commit(self, batches: list[ReadingBatch]) -> list[WriteResult]:
        # The same id twice in one flush (a resend racing its original) is written once.
        unique: dict[str, ReadingBatch] = {}
        for b in batches:
            unique.setdefault(b.batch_id, b)
        ids = list(unique)
        conn = await self._connection()
        t0 = time.perf_counter()
        async with conn.transaction():
            fresh = {
                r[0]
                for r in await conn.fetch(
                    """INSERT INTO ingest_ledger (batch_id, rows, min_time, max_time)
                       SELECT b, n, to_timestamp(lo / 1e6), to_timestamp(hi / 1e6)
                       FROM unnest($1::text[], $2::int[], $3::int8[], $4::int8[]) AS u(b, n, lo, hi)
                       ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id""",
                    ids,
                    [len(unique[i]) for i in ids],
                    [int(unique[i].time_us.min()) if len(unique[i]) else None for i in ids],
                    [int(unique[i].time_us.max()) if len(unique[i]) else None for i in ids],
                )
            }
            new = [unique[i] for i in ids if i in fresh and len(unique[i])]
            if new:
                merged = ReadingBatch.concat("flush", new) if len(new) > 1 else new[0]
                payload = encode_readings(
                    merged.time_us, merged.tag_id, merged.value, merged.quality
                )
                await conn.copy_to_table(
                    "scada_readings", source=io.BytesIO(payload), columns=COLUMNS,
                    format="binary",
                )
        commit_s = time.time()
        self.stats.flushes += 1
        rows = 0
        for b in new:
            rows += len(b)
            self.stats.latency.add(int(commit_s * 1e6) - b.time_us)
            if self._on_commit is not None:
                try:
                    self._on_commit(b, time.perf_counter() - t0)
                except Exception:  # fan-out and metrics never break the data path
                    log.exception("on_commit hook failed")
        self.stats.rows_committed += rows
        self.stats.batches_committed += len(new)
        self.stats.duplicates += len(batches) - len(ids) + sum(1 for i in ids if i not in fresh)
        return [
            WriteResult(b.batch_id, len(b), b.batch_id not in fresh) for b in batches
        ]
