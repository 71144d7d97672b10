"""Liveness probes of the shared services (master database, Redis), for health endpoints.

Each probe answers within its timeout and raises ``StorageUnavailable`` naming the failure, so a
caller reports every component separately instead of failing on the first.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ingest.core.config import Settings
from ingest.core.errors import StorageUnavailable
from ingest.store.master import MasterStore


def redis_client(settings: Settings) -> aioredis.Redis:
    return aioredis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)


async def ping_master(master: MasterStore, timeout_s: float = 2.0) -> None:
    try:
        await asyncio.wait_for(master.ping(), timeout_s)
    except StorageUnavailable:
        raise
    except Exception as e:  # asyncpg, OSError, timeout: all mean "not answering"
        raise StorageUnavailable(f"master database: {type(e).__name__}") from e


async def ping_redis(client: aioredis.Redis, timeout_s: float = 2.0) -> None:
    try:
        await asyncio.wait_for(client.ping(), timeout_s)
    except (RedisError, OSError, TimeoutError) as e:
        raise StorageUnavailable(f"redis: {type(e).__name__}") from e
