"""A tenant's keys in Redis, dropped when the tenant is purged.

A purged tenant's database is gone; what Redis held for it would otherwise stay forever (the slug
stays taken, so nothing reuses the keys): by slug its live stream (capped, yet tens of MB for a
pushing tenant), latest values, spool and quarantine; by id its push limit settings, rate and
volume counters and idempotency records (the counters and records expire, the settings do not).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ingest.core.config import Settings
from ingest.push.idempotency import IDEM_PREFIX
from ingest.push.limits import limit_key_patterns
from ingest.store.probes import redis_client
from ingest.write.fanout import channel, every_key, latest_key, live_key
from ingest.write.spool import quarantine_keys, spool_keys

log = logging.getLogger(__name__)

SCAN_COUNT = 1000


def tenant_key_patterns(slug: str, tenant_id: str) -> list[str]:
    """Every key of the tenant, as names or SCAN patterns (those with a ``*``)."""
    return [
        latest_key(slug),
        live_key(slug),
        every_key(slug),
        channel(slug),
        *spool_keys(slug),
        *quarantine_keys(slug),
        *limit_key_patterns(tenant_id),
        f"{IDEM_PREFIX}:{tenant_id}:*",
    ]


async def drop_tenant_keys(redis: aioredis.Redis, slug: str, tenant_id: str) -> int:
    """Delete every key of the tenant; how many there were."""
    names = tenant_key_patterns(slug, tenant_id)
    n = int(await redis.delete(*[k for k in names if "*" not in k]))
    for pattern in (k for k in names if "*" in k):
        batch: list[bytes] = []
        async for key in redis.scan_iter(match=pattern, count=SCAN_COUNT):
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                n += int(await redis.delete(*batch))
                batch = []
        if batch:
            n += int(await redis.delete(*batch))
    return n


async def drop_tenant_keys_logged(redis: aioredis.Redis, slug: str, tenant_id: str) -> int | None:
    """``drop_tenant_keys`` for a purge that has dropped the database already: Redis away does not
    undo it, it is logged (and None goes into the purge's audit row: the keys are left)."""
    try:
        return await drop_tenant_keys(redis, slug, tenant_id)
    except (RedisError, OSError) as e:
        log.warning("purged tenant %s: its Redis keys are left (%s)", slug, type(e).__name__)
        return None


async def drop_keys_of_purged(settings: Settings, purged: list[tuple[str, str]]) -> dict[str, int | None]:
    """``drop_tenant_keys_logged`` for each (id, slug) purged; the count of keys by tenant id."""
    if not purged:
        return {}
    redis = redis_client(settings)
    try:
        return {tid: await drop_tenant_keys_logged(redis, slug, tid) for tid, slug in purged}
    finally:
        await redis.aclose()
