"""What a tenant writer holds between a sender's call and its answer: the batches queued for the
next flush and those of the flush in progress, each with the future its caller waits on, and the
order each sender's batches must settle in (ingest.core.order).

Only the writer's event loop touches it (``write`` adds, the flush loop takes and answers).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from ingest.core.batch import Batch
from ingest.core.order import Place, SenderOrder


@dataclass
class WriteResult:
    batch_id: str
    rows: int
    duplicate: bool = False  # the ledger already held this id; nothing written again
    spooled: bool = False  # held in the durable spool; will be committed when the DB returns
    quarantined: bool = False  # refused by the database for good; kept for an operator


@dataclass
class Pending:
    batch: Batch
    done: asyncio.Future[WriteResult]
    place: Place | None = None  # among its sender's batches (ingest.core.order)


class WriteQueue:
    def __init__(self) -> None:
        self.pending: list[Pending] = []
        self.flushing: list[Pending] = []  # taken off ``pending`` by the flush in progress
        self.rows = 0  # rows in ``pending``
        self.order = SenderOrder()

    def add(self, batch: Batch, place: Place | None) -> asyncio.Future[WriteResult]:
        """Queue a batch; raises OutOfOrder (and queues nothing) when an older unacknowledged
        batch of its sender is neither settled nor queued here."""
        if place is not None:
            self.order.admit(place)
        fut: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        self.pending.append(Pending(batch, fut, place))
        self.rows += len(batch)
        return fut

    def take(self, flush_rows: int) -> list[Pending]:
        """The oldest queued batches, at least one, up to ``flush_rows`` rows: the next flush."""
        take: list[Pending] = []
        rows = 0
        while self.pending and (rows < flush_rows or not take):
            p = self.pending.pop(0)
            take.append(p)
            rows += len(p.batch)
        self.rows -= rows
        self.flushing = take
        return take

    def fail(self, items: list[Pending], err: Exception) -> None:
        """Fail these batches, and every later queued batch of their senders with them: none may
        settle before an older one of its sender. Batches already answered are left alone."""
        first: dict[str, int] = {}  # sender -> its oldest batch failed here
        for p in items:
            if p.done.done():
                continue
            p.done.set_exception(err)
            if p.place is not None:
                self.order.failed(p.place)
                first[p.place.sender] = min(p.place.n, first.get(p.place.sender, p.place.n))
        if not first:
            return
        behind = [
            p for p in self.pending if p.place is not None and p.place.n > first.get(p.place.sender, p.place.n)
        ]
        if behind:
            gone = {id(p) for p in behind}
            self.pending = [p for p in self.pending if id(p) not in gone]
            self.rows -= sum(len(p.batch) for p in behind)
            self.fail(behind, err)

    def fail_all(self, err: Exception) -> None:
        """The writer stops: nothing held is acknowledged, so every sender resends it."""
        self.fail(self.flushing + self.pending, err)
        self.flushing, self.pending, self.rows = [], [], 0

    def holds_older(self, before_us: dict[int, int]) -> bool:
        """Whether a batch queued or being flushed holds a row of one of these tags older than
        the given time: stored data does not yet end where it will (a gap check waits)."""
        if not before_us:
            return False
        keys = np.fromiter(sorted(before_us), np.int64, len(before_us))
        limits = np.asarray([before_us[int(k)] for k in keys], np.int64)
        for p in self.flushing + self.pending:
            b = p.batch
            if len(b) == 0:
                continue
            at = np.minimum(np.searchsorted(keys, b.tag_id), len(keys) - 1)
            if np.any((keys[at] == b.tag_id) & (b.time_us < limits[at])):
                return True
        return False
