"""The coordinator: one detached, named actor that reconciles desired state with running actors.

Desired state comes from the databases (ingest.desired_state); connections are spread over the
connection-actor slots by rendezvous hashing (ingest.sharding). A slot is re-told its connections
only when its set changed or the actor came back empty after a restart, so healthy sessions are
never restarted by a reconcile pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from actors.common import CONCURRENCY_GROUPS, conn_name, writer_name
from actors.connection import ConnectionActor
from actors.writer import WriterActor
from ingest.config import Settings
from ingest.desired_state import DesiredState, DesiredStateReader
from ingest.master import MasterStore
from ingest.models import ConnectionSpec
from ingest.sharding import assign_connections

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, concurrency_groups=CONCURRENCY_GROUPS)
class CoordinatorActor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._master: MasterStore | None = None
        self._reader: DesiredStateReader | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._writers: dict[str, Any] = {}
        self._slots: dict[str, Any] = {}
        self.last_state = DesiredState()
        self.last_assignment: dict[str, str] = {}
        self.last_pass: dict[str, Any] = {}
        self.passes = 0

    async def _ensure_master(self) -> DesiredStateReader:
        if self._reader is None:
            self._master = await MasterStore.connect(self.settings)
            self._reader = DesiredStateReader(self._master)
        return self._reader

    @ray.method(concurrency_group="data")
    async def start(self) -> bool:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop())
        return True

    @ray.method(concurrency_group="health")
    async def notify(self) -> None:
        """Something changed in the databases: reconcile now rather than at the next tick."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile pass failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()

    def _writer(self, tenant_id: str, slug: str) -> Any:
        if tenant_id not in self._writers:
            self._writers[tenant_id] = WriterActor.options(  # type: ignore[attr-defined]
                name=writer_name(slug), namespace=self.settings.namespace, lifetime="detached",
                get_if_exists=True,
            ).remote(self.settings, tenant_id, slug)
        return self._writers[tenant_id]

    def _slot(self, name: str) -> Any:
        if name not in self._slots:
            self._slots[name] = ConnectionActor.options(  # type: ignore[attr-defined]
                name=name, namespace=self.settings.namespace, lifetime="detached",
                get_if_exists=True, scheduling_strategy="SPREAD",
            ).remote(self.settings, name)
        return self._slots[name]

    @ray.method(concurrency_group="data")
    async def reconcile(self) -> dict[str, Any]:
        async with self._lock:
            t0 = time.monotonic()
            reader = await self._ensure_master()
            state = await reader.read()
            for t in state.tenants:
                self._writer(t.id, t.slug)
            slots = [conn_name(i) for i in range(self.settings.conn_actors)]
            specs = {s.connection_id: s for s in state.all_specs()}
            assignment = assign_connections(
                {cid: s.weight for cid, s in specs.items()}, slots, slack=0.25
            )
            per_slot: dict[str, list[ConnectionSpec]] = {s: [] for s in slots}
            for cid, slot in assignment.items():
                per_slot[slot].append(specs[cid])
            changes: dict[str, Any] = {}
            for slot, wanted in per_slot.items():
                actor = self._slot(slot)
                try:
                    running = await asyncio.wait_for(actor.status.remote(), 10)
                    have = {c: v["fingerprint"] for c, v in running["connections"].items()}
                except Exception as e:
                    changes[slot] = {"error": f"{type(e).__name__}"}
                    continue
                want = {s.connection_id: s.fingerprint() for s in wanted}
                if have != want:
                    try:
                        changes[slot] = await asyncio.wait_for(actor.apply.remote(wanted), 30)
                    except Exception as e:
                        changes[slot] = {"error": f"{type(e).__name__}: {e}"[:300]}
            if assignment != self.last_assignment and self._master is not None:
                await self._master.save_assignments(
                    {c: (specs[c].tenant_id, s, specs[c].fingerprint()) for c, s in
                     assignment.items()}
                )
            self.last_state, self.last_assignment = state, assignment
            self.passes += 1
            self.last_pass = {
                "at": time.time(), "duration_s": round(time.monotonic() - t0, 3),
                "changes": changes, "degraded": state.degraded,
            }
            return self.last_pass

    @ray.method(concurrency_group="health")
    async def status(self) -> dict[str, Any]:
        slots: dict[str, Any] = {}
        for name, actor in self._slots.items():
            try:
                slots[name] = await asyncio.wait_for(actor.status.remote(), 5)
            except Exception as e:
                slots[name] = {"error": f"{type(e).__name__}"}
        writers: dict[str, Any] = {}
        for t in self.last_state.tenants:
            w = self._writers.get(t.id)
            try:
                writers[t.slug] = await asyncio.wait_for(w.stats.remote(), 5) if w else None
            except Exception as e:
                writers[t.slug] = {"error": f"{type(e).__name__}"}
        return {
            "passes": self.passes,
            "last_pass": self.last_pass,
            "tenants": [
                {"id": t.id, "slug": t.slug, "status": t.status.value,
                 "degraded": self.last_state.degraded.get(t.id),
                 "connections": len(self.last_state.specs.get(t.id, [])),
                 "writer": writers.get(t.slug)}
                for t in self.last_state.tenants
            ],
            "actors": slots,
        }

    @ray.method(concurrency_group="health")
    async def health(self) -> bool:
        return True
