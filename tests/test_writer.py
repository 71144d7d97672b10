"""The writer path against the real database: binary COPY from numpy, ledger, exactly once."""

from __future__ import annotations

import asyncio

import asyncpg
import numpy as np
import pytest

from ingest.core.batch import BatchBuilder, ReadingBatch
from ingest.core.config import Settings
from ingest.write.writer import TenantWriter
from tests.conftest import fresh_database


@pytest.fixture
async def tenant_db(stack: Settings) -> str:
    return stack.dsn(await fresh_database(stack, "w"))


def _batch(batch_id: str, n: int, tag: int = 1, start_us: int = 1_700_000_000_000_000) -> ReadingBatch:
    return ReadingBatch(
        batch_id,
        start_us + np.arange(n, dtype=np.int64) * 1000,
        np.full(n, tag, np.int32),
        np.arange(n, dtype=np.float64) + 0.5,
        np.where(np.arange(n) % 7 == 0, np.int32(-2147483648), np.int32(0)).astype(np.int32),
    )


async def test_binary_copy_round_trips_every_column(tenant_db: str) -> None:
    w = TenantWriter(tenant_db, flush_interval_ms=20)
    await w.start()
    b = _batch("src:e:1", 1000, tag=42)
    r = await w.write(b)
    await w.stop()
    assert r.rows == 1000 and not r.duplicate
    conn = await asyncpg.connect(tenant_db)
    rows = await conn.fetch(
        "SELECT (extract(epoch FROM time) * 1e6)::int8 AS t, tag_id, value, quality "
        "FROM scada_readings ORDER BY time"
    )
    await conn.close()
    assert [r["t"] for r in rows] == b.time_us.tolist()
    assert {r["tag_id"] for r in rows} == {42}
    assert [r["value"] for r in rows] == b.value.tolist()
    assert [r["quality"] for r in rows] == b.quality.tolist()  # 0x80000000 stored as int4


async def test_resent_batch_is_acknowledged_not_written_twice(tenant_db: str) -> None:
    w = TenantWriter(tenant_db, flush_interval_ms=20)
    await w.start()
    first = await w.write(_batch("src:e:1", 500))
    again = await w.write(_batch("src:e:1", 500))
    # A resend racing its original inside one flush is also written once.
    both = await asyncio.gather(
        w.write(_batch("src:e:2", 300, start_us=2_000_000_000_000_000)),
        w.write(_batch("src:e:2", 300, start_us=2_000_000_000_000_000)),
    )
    await w.stop()
    assert not first.duplicate and again.duplicate
    assert [b.rows for b in both] == [300, 300]
    conn = await asyncpg.connect(tenant_db)
    assert await conn.fetchval("SELECT count(*) FROM scada_readings") == 800
    assert await conn.fetchval("SELECT count(*) FROM ingest_ledger") == 2
    await conn.close()
    assert w.stats.duplicates == 2


async def test_many_small_batches_merge_into_few_flushes(tenant_db: str) -> None:
    w = TenantWriter(tenant_db, flush_rows=10_000, flush_interval_ms=200)
    await w.start()
    builder = BatchBuilder("src", "e")
    batches = []
    for i in range(50):
        builder.append(
            np.full(100, i, np.int32),
            np.arange(100) + i * 1000 + 1_700_000_000_000_000,
            np.ones(100),
            np.zeros(100),
        )
        batches.append(builder.cut())
    results = await asyncio.gather(*(w.write(b) for b in batches if b is not None))
    await w.stop()
    assert sum(r.rows for r in results) == 5000
    assert w.stats.flushes < 10
    conn = await asyncpg.connect(tenant_db)
    assert await conn.fetchval("SELECT count(*) FROM scada_readings") == 5000
    assert await conn.fetchval("SELECT count(*) FROM ingest_ledger") == 50
    await conn.close()


async def test_a_prompt_write_is_flushed_at_once_and_takes_waiting_batches_along(tenant_db: str) -> None:
    # An hour's timer and a row threshold never reached: only ``prompt`` can start a flush.
    w = TenantWriter(tenant_db, flush_rows=1_000_000, flush_interval_ms=3_600_000)
    await w.start()
    device = asyncio.ensure_future(w.write(_batch("dev:e:1", 100, tag=1)))
    await asyncio.sleep(0.3)
    assert not device.done() and w.stats.flushes == 0  # a device batch waits for the tick
    pushed = await asyncio.wait_for(w.write(_batch("push:a", 100, tag=2), prompt=True), 60)
    assert pushed.rows == 100 and (await device).rows == 100
    assert w.stats.flushes == 1  # the waiting device batch went in the same transaction
    # Prompt batches sent together (clients waiting on their answers) share one flush.
    many = await asyncio.wait_for(
        asyncio.gather(*(w.write(_batch(f"push:b{i}", 50, tag=10 + i), prompt=True) for i in range(5))), 60
    )
    await w.stop()
    assert [r.rows for r in many] == [50] * 5
    assert w.stats.flushes == 2
    conn = await asyncpg.connect(tenant_db)
    assert await conn.fetchval("SELECT count(*) FROM scada_readings") == 450
    await conn.close()


