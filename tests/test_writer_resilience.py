"""The writer through outages, bad batches and bad values, against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest
import redis.asyncio as aioredis

from ingest.core.batch import ReadingBatch, TextBatch
from ingest.core.config import Settings
from ingest.core.errors import SpoolFull
from ingest.core.models import Quality, quality_as_int4
from ingest.core.order import Place
from ingest.device.sender import BatchSender, gap_markers
from ingest.write.fanout import RedisFanout, channel, latest_key
from ingest.write.rules import TagRules
from ingest.write.spool import Quarantine, RedisSpool
from ingest.write.validation import Validator
from ingest.write.writer import TenantWriter
from tests.conftest import fresh_database
from tests.helpers import wait_until
from tests.tcp_proxy import TcpProxy

T0 = 1_750_000_000_000_000


@pytest.fixture
async def db(stack: Settings) -> str:
    return await fresh_database(stack, "r")


@pytest.fixture
async def redis(stack: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(stack.redis_url)
    yield r
    await r.aclose()


def seq_batch(source: str, seq: int, tags: int = 10, per_tag: int = 100) -> ReadingBatch:
    """Batch ``seq`` of a counting producer: tag t gets values seq*per_tag + 1 .. + per_tag."""
    n = tags * per_tag
    k = np.arange(n)
    tag = (k % tags + 1).astype(np.int32)
    step = seq * per_tag + k // tags
    return ReadingBatch(
        f"{source}:{seq}", T0 + step * 1000, tag, (step + 1).astype(np.float64), np.zeros(n, np.int32)
    )


async def count_check(dsn: str, tags: int, per_tag_total: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT tag_id, count(*) n, count(DISTINCT value) d, min(value) lo,"
            " max(value) hi FROM scada_readings GROUP BY tag_id ORDER BY 1"
        )
    finally:
        await conn.close()
    assert [(r["tag_id"], r["n"], r["d"], r["lo"], r["hi"]) for r in rows] == [
        (t, per_tag_total, per_tag_total, 1.0, float(per_tag_total)) for t in range(1, tags + 1)
    ]


async def test_outage_spools_then_drains_in_order_exactly_once(
    stack: Settings, db: str, redis: aioredis.Redis
) -> None:
    proxy = TcpProxy(stack.pg_host, stack.pg_port)
    await proxy.start()
    tenant = f"spool{uuid.uuid4().hex[:6]}"
    spool = RedisSpool(redis, tenant, max_rows=1_000_000)
    dsn = stack.dsn(db).replace(f":{stack.pg_port}/", f":{proxy.port}/")
    w = TenantWriter(dsn, flush_interval_ms=20, spool=spool, backoff_initial_s=0.1, backoff_max_s=0.5)
    await w.start()
    results = [await w.write(seq_batch("p", i)) for i in range(5)]
    assert not any(r.spooled for r in results)
    await proxy.cut()
    during = [await w.write(seq_batch("p", i)) for i in range(5, 15)]
    assert all(r.spooled for r in during)
    assert await spool.depth() == 10 and w.stats.spool_rows == 10_000
    # A resend of a batch that is only in the spool is harmless too.
    await w.write(seq_batch("p", 7))
    await proxy.restore()
    after = [await w.write(seq_batch("p", i)) for i in range(15, 20)]
    await wait_until(lambda: w.stats.spool_rows == 0, "the spool drained", 10)
    await w.stop()
    await proxy.cut()
    assert w.stats.spool_rows == 0 and await spool.depth() == 0 and await spool.rows() == 0
    assert len(after) == 5
    await count_check(stack.dsn(db), tags=10, per_tag_total=20 * 100)
    # In order: commit times never go backwards along the producer's sequence.
    conn = await asyncpg.connect(stack.dsn(db))
    rows = await conn.fetch("SELECT batch_id, committed_at FROM ingest_ledger")
    await conn.close()
    by_seq = sorted((int(r["batch_id"].split(":")[1]), r["committed_at"]) for r in rows)
    assert [s for s, _ in by_seq] == list(range(20))
    times = [t for _, t in by_seq]
    assert times == sorted(times)


async def test_text_batches_spool_in_an_outage_and_drain_exactly_once(
    stack: Settings, db: str, redis: aioredis.Redis
) -> None:
    def text(seq: int) -> TextBatch:
        return TextBatch(
            f"p:text{seq}",
            T0 + np.arange(3, dtype=np.int64) * 1000 + seq * 10_000,
            np.full(3, 7, np.int32),
            [f"s{seq}.{i}" for i in range(3)],
            np.zeros(3, np.int32),
        )

    proxy = TcpProxy(stack.pg_host, stack.pg_port)
    await proxy.start()
    spool = RedisSpool(redis, f"tspool{uuid.uuid4().hex[:6]}", max_rows=1_000_000)
    drained = asyncio.Event()  # the resend below is recognised when the spool drains

    def on_event(reason: str, _: int) -> None:
        if reason == "duplicate":
            drained.set()

    w = TenantWriter(
        stack.dsn(db).replace(f":{stack.pg_port}/", f":{proxy.port}/"),
        flush_interval_ms=20,
        spool=spool,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
        on_event=on_event,
    )
    await w.start()
    assert not (await w.write_text(text(0))).spooled
    await proxy.cut()
    during = [
        await w.write_text(text(1)),
        await w.write(seq_batch("p", 0)),
        await w.write_text(text(2)),
        await w.write_text(text(1)),
    ]  # the last: a resend
    assert all(r.spooled for r in during)
    await proxy.restore()
    await asyncio.wait_for(drained.wait(), 60)
    # The flush loop finishes the drain before it takes a new batch, so this one is not spooled.
    assert not (await w.write_text(text(3))).spooled
    assert await spool.depth() == 0
    await w.stop()
    await proxy.cut()
    conn = await asyncpg.connect(stack.dsn(db))
    values = [r[0] for r in await conn.fetch("SELECT value FROM scada_readings_text ORDER BY time")]
    ledger = {r[0] for r in await conn.fetch("SELECT batch_id FROM ingest_ledger")}
    assert await conn.fetchval("SELECT count(*) FROM scada_readings") == 1000
    await conn.close()
    assert values == [f"s{s}.{i}" for s in range(4) for i in range(3)]
    assert ledger == {"p:text0", "p:text1", "p:text2", "p:text3", "p:0"}
    assert w.stats.duplicates == 1


async def test_full_spool_pushes_back_and_sender_records_gaps(stack: Settings, redis: aioredis.Redis) -> None:
    tenant = f"full{uuid.uuid4().hex[:6]}"
    spool = RedisSpool(redis, tenant, max_rows=2_500)
    await spool.push([seq_batch("p", 0), seq_batch("p", 1)])
    with pytest.raises(SpoolFull):
        await spool.push([seq_batch("p", 2)])
    # The sender, refused, sheds its oldest readings into gap markers once over its bound.
    gaps: list[int] = []

    async def refuse(_: ReadingBatch, _place: Place) -> None:
        raise SpoolFull("full")

    sender = BatchSender(
        refuse, max_inflight=1, max_unacked_rows=2_500, on_gap=gaps.append, backoff_initial_s=0.05
    )
    sender.start()
    for i in range(5):
        sender.submit(seq_batch("q", i))
    await wait_until(lambda: sender.gap_readings >= 2_000, "the oldest readings shed into gaps")
    await sender.stop()
    assert sender.unacked_rows <= 2_500
    assert sum(gaps) == sender.gap_readings and sender.gap_readings >= 2_000
    assert all(len(b) == 10 for b in sender._queue if b.batch_id.endswith(":gap"))


def test_gap_marker_counts_what_it_replaces() -> None:
    b = seq_batch("p", 3, tags=4, per_tag=25)
    g = gap_markers(b)
    assert g.batch_id == "p:3:gap"
    assert g.tag_id.tolist() == [1, 2, 3, 4]
    assert g.value.tolist() == [25.0] * 4
    assert g.time_us.tolist() == [T0 + 3 * 25 * 1000] * 4
    assert set(g.quality.tolist()) == {quality_as_int4(Quality.BAD_DATA_LOST)}


async def test_permanent_error_quarantines_only_the_bad_batch(
    stack: Settings, db: str, redis: aioredis.Redis
) -> None:
    q = Quarantine(redis, f"q{uuid.uuid4().hex[:6]}")
    w = TenantWriter(stack.dsn(db), flush_interval_ms=50, quarantine=q)
    await w.start()
    bad = seq_batch("p", 1)
    bad.time_us[5] = -(2**62)  # before 4713 BC, outside PostgreSQL's range: refused for good
    good = [seq_batch("p", 0), seq_batch("p", 2)]
    r = await asyncio.gather(w.write(good[0]), w.write(bad), w.write(good[1]))
    await w.stop()
    assert [x.quarantined for x in r] == [False, True, False]
    listed = await q.list()
    assert [x["batch_id"] for x in listed] == ["p:1"] and "range" in listed[0]["error"]
    conn = await asyncpg.connect(stack.dsn(db))
    assert await conn.fetchval("SELECT count(*) FROM scada_readings") == 2000
    await conn.close()
    # After the cause is fixed, an operator replays it from the quarantine.
    fixed = await q.take("p:1")
    assert fixed is not None and await q.list() == []


async def test_validation_flags_and_rejects_are_counted_and_written_once(stack: Settings, db: str) -> None:
    v = Validator(
        [
            TagRules(1, valid_min=0, valid_max=100, out_of_range="flag"),
            TagRules(2, valid_min=0, valid_max=100, out_of_range="reject"),
        ]
    )
    w = TenantWriter(stack.dsn(db), flush_interval_ms=20, validator=v)
    await w.start()
    b = ReadingBatch(
        "v:1",
        T0 + np.arange(6) * 1000,
        np.array([1, 1, 2, 2, 1, 2], np.int32),
        np.array([5.0, 500.0, 7.0, -3.0, np.nan, 8.0]),
        np.zeros(6, np.int32),
    )
    await w.write(b)
    await w.write(b)  # a resend: not validated again, not counted again
    await w.stop()
    conn = await asyncpg.connect(stack.dsn(db))
    rows = await conn.fetch("SELECT tag_id, value, quality FROM scada_readings ORDER BY time")
    ledger = await conn.fetchrow("SELECT rows, received FROM ingest_ledger")
    await conn.close()
    q = {(r["tag_id"], r["value"] if r["value"] == r["value"] else "nan"): r["quality"] for r in rows}
    assert q[(1, 500.0)] == quality_as_int4(Quality.BAD_OUT_OF_RANGE)
    assert q[(1, "nan")] == quality_as_int4(Quality.BAD)
    assert (2, -3.0) not in q and q[(2, 7.0)] == 0
    assert (ledger["rows"], ledger["received"]) == (5, 6)
    assert w.stats.rejections["out_of_range_flagged"] == 1
    assert w.stats.rejections["out_of_range_rejected"] == 1
    assert w.stats.rejections["nan"] == 1


async def test_fanout_latest_values_and_channel(stack: Settings, db: str, redis: aioredis.Redis) -> None:
    tenant = f"fan{uuid.uuid4().hex[:6]}"
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel(tenant))
    w = TenantWriter(stack.dsn(db), flush_interval_ms=20, fanout=RedisFanout(redis, tenant))
    await w.start()
    await w.write(seq_batch("f", 0, tags=3, per_tag=10))
    msg = None
    for _ in range(100):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg:
            break
    await w.stop()
    await pubsub.aclose()
    assert msg is not None
    summary = json.loads(msg["data"])
    assert (summary["rows"], summary["tags"]) == (30, 3)
    latest = await redis.hgetall(latest_key(tenant))
    assert {k.decode(): json.loads(v)["v"] for k, v in latest.items()} == {"1": 10.0, "2": 10.0, "3": 10.0}


async def test_redis_down_never_blocks_database_writes(stack: Settings, db: str) -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    fan = RedisFanout(dead, "nobody")
    w = TenantWriter(stack.dsn(db), flush_interval_ms=20, fanout=fan)
    await w.start()
    for i in range(5):
        r = await asyncio.wait_for(w.write(seq_batch("d", i)), 30)
        assert r.rows == 1000
    await wait_until(lambda: fan.errors >= 1, "the fan-out to notice Redis is away")
    await w.stop()
    await count_check(stack.dsn(db), tags=10, per_tag_total=500)
