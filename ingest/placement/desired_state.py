"""What should be running: active tenants and their enabled connections, read from the databases.

A tenant whose database cannot be read is reported degraded and keeps its last known connections,
so its devices keep streaming (and buffering) while the database is away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ingest.core.backoff import Backoff
from ingest.core.models import ConnectionSpec, Tenant, TenantStatus
from ingest.store.master import MasterStore
from ingest.store.tenant_store import TenantStore

log = logging.getLogger(__name__)


@dataclass
class DesiredState:
    tenants: list[Tenant] = field(default_factory=list)
    specs: dict[str, list[ConnectionSpec]] = field(default_factory=dict)  # tenant id -> specs
    degraded: dict[str, str] = field(default_factory=dict)  # tenant id -> error

    def all_specs(self) -> list[ConnectionSpec]:
        return [s for t in self.tenants for s in self.specs.get(t.id, [])]


class DesiredStateReader:
    def __init__(self, master: MasterStore, timeout_s: float = 5.0) -> None:
        self.master = master
        self.timeout_s = timeout_s
        self._stores: dict[str, TenantStore] = {}
        self._urls: dict[str, str] = {}  # the database each store was opened on (a move changes it)
        self._last: dict[str, list[ConnectionSpec]] = {}
        # Degraded tenants are retried with capped exponential backoff: tenant id -> (next try,
        # its backoff).
        self._retry: dict[str, tuple[float, Backoff]] = {}
        self._errors: dict[str, str] = {}
        self._recorded: dict[str, tuple[str, str | None]] = {}  # connection -> (state, error) written

    async def _store(self, tenant: Tenant) -> TenantStore:
        if tenant.id in self._stores and self._urls.get(tenant.id) != tenant.database_url:
            await self._stores.pop(tenant.id).close()
        if tenant.id not in self._stores:
            dsn = await self.master.tenant_dsn(tenant.id)
            self._stores[tenant.id] = await asyncio.wait_for(
                TenantStore.connect(dsn, self.master.box, max_size=2), self.timeout_s
            )
            self._urls[tenant.id] = tenant.database_url
        return self._stores[tenant.id]

    async def read(self) -> DesiredState:
        state = DesiredState(tenants=await self.master.list_tenants(TenantStatus.ACTIVE))
        now = time.monotonic()
        for t in state.tenants:
            retry = self._retry.get(t.id)
            if retry is not None and now < retry[0]:
                state.degraded[t.id] = self._errors.get(t.id, "retrying")
                state.specs[t.id] = self._last.get(t.id, [])
                continue
            try:
                store = await self._store(t)
                specs = await asyncio.wait_for(store.load_specs(t), self.timeout_s)
                self._last[t.id] = specs
                self._retry.pop(t.id, None)
                self._errors.pop(t.id, None)
            except Exception as e:  # any failure of one tenant must not stop the others
                err = f"{type(e).__name__}: {e}"[:300]
                state.degraded[t.id] = self._errors[t.id] = err
                backoff = retry[1] if retry else Backoff(1.0, 30.0)
                self._retry[t.id] = (now + backoff.next_delay(), backoff)
                stale = self._stores.pop(t.id, None)
                if stale is not None:
                    stale.pool.terminate()
                specs = self._last.get(t.id, [])
            state.specs[t.id] = specs
        active = {t.id for t in state.tenants}
        for tid in list(self._stores):
            if tid not in active:
                await self._stores.pop(tid).close()
        return state

    async def record_changed(self, specs: dict[str, ConnectionSpec], status: dict[str, dict[str, Any]]) -> None:
        """Write each session's state (``status``: the connection actors' last answers) to its
        tenant's database when it changed since last written; a database away gets it later."""
        changed: dict[str, dict[str, tuple[str, str | None]]] = {}
        for st in status.values():
            for cid, c in st["connections"].items():
                now = (str(c["state"]), c.get("error"))
                if cid in specs and self._recorded.get(cid) != now:
                    changed.setdefault(specs[cid].tenant_id, {})[cid] = now
        for tenant_id, states in changed.items():
            try:
                await self.record_states(tenant_id, states)
                self._recorded.update(states)
            except Exception as e:
                err = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                log.warning("connection states of tenant %s not recorded: %s", tenant_id, err)

    async def record_states(self, tenant_id: str, states: dict[str, tuple[str, str | None]]) -> None:
        """Write the sessions' states (connection id -> (state, error)) to the tenant's database,
        where the connection routes show them. Skipped while that database is away."""
        store = self._stores.get(tenant_id)
        if store is None:
            return
        for cid, (state, error) in states.items():
            await asyncio.wait_for(store.record_connection_state(cid, state, error), self.timeout_s)

    async def close(self) -> None:
        for s in self._stores.values():
            await s.close()
        self._stores.clear()