async def test_pushed_batches_right_after_a_flush_wait_out_the_gap_and_share_the_next(tenant_db: str) -> None:
    # The gap is far longer than any flush here, so the two later batches meet whatever the
    # machine's speed; without it each would have its own transaction (three flushes).
    w = TenantWriter(tenant_db, flush_rows=1_000, flush_interval_ms=3_600_000, prompt_gap_ms=2_000)
    await w.start()
    await asyncio.wait_for(w.write(_batch("push:g1", 10, tag=1), prompt=True), 60)
    second = asyncio.ensure_future(w.write(_batch("push:g2", 10, tag=2), prompt=True))
    await asyncio.sleep(0.2)
    assert not second.done()  # held for the gap, not flushed alone
    third = asyncio.ensure_future(w.write(_batch("push:g3", 10, tag=3), prompt=True))
    assert [r.rows for r in await asyncio.wait_for(asyncio.gather(second, third), 60)] == [10, 10]
    assert w.stats.flushes == 2
    # A flush's worth of rows is never held for the gap.
    w.prompt_gap_s = 3_600.0
    big = await asyncio.wait_for(w.write(_batch("push:g4", 1_000, tag=4), prompt=True), 60)
    await w.stop()
    assert big.rows == 1_000 and w.stats.flushes == 3


async def test_a_flush_s_bookkeeping_runs_during_the_next_copy_in_commit_order(tenant_db: str) -> None:
    # Ten flushes back to back (a flush's worth of rows is always queued): each flush's
    # after-commit work (latency, fan-out, the on_commit hook) runs while the next one copies,
    # and the last one's before the loop waits again. None is lost, none runs twice, in order.
    calls: list[tuple[int, int, bool]] = []
    w: TenantWriter

    def on_commit(rows: ReadingBatch, _write_s: float) -> None:
        calls.append((int(rows.time_us.min()), len(rows), bool(w.queue.flushing)))

    w = TenantWriter(tenant_db, flush_rows=100, flush_interval_ms=3_600_000, on_commit=on_commit)
    await w.start()
    batches = [_batch(f"b:{i}", 100, tag=3, start_us=1_700_000_000_000_000 + i * 10**9) for i in range(10)]
    await asyncio.wait_for(asyncio.gather(*(w.write(b) for b in batches)), 60)
    for _ in range(100):  # the last flush's work runs at the loop's next turn
        if len(calls) == 10:
            break
        await asyncio.sleep(0.05)
    await w.stop()
    assert w.stats.flushes == 10
    assert [n for _, n, _ in calls] == [100] * 10
    assert [t for t, _, _ in calls] == sorted(t for t, _, _ in calls)  # commit order
    assert sum(during for _, _, during in calls) >= 8  # carried by the next flush's COPY


async def test_a_flush_interrupted_during_its_copy_takes_the_copy_with_it(tenant_db: str) -> None:
    # Whatever ends a flush while its COPY runs (here the work carried by the COPY raising; in
    # the writer, a cancelled flush task) ends the COPY too: the transaction rolls back, nothing
    # is written, and the connection is free for the next flush.
    from ingest.write.commit import commit_once

    def boom() -> None:
        raise RuntimeError("carried work failed")

    conn = await asyncpg.connect(tenant_db)
    try:
        with pytest.raises(RuntimeError, match="carried work failed"):
            await commit_once(conn, [_batch("cut:1", 5000, tag=9)], None, during_copy=boom)
        assert await conn.fetchval("SELECT count(*) FROM scada_readings") == 0
        assert await conn.fetchval("SELECT count(*) FROM ingest_ledger") == 0
        done = await commit_once(conn, [_batch("cut:1", 5000, tag=9)], None)
        assert done.new_batches == 1
        assert await conn.fetchval("SELECT count(*) FROM scada_readings") == 5000
    finally:
        await conn.close()


def test_arrow_transport_keeps_columns_and_id() -> None:
    b = _batch("conn-0/t:abc:7", 10)
    back = ReadingBatch.from_arrow(b.to_arrow())
    assert back.batch_id == "conn-0/t:abc:7"
    for col in ("time_us", "tag_id", "value", "quality"):
        assert np.array_equal(getattr(back, col), getattr(b, col))


async def test_text_readings_land_in_the_text_table_exactly_once(tenant_db: str) -> None:
    from ingest.core.batch import TextBatch, TextBuilder, is_text

    builder = TextBuilder("src", "e")
    builder.append(
        np.array([7, 7, 8], np.int32),
        np.array([1, 2, 3]) + 1_700_000_000_000_000,
        ["RUNNING", "STOPPED", "v3"],
        np.zeros(3, np.int32),
    )
    batch = builder.cut()
    assert batch is not None and batch.batch_id.endswith(":text1")
    rb = batch.to_arrow()
    assert is_text(rb)
    back = TextBatch.from_arrow(rb)
    w = TenantWriter(tenant_db, flush_interval_ms=20)
    await w.start()
    first = await w.write_text(back)
    again = await w.write_text(back)
    await w.stop()
    assert not first.duplicate and again.duplicate
    conn = await asyncpg.connect(tenant_db)
    rows = await conn.fetch(
        "SELECT tag_id, value, (extract(epoch FROM time) * 1e6)::int8 AS t FROM scada_readings_text ORDER BY time"
    )
    await conn.close()
    assert [(r["tag_id"], r["value"]) for r in rows] == [(7, "RUNNING"), (7, "STOPPED"), (8, "v3")]
    assert rows[0]["t"] == 1_700_000_000_000_001
