"""Numeric and text batches interleaved under load, the database up the whole time.

Issue 17, point 3: text and numeric writes once shared one asyncpg connection concurrently, so one
transaction was nested in the other as a savepoint (or refused with "cannot use
Connection.transaction() in a manually started transaction"). With the database healthy nothing
may fail, nothing may be spooled, and every row and ledger entry must land exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest
import redis.asyncio as aioredis

from ingest.core.batch import ReadingBatch, TextBatch
from ingest.core.config import Settings
from ingest.write.spool import RedisSpool
from ingest.write.writer import TenantWriter, WriteResult
from tests.conftest import fresh_database

T0 = 1_760_000_000_000_000
PRODUCERS = 8
ROUNDS = 30  # per producer: one numeric and one text batch each round -> 240 + 240 batches


@pytest.fixture
async def redis(stack: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(stack.redis_url)
    yield r
    await r.aclose()


def numeric_batch(producer: int, seq: int, rng: np.random.Generator) -> ReadingBatch:
    n = int(rng.integers(1_000, 5_001))
    k = np.arange(n, dtype=np.int64)
    tag = (producer * 100 + k % 50 + 1).astype(np.int32)
    t = T0 + (seq * 10_000 + k) * 1000
    return ReadingBatch(f"n{producer}:{seq}", t, tag, k.astype(np.float64), np.zeros(n, np.int32))


def text_batch(producer: int, seq: int, rng: np.random.Generator) -> TextBatch:
    n = int(rng.integers(1, 40))
    k = np.arange(n, dtype=np.int64)
    return TextBatch(
        f"n{producer}:text{seq}",
        T0 + (seq * 10_000 + k) * 1000,
        np.full(n, 10_000 + producer, np.int32),
        [f"state {producer}/{seq}/{i} \u00e9tat" for i in range(n)],
        np.zeros(n, np.int32),
    )


async def test_text_and_numeric_batches_interleaved_land_exactly_once(
    stack: Settings, redis: aioredis.Redis
) -> None:
    dsn = stack.dsn(await fresh_database(stack, "il"))
    spool = RedisSpool(redis, f"il{uuid.uuid4().hex[:6]}", max_rows=10_000_000)
    w = TenantWriter(dsn, flush_rows=20_000, flush_interval_ms=20, spool=spool)
    await w.start()
    sent: list[ReadingBatch | TextBatch] = []
    results: dict[str, WriteResult] = {}
    errors: dict[str, str] = {}

    async def one(b: ReadingBatch | TextBatch) -> None:
        sent.append(b)
        try:
            if isinstance(b, TextBatch):
                results[b.batch_id] = await w.write_text(b)
            else:
                results[b.batch_id] = await w.write(b)
        except Exception as e:  # recorded, asserted on below
            errors[b.batch_id] = f"{type(e).__name__}: {e}"

    async def producer(p: int) -> None:
        # Like a sender with a few calls in flight: numeric and text calls overlap each other and
        # the writer's flushes for the whole run.
        rng = np.random.default_rng(p)
        for seq in range(ROUNDS):
            await asyncio.gather(one(numeric_batch(p, seq, rng)), one(text_batch(p, seq, rng)))

    try:
        await asyncio.gather(*(producer(p) for p in range(PRODUCERS)))
    finally:
        await w.stop()

    assert errors == {}
    assert w.stats.failures == 0, w.stats.last_error
    assert w.stats.spooled_batches == 0 and await spool.depth() == 0
    assert len(sent) == 2 * PRODUCERS * ROUNDS and len(results) == len(sent)
    for b in sent:
        r = results[b.batch_id]
        assert (r.batch_id, r.rows) == (b.batch_id, len(b))
        assert not (r.duplicate or r.spooled or r.quarantined), r

    numeric_rows = sum(len(b) for b in sent if isinstance(b, ReadingBatch))
    text_rows = sum(len(b) for b in sent if isinstance(b, TextBatch))
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM scada_readings") == numeric_rows
        assert await conn.fetchval("SELECT count(*) FROM scada_readings_text") == text_rows
        ledger = {r["batch_id"]: r["rows"] for r in await conn.fetch("SELECT batch_id, rows FROM ingest_ledger")}
    finally:
        await conn.close()
    assert ledger == {b.batch_id: len(b) for b in sent}  # batch_id is the ledger's primary key
