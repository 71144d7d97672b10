"""The fan-out's latest values in Redis (``scada:latest:{slug}``): a value is never replaced by
an older one, whether the newer one was set by this fan-out (known: set without a look) or by
a writer before it (checked in Redis, and remembered), and a Redis that lost the hash gets
newer values back, never older ones. Real Redis, the fan-out driven one send at a time."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis

from ingest.core.batch import ReadingBatch
from ingest.core.config import Settings
from ingest.write.fanout import RedisFanout, latest_key

T0 = 1_750_000_000_000_000


@pytest.fixture
async def redis(stack: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(stack.redis_url)
    yield r
    await r.aclose()


def _batch(*rows: tuple[int, int, float]) -> ReadingBatch:
    """(tag, µs after T0, value) rows."""
    return ReadingBatch(
        f"b{uuid.uuid4().hex[:8]}",
        np.asarray([T0 + dt for _, dt, _ in rows], np.int64),
        np.asarray([tag for tag, _, _ in rows], np.int32),
        np.asarray([v for _, _, v in rows], np.float64),
        np.zeros(len(rows), np.int32),
    )


async def _values(redis: aioredis.Redis, tenant: str) -> dict[int, tuple[int, float]]:
    raw = await redis.hgetall(latest_key(tenant))
    return {int(k): (orjson.loads(v)["t"] - T0, orjson.loads(v)["v"]) for k, v in raw.items()}


async def _send(fan: RedisFanout, *rows: tuple[int, int, float]) -> None:
    fan.submit(_batch(*rows))
    await fan._send()


async def test_latest_values_never_go_back_in_time(redis: aioredis.Redis) -> None:
    tenant = f"fl{uuid.uuid4().hex[:8]}"
    # Tag 1 holds a value set by an earlier writer, newer than what this one sends first.
    await redis.hset(latest_key(tenant), "1", orjson.dumps({"t": T0 + 50, "v": 99.0, "q": 0}))
    fan = RedisFanout(redis, tenant)
    try:
        await _send(fan, (1, 10, 1.0), (2, 10, 2.0))
        assert await _values(redis, tenant) == {1: (50, 99.0), 2: (10, 2.0)}
        # Tag 1 is now known to hold time 50: 20 is older (left out), 60 newer (set).
        await _send(fan, (1, 20, 3.0), (2, 20, 4.0))
        assert await _values(redis, tenant) == {1: (50, 99.0), 2: (20, 4.0)}
        await _send(fan, (1, 60, 5.0), (2, 15, 6.0))  # tag 2's value is a late batch's
        assert await _values(redis, tenant) == {1: (60, 5.0), 2: (20, 4.0)}
        # Redis lost the hash: older values stay out (readers then ask the database), newer
        # ones come back.
        await redis.delete(latest_key(tenant))
        await _send(fan, (1, 55, 7.0), (2, 30, 8.0))
        assert await _values(redis, tenant) == {2: (30, 8.0)}
        # A fan-out after this one (a restarted writer) checks before it sets.
        second = RedisFanout(redis, tenant)
        await _send(second, (2, 25, 9.0), (3, 5, 10.0))
        assert await _values(redis, tenant) == {2: (30, 8.0), 3: (5, 10.0)}
        # Over 500 fields in one send (Lua's unpack is bounded): all set, none lost.
        many = [(tag, 100, float(tag)) for tag in range(10, 1300)]
        await _send(second, *many)
        await _send(second, *[(tag, 200, float(-tag)) for tag, _, _ in many])
        got = await _values(redis, tenant)
        assert all(got[tag] == (200, float(-tag)) for tag, _, _ in many)
    finally:
        await redis.delete(latest_key(tenant))
