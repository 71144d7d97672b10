"""The writer's hold and release, and the move's copy and verification, against real PostgreSQL
and Redis without Ray: batches written while held are spooled (acknowledged), nothing reaches the
source after the hold, the copy is verified, and after release the spool drains into the new
database, where a resent batch that the source had committed is recognised by the copied ledger."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from ingest.core.config import Settings
from ingest.core.errors import StorageError
from ingest.store.move import MoveReport, copy_and_verify
from ingest.write.spool import RedisSpool
from ingest.write.writer import TenantWriter
from tests.conftest import fresh_database
from tests.helpers import wait_until
from tests.test_writer_resilience import count_check, seq_batch


@pytest.fixture
async def redis(stack: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(stack.redis_url)
    yield r
    await r.aclose()


async def _rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM scada_readings"))
    finally:
        await conn.close()


async def test_hold_spools_then_release_drains_into_the_copy(stack: Settings, redis: aioredis.Redis) -> None:
    source = stack.dsn(await fresh_database(stack, "hs"))
    target = stack.dsn(await fresh_database(stack, "ht"))
    spool = RedisSpool(redis, f"hold{uuid.uuid4().hex[:6]}", max_rows=1_000_000)
    w = TenantWriter(source, flush_interval_ms=20, spool=spool)
    await w.start()
    try:
        before = [await w.write(seq_batch("p", i)) for i in range(3)]
        assert not any(r.spooled for r in before)
        await w.hold()
        during = [await w.write(seq_batch("p", i)) for i in range(3, 6)]
        assert all(r.spooled for r in during)
        again = await w.write(seq_batch("p", 2))  # a resend of a batch the source committed
        assert again.spooled and w.stats.spool_rows == 4 * 1000
        assert await _rows(source) == 3 * 1000  # nothing reached the source after the hold

        report = MoveReport("a", "b")
        await copy_and_verify(source, target, report)
        assert report.rows["scada_readings"] == 3000 and report.rows["ingest_ledger"] == 3
        assert report.days_verified >= 1

        w.release(target)
        await w.write(seq_batch("p", 6))  # joins the spool's tail: drained after it, in order
        await wait_until(lambda: w.stats.spool_rows == 0, "spool drained into the new database")
        await count_check(target, 10, 700)  # 1..700 once per tag: nothing lost, nothing twice
        assert w.stats.spool_rows == 0 and w.stats.duplicates == 1
        assert await _rows(source) == 3000
    finally:
        await w.stop()


async def test_verification_refuses_a_copy_that_differs(stack: Settings) -> None:
    source = stack.dsn(await fresh_database(stack, "vs"))
    target = stack.dsn(await fresh_database(stack, "vt"))
    conn = await asyncpg.connect(source)
    try:
        await conn.execute(
            "INSERT INTO scada_readings "
            "SELECT now() - i * interval '1 hour', 1, i, 0 FROM generate_series(1, 100) i"
        )
    finally:
        await conn.close()
    # A copy that does not land as it left: a trigger on the target changes one value.
    conn = await asyncpg.connect(target)
    try:
        await conn.execute(
            "CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN IF NEW.value = 50 THEN NEW.value := 51; END IF; RETURN NEW; END$$"
        )
        await conn.execute(
            "CREATE TRIGGER bump BEFORE INSERT ON scada_readings FOR EACH ROW EXECUTE FUNCTION bump()"
        )
    finally:
        await conn.close()
    with pytest.raises(StorageError, match="scada_readings differs"):
        await copy_and_verify(source, target, MoveReport("a", "b"))
