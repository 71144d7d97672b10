"""One Redis reader per tenant per Serve replica, feeding every subscriber of that tenant.

``LiveHub.subscribe`` registers a ``SubscriberQueue`` with the tenant's ``TenantFeed`` (started
on first use, stopped when its last subscriber leaves), then positions it:

- without an id to resume from, at the stream's newest id: the caller sends a snapshot of the
  latest values (read after this point) and the deltas follow. The writer puts values into the
  latest hash before it appends their entry, so nothing between the two is lost;
- with an id still inside the stream, after that id: a catch-up read (XRANGE) fills the queue
  while the feed's own entries are held back, then the held entries follow (ids already queued
  are dropped), so nothing is missed and nothing is sent twice;
- with an id the stream no longer holds (trimmed past it), or an id newer than the stream's
  newest (another stream), as for no id, and the caller sends ``reset`` first.

The feed's loop survives Redis restarts: it retries with backoff from the last id it read, and
the stream is in Redis' append-only file, so subscribers stay connected and miss nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from ingest.core.aio import cancel_and_wait
from ingest.core.backoff import Backoff
from ingest.live.events import ZERO_ID, Entry, parse_id
from ingest.live.queue import SubscriberQueue
from ingest.write.fanout import live_key

log = logging.getLogger(__name__)

CATCH_UP_PAGE = 1000
BLOCK_MS = 5000


@dataclass(frozen=True)
class Position:
    """Where a new subscription starts: ``snapshot_id`` is set when the caller must send a
    snapshot (positioned there), ``reset`` names why a resume was refused."""

    snapshot_id: str | None
    reset: str | None = None


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class TenantFeed:
    """XREAD BLOCK in a loop on one tenant's stream; every entry goes to every subscriber."""

    def __init__(self, client: aioredis.Redis, slug: str) -> None:
        self.client = client
        self.slug = slug
        self.key = live_key(slug)
        self.subscribers: set[SubscriberQueue] = set()
        self.last_id: str | None = None
        self.errors = 0
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"live-feed-{self.slug}")
        await self._started.wait()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def newest_id(self) -> str:
        got = await self.client.xrevrange(self.key, count=1)
        return _s(got[0][0]) if got else ZERO_ID

    async def _run(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                if self.last_id is None:
                    self.last_id = await self.newest_id()
                self._started.set()
                got: Any = await self.client.xread({self.key: self.last_id}, count=CATCH_UP_PAGE, block=BLOCK_MS)
                backoff.reset()
            except (RedisError, OSError) as e:
                self.errors += 1
                log.warning("live feed %s: Redis unavailable (%s), retrying", self.slug, type(e).__name__)
                await asyncio.sleep(backoff.next_delay())
                continue
            except Exception:  # a bug must not silence every subscriber of the tenant for good
                self.errors += 1
                log.exception("live feed %s failed; retrying", self.slug)
                await asyncio.sleep(backoff.next_delay())
                continue
            for _, entries in got or ():
                for entry_id, fields in entries:
                    try:
                        entry = Entry.from_redis(entry_id, fields)
                    except (ValueError, KeyError, TypeError):
                        log.warning("live feed %s: unreadable entry %r skipped", self.slug, entry_id)
                        self.last_id = _s(entry_id)
                        continue
                    self.last_id = entry.id
                    for sub in list(self.subscribers):
                        sub.offer(entry)


class LiveHub:
    """The replica's feeds, one per tenant with subscribers.

    ``client`` serves the feeds (each XREAD BLOCK holds one of its connections); ``commands``,
    when given, serves what a new subscription reads: a client with a bounded, blocking pool, so
    that a crowd reconnecting at once (a replica restart) queues for a few connections instead
    of opening hundreds of them at the same moment."""

    def __init__(
        self,
        client: aioredis.Redis,
        on_count: Callable[[str, int], None] | None = None,
        commands: aioredis.Redis | None = None,
    ) -> None:
        self.client = client
        self.commands = commands or client
        self.feeds: dict[str, TenantFeed] = {}
        self._on_count = on_count

    def _feed(self, slug: str) -> TenantFeed:
        feed = self.feeds.get(slug)
        if feed is None:
            feed = self.feeds[slug] = TenantFeed(self.client, slug)
        return feed

    async def subscribe(self, slug: str, sub: SubscriberQueue, since: str | None) -> Position:
        """Register ``sub`` and position it (see the module doc). Raises RedisError/OSError when
        Redis is away (the caller answers 503 or lets the client retry)."""
        feed = self._feed(slug)
        sub.hold()
        feed.subscribers.add(sub)
        self._count(slug)
        try:
            await feed.start()
            pos = await self._position(feed, sub, since)
        except BaseException:
            await self.unsubscribe(slug, sub)
            raise
        sub.release()
        return pos

    async def _position(self, feed: TenantFeed, sub: SubscriberQueue, since: str | None) -> Position:
        if since is None:
            newest = await self._newest(feed.key)
            sub.cursor = parse_id(newest)
            return Position(newest)
        reason = await self._resume_refused(feed, since)
        if reason is not None:
            newest = await self._newest(feed.key)
            sub.cursor = parse_id(newest)
            return Position(newest, reset=reason)
        start = since
        sub.cursor = parse_id(since)
        while True:
            page: Any = await self.commands.xrange(feed.key, min=f"({start}", max="+", count=CATCH_UP_PAGE)
            for entry_id, fields in page:
                start = _s(entry_id)
                try:
                    e = Entry.from_redis(entry_id, fields)
                except (ValueError, KeyError, TypeError):
                    continue
                sub.catch_up(e)
            if len(page) < CATCH_UP_PAGE:
                return Position(None)

    async def _resume_refused(self, feed: TenantFeed, since: str) -> str | None:
        """Why resuming after ``since`` could miss entries, or None when it cannot.

        Every id a client holds was an entry's (updates, and snapshots positioned at the newest
        entry) or ``0-0``. Trimming removes the oldest entries first, so while ``since`` is
        still in the stream, everything after it is too. (Redis 7.0's ``max-deleted-entry-id``
        would say the same more cheaply, but it follows XDEL only, not XTRIM or MAXLEN.)"""
        if parse_id(since) == (0, 0):
            try:
                info = await self.commands.xinfo_stream(feed.key)
            except ResponseError:  # no stream yet: nothing was missed
                return None
            return None if int(info.get("entries-added", 0)) == int(info.get("length", 0)) else "trimmed"
        found: Any = await self.commands.xrange(feed.key, min=since, max=since, count=1)
        if found:
            return None
        try:
            info = await self.commands.xinfo_stream(feed.key)
            generated = parse_id(_s(info.get("last-generated-id", ZERO_ID)))
        except ResponseError:  # no stream at all (flushed): whatever the id was, it is gone
            generated = (0, 0)
        return "unknown_id" if parse_id(since) > generated else "trimmed"

    async def _newest(self, key: str) -> str:
        got: Any = await self.commands.xrevrange(key, count=1)
        return _s(got[0][0]) if got else ZERO_ID

    async def unsubscribe(self, slug: str, sub: SubscriberQueue) -> None:
        feed = self.feeds.get(slug)
        if feed is None:
            return
        feed.subscribers.discard(sub)
        self._count(slug)
        if not feed.subscribers:
            del self.feeds[slug]
            await feed.stop()

    def _count(self, slug: str) -> None:
        if self._on_count is not None:
            feed = self.feeds.get(slug)
            self._on_count(slug, len(feed.subscribers) if feed else 0)

    async def close(self) -> None:
        for slug in list(self.feeds):
            feed = self.feeds.pop(slug)
            for sub in feed.subscribers:
                sub.close("shutdown")
            await feed.stop()
