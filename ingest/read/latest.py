"""Latest value per tag: from the Redis hash the writer's fan-out keeps (``scada:latest:{slug}``),
and from the database for every tag Redis does not hold (after a Redis restart or flush, for
text tags, or while Redis is away). The answer says where each value came from."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ingest.core.translate import translated
from ingest.read.catalog import TagInfo
from ingest.read.rollups import EPOCH, RAW_TABLE, TEXT_TABLE
from ingest.write.fanout import latest_key

log = logging.getLogger(__name__)

_FROM_DB = """
SELECT u.t AS tag_id, r.time, r.value, r.quality FROM unnest($1::int4[]) AS u(t)
CROSS JOIN LATERAL (SELECT time, value, quality FROM {table} WHERE tag_id = u.t
                    ORDER BY time DESC LIMIT 1) r"""


class LatestValue(NamedTuple):  # a tuple: built 100 times for a request of 100 tags
    tag: TagInfo
    time: datetime | None
    value: Any
    quality: int | None  # as stored (int4)
    source: str  # "redis", "database", or "none" (nothing stored yet)


async def _from_redis(
    client: aioredis.Redis | None,
    slug: str,
    tags: list[TagInfo],
) -> dict[int, LatestValue]:
    if client is None or not tags:
        return {}
    try:
        raw = await client.hmget(latest_key(slug), [str(t.tag_id) for t in tags])
    except (RedisError, OSError) as e:
        log.warning("latest values: Redis unavailable (%s), answering from the database", type(e).__name__)
        return {}
    out: dict[int, LatestValue] = {}
    for t, item in zip(tags, raw, strict=True):
        if item is None:
            continue
        d = orjson.loads(item)
        out[t.tag_id] = LatestValue(t, EPOCH + timedelta(microseconds=int(d["t"])), d["v"], int(d["q"]), "redis")
    return out


@translated
async def latest_values(
    client: aioredis.Redis | None, db: asyncpg.Connection | asyncpg.Pool, slug: str, tags: list[TagInfo]
) -> list[LatestValue]:
    """One HMGET for every numeric tag, then (only for tags Redis does not hold) one statement
    per table."""
    found = await _from_redis(client, slug, [t for t in tags if not t.is_text])
    missing = [t for t in tags if t.tag_id not in found]
    for table, group in (
        (RAW_TABLE, [t for t in missing if not t.is_text]),
        (TEXT_TABLE, [t for t in missing if t.is_text]),
    ):
        if not group:
            continue
        by_id = {t.tag_id: t for t in group}
        for r in await db.fetch(_FROM_DB.format(table=table), list(by_id)):
            found[r["tag_id"]] = LatestValue(by_id[r["tag_id"]], r["time"], r["value"], r["quality"], "database")
    return [found.get(t.tag_id, LatestValue(t, None, None, None, "none")) for t in tags]


def age_s(v: LatestValue, now: datetime | None = None) -> float | None:
    if v.time is None:
        return None
    return ((now or datetime.now(UTC)) - v.time).total_seconds()
