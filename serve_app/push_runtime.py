"""What one replica keeps for push ingest: the Redis-backed limiter and idempotency store,
writer handles, tag maps, an auth cache. Built once per ``ApiState`` (``api.part(PushRuntime)``),
on the replica's event loop, by the first push."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from ingest.core.batch import ReadingBatch
from ingest.core.errors import AuthError, SpoolFull, SpoolUnavailable, StorageUnavailable
from ingest.core.models import Tenant
from ingest.push.audit import AuditRow, GroupedAudit
from ingest.push.errors import InvalidToken, PushUnavailable
from ingest.push.idempotency import IdempotencyStore
from ingest.push.limits import PushLimiter
from ingest.push.service import PushService, Stored
from ingest.push.tags import PushTagMap
from ingest.store.credentials import Principal
from serve_app.auth_cache import PrincipalCache
from serve_app.state import ApiState

_AUTH_CACHE_S = 2.0  # a suspended tenant keeps pushing for at most this long (one replica)


class PushRuntime:
    """Redis-backed limiter and idempotency store, writer handles, tag maps, an auth cache.
    Built by the first push on the replica's event loop."""

    def __init__(self, api: ApiState) -> None:
        self.api = api
        settings = api.settings
        self.redis = aioredis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.limiter = PushLimiter(self.redis)
        self.service = PushService(self.limiter, IdempotencyStore(self.redis))
        self._principals = PrincipalCache()
        self._tenants: dict[str, tuple[float, Tenant]] = {}
        self._writers: dict[str, Any] = {}
        self._tags: dict[str, PushTagMap] = {}
        self.audit = GroupedAudit(self._audit_rows)  # pushes' rows, grouped (ingest.push.audit)

    async def _audit_rows(self, rows: list[AuditRow]) -> None:
        await (await self.api.master()).audit_many(rows)

    async def principal(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise InvalidToken("missing Authorization: Bearer <api key>")
        try:
            return await self._principals.get(authorization[7:].strip(), (await self.api.master()).authenticate)
        except AuthError:
            raise InvalidToken("API key invalid, expired or revoked") from None

    async def tenant(self, tenant_id: str) -> Tenant:
        hit = self._tenants.get(tenant_id)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        t = await (await self.api.master()).get_tenant(tenant_id)
        self._tenants[tenant_id] = (now + _AUTH_CACHE_S, t)
        return t

    async def tag_map(self, t: Tenant) -> PushTagMap:
        if t.id not in self._tags:
            self._tags[t.id] = PushTagMap((await self.api.store(t)).pool)
        self._tags[t.id].max_tags = t.max_tags
        return self._tags[t.id]

    async def _writer(self, slug: str) -> Any:
        handle = self._writers.get(slug)
        if handle is not None:
            return handle
        import ray

        from actors.common import writer_name

        name, ns = writer_name(slug), self.api.settings.namespace
        # A tenant created a moment ago gets its writer at the coordinator's next reconcile.
        for _ in range(20):
            try:
                handle = await asyncio.to_thread(ray.get_actor, name, namespace=ns)
                break
            except ValueError:
                await asyncio.sleep(0.25)
        if handle is None:
            raise PushUnavailable("the tenant's writer is not running", retry_after_s=5)
        self._writers[slug] = handle
        return handle

    async def write(self, slug: str, batch: ReadingBatch) -> Stored:
        import ray.exceptions

        handle = await self._writer(slug)
        try:
            r: dict[str, Any] = await handle.write.remote(batch.to_arrow(), prompt=True)
        except SpoolFull:
            # Ray re-raises the actor's exception as a subclass of it: the spool is full.
            raise PushUnavailable(
                "the tenant's database is away and its spool is full; nothing was written", retry_after_s=30
            ) from None
        except (SpoolUnavailable, StorageUnavailable):
            raise PushUnavailable("storage unavailable; nothing was written", retry_after_s=5) from None
        except ray.exceptions.RayActorError:
            self._writers.pop(slug, None)
            raise PushUnavailable("the tenant's writer restarted; retry", retry_after_s=2) from None
        if r["quarantined"]:
            return "quarantined"  # type: ignore[return-value]
        return "spooled" if r["spooled"] else "committed"
