"""One live subscription, whatever the transport: auth from a ticket or a key, the tags it
watches, and the events it gets (serve_app.routes_live sends them as SSE or WebSocket frames).

The replica holds one ``LiveParts``: its own Redis client for the tenant feeds (XREAD BLOCK
holds a connection per tenant, so the feeds do not share the request client and its short
socket timeout) and one ``LiveHub``, so 200 subscribers of 10 tenants cost 10 Redis readers.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ingest.core.errors import AuthError, InvalidQuery, TenantMismatch, TenantNotFound
from ingest.core.metrics import Metrics, safe
from ingest.core.models import Tenant
from ingest.live import tickets
from ingest.live.events import (
    Value,
    Wire,
    conflated_event,
    heartbeat_event,
    is_stream_id,
    reset_event,
    snapshot_event,
)
from ingest.live.hub import BLOCK_MS, LiveHub
from ingest.live.queue import SubscriberQueue
from ingest.read.catalog import Catalog, TagInfo
from ingest.read.latest import latest_values
from ingest.read.rollups import EPOCH
from ingest.write.fanout import every_key
from serve_app.deps import authorize
from serve_app.routes_read import MAX_LATEST_TAGS, ReadCaches, _catalog_and_tags, cached_principal
from serve_app.state import ApiState

log = logging.getLogger(__name__)

# What an API key looks like (ingest.core.keys): refused with a pointer to tickets if sent as one.
_API_KEY = re.compile(r"^[a-z]{2,8}_[0-9a-f]{12}_")


class LiveParts:
    """The replica's live side: the hub and the subscriber counts behind the gauge."""

    def __init__(self, api: ApiState) -> None:
        self.api = api
        feeds = aioredis.from_url(
            api.settings.redis_url, socket_timeout=BLOCK_MS / 1000 + 10, socket_connect_timeout=5
        )
        pool = aioredis.BlockingConnectionPool.from_url(
            api.settings.redis_url, max_connections=16, timeout=30, socket_timeout=10, socket_connect_timeout=10
        )
        self.hub = LiveHub(feeds, commands=aioredis.Redis(connection_pool=pool))
        self.counts: dict[tuple[str, str], int] = {}

    def count(self, slug: str, transport: str, delta: int) -> None:
        n = self.counts.get((slug, transport), 0) + delta
        self.counts[(slug, transport)] = n
        safe(Metrics.get().live_subscribers.set, n, {"tenant": slug, "transport": transport})

    def conflated(self, slug: str, n: int) -> None:
        safe(Metrics.get().live_conflated.inc, n, {"tenant": slug})


async def tenant_from_ticket(api: ApiState, ref: str, ticket: str) -> Tenant:
    if _API_KEY.match(ticket):
        raise AuthError(
            "an API key is never accepted in a URL: exchange it for a ticket (POST .../stream-tickets)"
        )
    tenant_id = await tickets.redeem(api.redis(), ticket)
    if tenant_id is None:
        raise AuthError("stream ticket unknown, expired or already used")
    try:
        t = await api.part(ReadCaches).tenant(ref)
    except TenantNotFound as e:
        raise TenantMismatch(f"no access to tenant {ref!r}") from e
    if t.id != tenant_id:
        raise TenantMismatch(f"no access to tenant {ref!r}")
    return t


async def live_tenant(api: ApiState, ref: str, ticket: str | None, authorization: str | None) -> Tenant:
    """The tenant a live connection may watch: by single-use ticket, else by key (header)."""
    if ticket is not None:
        return await tenant_from_ticket(api, ref, ticket)
    caller = await cached_principal(api, authorization)
    return await authorize(api, caller, ref, "read", lookup=api.part(ReadCaches).tenant)


@dataclass(frozen=True)
class Watch:
    """What a subscription watches: ``tag_ids`` None for every tag of the tenant."""

    tag_ids: frozenset[int] | None
    snapshot_tags: list[TagInfo]


async def resolve_watch(
    api: ApiState, t: Tenant, tag_id: list[int] | None, well: str | None, tag: list[str] | None
) -> Watch:
    caches = api.part(ReadCaches)
    pool = await caches.read_pool(t)
    if not tag_id and well is None:
        if tag:
            raise InvalidQuery("tag", "tag names need `well`")
        cat = await caches.catalogs.get(t.id, lambda: Catalog.load(pool))
        return Watch(None, list(cat.tags.values())[:MAX_LATEST_TAGS])
    _, tags = await _catalog_and_tags(api, t, pool, tag_id, well, tag, MAX_LATEST_TAGS)
    return Watch(frozenset(x.tag_id for x in tags), tags)


def check_since(since: str | None) -> str | None:
    if since is None or since == "":
        return None
    if not is_stream_id(since):
        raise InvalidQuery("since", "a stream id like 1700000000000-0 (an event's id)")
    return since


EVERY_TTL_S = 30  # the every-value request lapses this long after its last subscriber left


class EveryRequest:
    """Keeps the tenant's every-value request (ingest.write.fanout.every_key) alive while a
    subscriber that asked for every value is connected: refreshed every third of its TTL."""

    def __init__(self, api: ApiState, slug: str) -> None:
        self.api, self.key, self.at = api, every_key(slug), 0.0

    async def refresh(self) -> None:
        if time.monotonic() - self.at < EVERY_TTL_S / 3:
            return
        try:
            await self.api.redis().set(self.key, 1, ex=EVERY_TTL_S)
            self.at = time.monotonic()
        except (RedisError, OSError) as e:  # the feed reports Redis being away; retried next time
            log.debug("live: every-value request not refreshed: %s", e)


async def events(
    api: ApiState, t: Tenant, watch: Watch, since: str | None, every: bool = False
) -> AsyncGenerator[Wire]:
    """Snapshot (unless resuming), then updates, conflation notices and heartbeats, until the
    subscriber is closed (lagging too long) or the caller stops iterating. With ``every``, the
    writer puts every value on the stream (from its next look, within about a second; each
    update says whether it holds every value)."""
    parts = api.part(LiveParts)
    s = api.settings
    sub = SubscriberQueue(
        watch.tag_ids,
        max_entries=s.live_queue_entries,
        max_lag_s=s.live_max_lag_s,
        on_conflated=lambda n: parts.conflated(t.slug, n),
        every=every,
    )
    request = EveryRequest(api, t.slug) if every else None
    if request is not None:
        await request.refresh()
    idle_s = s.live_heartbeat_s if request is None else min(s.live_heartbeat_s, EVERY_TTL_S / 3)
    pos = await parts.hub.subscribe(t.slug, sub, since)
    try:
        last = since or "0-0"
        if pos.snapshot_id is not None:
            if pos.reset is not None:
                yield Wire.of(reset_event(pos.reset))
            pool = await api.part(ReadCaches).read_pool(t)
            found = await latest_values(api.redis(), pool, t.slug, watch.snapshot_tags)
            values: list[Value] = [
                (v.tag.tag_id, _us(v.time), v.value, int(v.quality or 0)) for v in found if v.time is not None
            ]
            last = pos.snapshot_id
            yield Wire.of(snapshot_event(last, values))
        while True:
            if request is not None:
                await request.refresh()
            if not await sub.wait(idle_s):
                yield Wire.of(heartbeat_event(last))
                continue
            if sub.closed is not None:
                yield Wire.of({"type": "closed", "reason": sub.closed, "id": last})
                return
            entries, skipped = sub.take()
            if skipped:
                yield Wire.of(conflated_event(entries[-1].id, skipped))
            for e in entries:
                last = e.id
                yield e.wire()
    finally:
        await parts.hub.unsubscribe(t.slug, sub)


def _us(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)
