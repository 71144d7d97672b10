"""A sender's batches settle in the order it cut them (ingest.core.order).

A hole behind newer stored readings is one no gap check sees: a fresh-clone run lost 5 readings of
each of 4 tags that way when an actor was killed after an older batch of its had failed and a newer
one had gone through. The writer refuses a batch that would settle before an older unacknowledged
one of its sender, fails a sender's later queued batches with an older one it fails, and the
sender resends in the order cut.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis

from ingest.core.batch import ReadingBatch
from ingest.core.config import Settings
from ingest.core.errors import OutOfOrder, SpoolFull
from ingest.core.order import Place, SenderOrder
from ingest.device.sender import BatchSender
from ingest.write.spool import RedisSpool
from ingest.write.writer import TenantWriter
from tests.helpers import wait_until


def _batch(i: int, rows: int = 1) -> ReadingBatch:
    return ReadingBatch(
        f"s:e:{i}",
        np.arange(rows, dtype=np.int64) + 1_750_000_000_000_000 + i * 1_000,
        np.ones(rows, np.int32),
        np.full(rows, float(i)),
        np.zeros(rows, np.int32),
    )


def test_a_batch_is_taken_only_after_the_older_unacknowledged_ones() -> None:
    order = SenderOrder()
    order.admit(Place("a", 0, 0))
    order.admit(Place("a", 1, 0))  # 0 is queued here, ahead of it
    with pytest.raises(OutOfOrder, match="batch 3 of sender a arrived before its batch 2"):
        order.admit(Place("a", 3, 0))
    order.admit(Place("a", 2, 1))  # 0 acknowledged meanwhile
    order.admit(Place("a", 3, 1))
    order.admit(Place("a", 1, 1))  # a resend of one taken before: harmless (the ledger knows it)
    order.admit(Place("b", 7, 7))  # another sender, and a writer that never saw its older ones
    assert len(order) == 2


def test_a_failed_batch_holds_back_the_later_ones_until_it_is_taken() -> None:
    order = SenderOrder()
    for n in range(3):
        order.admit(Place("a", n, 0))
    order.failed(Place("a", 1, 0))
    with pytest.raises(OutOfOrder):
        order.admit(Place("a", 3, 0))
    order.admit(Place("a", 1, 0))  # resent
    order.admit(Place("a", 3, 0))


def test_a_restarted_writer_waits_for_what_the_sender_had_not_had_acknowledged() -> None:
    order = SenderOrder()  # knows nothing of sender a
    with pytest.raises(OutOfOrder):
        order.admit(Place("a", 12, 10))  # 10 and 11 are still the sender's: they go first
    order.admit(Place("a", 10, 10))
    order.admit(Place("a", 11, 10))
    order.admit(Place("a", 12, 10))


def test_idle_senders_are_forgotten() -> None:
    now = [0.0]
    order = SenderOrder(idle_s=60, clock=lambda: now[0])
    order.admit(Place("gone", 0, 0))
    now[0] = 61.0
    order.admit(Place("live", 0, 0))
    assert len(order) == 1


class _Writer:
    """Takes what its SenderOrder admits, in arrival order; the first call of ``lose`` is lost
    on the way (a writer restarting, a lookup racing): it never reaches the writer."""

    def __init__(self, lose: set[str], check: bool = True) -> None:
        self.order = SenderOrder()
        self.lose = set(lose)
        self.check = check
        self.settled: list[str] = []
        self.attempts: list[str] = []

    async def send(self, batch: ReadingBatch, place: Place) -> None:
        self.attempts.append(batch.batch_id)
        if batch.batch_id in self.lose:
            self.lose.discard(batch.batch_id)
            await asyncio.sleep(0.02)
            raise ConnectionError("lost on the way")
        if self.check:
            self.order.admit(place)
        await asyncio.sleep(0.001)
        if batch.batch_id not in self.settled:
            self.settled.append(batch.batch_id)


async def _run(writer: _Writer, batches: int) -> BatchSender:
    sender = BatchSender(writer.send, max_inflight=4, backoff_initial_s=0.05, backoff_max_s=0.1)
    sender.start()
    try:
        for i in range(batches):
            sender.submit(_batch(i), i)
        assert await sender.drain(10)
    finally:
        await sender.stop()
    return sender


async def test_batches_settle_in_the_order_cut_when_an_older_one_fails() -> None:
    writer = _Writer(lose={"s:e:0", "s:e:5"})
    sender = await _run(writer, 12)
    assert writer.settled == [f"s:e:{i}" for i in range(12)]
    assert sender.retries >= 2 and sender.oldest_unacked_mark is None
    # After each failure the queue went out again from its oldest batch.
    first_again = writer.attempts.index("s:e:0", 1)
    assert writer.attempts[first_again : first_again + 4] == [f"s:e:{i}" for i in range(4)]


async def test_without_the_writers_check_a_newer_batch_settles_first() -> None:
    """The same run against a writer that takes whatever comes: the hole the check closes."""
    writer = _Writer(lose={"s:e:0"}, check=False)
    await _run(writer, 4)
    assert writer.settled[0] != "s:e:0"


@pytest.fixture
async def redis(stack: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(stack.redis_url)
    yield r
    await r.aclose()


async def test_the_writer_fails_a_senders_later_batches_with_an_older_one(redis: aioredis.Redis) -> None:
    """The database away, the spool nearly full: the older batch does not fit, the newer one
    would. Spooling the newer one alone would settle it before the older; both fail."""
    spool = RedisSpool(redis, f"order{uuid.uuid4().hex[:6]}", max_rows=1_500)
    try:
        await spool.push([_batch(99, rows=1_000)])
        w = TenantWriter(
            "postgresql://nobody@127.0.0.1:1/none",  # nothing listens: every batch is spooled
            flush_rows=1,
            flush_interval_ms=20,
            spool=spool,
            backoff_initial_s=30,
            backoff_max_s=30,
        )
        await w.start()
        try:
            older = asyncio.ensure_future(w.write(_batch(0, rows=1_000), place=Place("a", 0, 0)))
            newer = asyncio.ensure_future(w.write(_batch(1, rows=100), place=Place("a", 1, 0)))
            for f in (older, newer):
                with pytest.raises(SpoolFull):
                    await f
            assert await spool.rows() == 1_000
            # Resent alone, the newer one is refused until the older one is taken.
            with pytest.raises(OutOfOrder):
                await w.write(_batch(1, rows=100), place=Place("a", 1, 0))
            assert w.stats.out_of_order == 1
            # Another sender's batch is not held back by it.
            r = await w.write(_batch(2, rows=100), place=Place("b", 0, 0))
            assert r.spooled
            await wait_until(lambda: w.stats.spool_rows == 1_100, "the other sender's batch spooled", 5)
        finally:
            await w.stop()
    finally:
        await redis.delete(spool.key, spool.rows_key)
