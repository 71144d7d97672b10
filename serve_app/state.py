"""What the handlers of one Serve replica share: settings, stores, Redis, actor handles.

The Serve ingress builds one ``ApiState`` per replica and puts it on ``app.state.api``; handlers
reach it through the ``Api`` dependency (serve_app.deps), never through a module global. Clients
and pools are created lazily, on the replica's event loop, by the first request that needs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis

from ingest.core.config import Settings
from ingest.core.errors import StorageUnavailable, TenantUnavailable
from ingest.core.models import Tenant
from ingest.store.master import MasterStore
from ingest.store.probes import ping_master, ping_redis, redis_client
from ingest.store.tenant_store import TenantStore
from serve_app.handles import ActorHandles
from serve_app.schemas import Check, Checks

T = TypeVar("T")


class ApiState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.actors = ActorHandles(settings.namespace)
        self._master: MasterStore | None = None
        self._redis: aioredis.Redis | None = None
        self._stores: dict[str, TenantStore] = {}
        self._store_urls: dict[str, str] = {}  # the database each pool was opened on
        self._parts: dict[Callable[[ApiState], Any], Any] = {}
        self._lock = asyncio.Lock()

    def part(self, kind: Callable[[ApiState], T]) -> T:
        """What a router keeps per replica (caches, clients), built once from this state:
        ``api.part(ReadCaches)``. Held here, so no router needs a module global."""
        if kind not in self._parts:
            self._parts[kind] = kind(self)
        out: T = self._parts[kind]
        return out

    async def master(self) -> MasterStore:
        if self._master is None:
            async with self._lock:
                if self._master is None:
                    self._master = await MasterStore.connect(self.settings)
        return self._master

    async def store(self, tenant: Tenant) -> TenantStore:
        """The tenant's database pool, opened on first use, and again after a move (the tenant
        row, cached for a few seconds, names another database)."""
        if tenant.id in self._stores and self._store_urls.get(tenant.id) != tenant.database_url:
            await self.forget_tenant(tenant.id)
        if tenant.id not in self._stores:
            master = await self.master()
            dsn = await master.tenant_dsn(tenant.id)
            async with self._lock:
                if tenant.id not in self._stores:
                    try:
                        self._stores[tenant.id] = await TenantStore.connect(dsn, master.box)
                        self._store_urls[tenant.id] = tenant.database_url
                    except StorageUnavailable as e:
                        raise TenantUnavailable(f"tenant database unreachable: {e}") from e
        return self._stores[tenant.id]

    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = redis_client(self.settings)
        return self._redis

    async def checks(self) -> Checks:
        """Master database, Redis and coordinator, probed side by side, each on its own."""

        async def master() -> None:
            await ping_master(await self.master())

        async def coordinator() -> None:
            await self.actors.coordinator("health", timeout_s=2.0)

        names = ("master_db", "redis", "coordinator")
        results = await asyncio.gather(master(), ping_redis(self.redis()), coordinator(), return_exceptions=True)
        out = {}
        for name, r in zip(names, results, strict=True):
            if isinstance(r, BaseException):
                error = str(r) if isinstance(r, StorageUnavailable) else f"{type(r).__name__}: {r}"
                out[name] = Check(ok=False, error=error)
            else:
                out[name] = Check(ok=True)
        return Checks(**out)

    async def forget_tenant(self, tenant_id: str) -> None:
        """A deleted tenant: close its pools in this replica and drop what its parts remember
        (other replicas let theirs go when the tenant lookup fails, within their cache time)."""
        store = self._stores.pop(tenant_id, None)
        if store is not None:
            await store.close()
        for part in self._parts.values():
            forget = getattr(part, "forget", None)
            if forget is not None:
                await forget(tenant_id)

    async def close(self) -> None:
        for store in self._stores.values():
            await store.close()
        self._stores.clear()
        if self._master is not None:
            await self._master.close()
            self._master = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
