"""The coordinator: one detached, named actor that reconciles desired state with running actors.

Desired state comes from the databases (ingest.placement.desired_state). Connection actors are pinned to the
alive nodes (ingest.placement.pool) and connections are spread over the healthy ones by rendezvous hashing
(ingest.placement.sharding). A slot is re-told its connections only when its set changed or the actor came
back empty after a restart, so healthy sessions are never restarted by a reconcile pass, and a
restarted coordinator, computing the same assignment, moves nothing.

A slot whose status call fails (actor died, node gone, or no answer within the health timeout) is
left out of the assignment at once: its connections start elsewhere in the same pass.

It acts only while it holds the master database's coordinator lock (ingest.store.leadership): a
second cluster pointed at the same databases stands by instead of polling every device again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.common import CONCURRENCY_GROUPS, writer_name
from actors.connection import ConnectionActor
from actors.writer import WriterActor
from ingest.core.config import Settings
from ingest.placement.desired_state import DesiredState, DesiredStateReader
from ingest.placement.moves import apply_rounds
from ingest.placement.pool import actors_per_node, desired_slots
from ingest.placement.sharding import assign_connections
from ingest.placement.status_view import cluster_status, live_connections
from ingest.placement.tenant_keys import drop_keys_of_purged
from ingest.store.leadership import Leadership
from ingest.store.master import MasterStore

log = logging.getLogger(__name__)


def _describe(e: BaseException) -> str:
    """An error in one line: its type and message (a Ray task error's cause, not its traceback)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


NODE_WATCH_S = 0.2  # how often the coordinator asks Ray which nodes are alive
WRITER_START_EVERY_S = 30.0  # how often an idle writer is told to start (after a restart of it)


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))  # type: ignore[no-untyped-call]


@ray.remote(
    num_cpus=0,
    max_restarts=-1,
    max_task_retries=0,  # type: ignore[call-overload]  # Ray's stubs lack concurrency_groups
    concurrency_groups=CONCURRENCY_GROUPS,
)
class CoordinatorActor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._master: MasterStore | None = None
        self._reader: DesiredStateReader | None = None
        self._loop_task: asyncio.Task[None] | None = None
        # Created here, used on the data loop only (the concurrency rule in actors.common).
        self._data_loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._writers: dict[str, Any] = {}
        self._writer_start_due: dict[str, float] = {}  # tenant id -> when to call start() again
        self._slots: dict[str, Any] = {}  # slot name -> handle
        self._slot_nodes: dict[str, str] = {}
        self._last_status: dict[str, dict[str, Any]] = {}
        self._slow: dict[str, int] = {}  # slot -> consecutive probe timeouts
        self._last_good: dict[str, dict[str, Any]] = {}  # slot -> its last answered status
        self.last_state = DesiredState()
        self.last_assignment: dict[str, str] = {}
        self.last_pass: dict[str, Any] = {}
        self.passes = 0
        self.moves = 0
        self._next_purge = 0.0  # monotonic time of the next check for deleted tenants to purge
        self._leadership: Leadership | None = None
        # Start the loop by itself, also after Ray restarts this actor. A call queued from
        # __init__ can be refused while Ray still marks the actor as restarting, so a watcher
        # thread repeats it until the loop runs.
        threading.Thread(target=self._kick, daemon=True, name="coordinator-kick").start()
        # A node joining or leaving wakes the reconcile loop at once rather than at its next
        # tick: the connections of a lost node move as soon as Ray declares it dead.
        threading.Thread(target=self._watch_nodes, daemon=True, name="coordinator-nodes").start()

    async def _ensure_master(self) -> DesiredStateReader:
        if self._reader is None:
            self._master = await MasterStore.connect(self.settings)
            self._reader = DesiredStateReader(self._master)
        return self._reader

    def _kick(self) -> None:
        me = ray.get_runtime_context().current_actor
        while self._loop_task is None:
            try:
                ray.get(me.start.remote(), timeout=30)
            except Exception as e:
                log.warning("coordinator self-start not accepted yet: %s", type(e).__name__)
            time.sleep(1.0)

    def _watch_nodes(self) -> None:
        seen: list[str] | None = None
        while True:
            time.sleep(NODE_WATCH_S)
            try:
                now = alive_nodes()
            except Exception:  # the GCS busy or restarting: the reconcile tick still runs
                continue
            if seen is not None and now != seen and self._data_loop is not None:
                self._data_loop.call_soon_threadsafe(self._wake.set)
            seen = now

    @ray.method(concurrency_group="data")
    async def start(self) -> bool:
        if self._loop_task is None:
            self._data_loop = asyncio.get_running_loop()
            self._loop_task = asyncio.create_task(self._loop())
        return True

    @ray.method(concurrency_group="health")
    async def notify(self) -> None:
        """Something changed in the databases: reconcile now rather than at the next tick.
        The reconcile loop waits on the data loop: the wake-up crosses to it explicitly."""
        if self._data_loop is not None:
            self._data_loop.call_soon_threadsafe(self._wake.set)

    async def _loop(self) -> None:
        while True:
            try:
                await self.reconcile()  # type: ignore[operator]  # a ray.method, called in-actor
            except Exception:
                log.exception("reconcile pass failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()

    def _writer(self, tenant_id: str, slug: str) -> Any:
        if tenant_id not in self._writers:
            # Writers run next to the coordinator, on the head: their work is mostly the
            # database's, and a writer there survives the loss of any worker (every connection
            # of the tenant would otherwise stall until it restarted). Hard: a soft preference
            # was seen to place writers on workers.
            here = ray.get_runtime_context().get_node_id()
            self._writers[tenant_id] = WriterActor.options(  # type: ignore[attr-defined]
                name=writer_name(slug),
                namespace=self.settings.namespace,
                lifetime="detached",
                get_if_exists=True,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
            ).remote(self.settings, tenant_id, slug)
        return self._writers[tenant_id]

    def _slot(self, name: str, node_id: str) -> Any:
        if name not in self._slots:
            self._slots[name] = ConnectionActor.options(  # type: ignore[attr-defined]
                name=name,
                namespace=self.settings.namespace,
                lifetime="detached",
                get_if_exists=True,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(self.settings, name)
            self._slot_nodes[name] = node_id
        return self._slots[name]

    async def _probe(self, names: list[str]) -> dict[str, dict[str, Any] | None]:
        """Status of each slot, or None when it is unhealthy.

        An actor Ray reports dead or unreachable is unhealthy at once, so its connections move
        in this pass. One that is merely slow to answer (a loaded machine) is only after two
        probes in a row, so a busy but healthy actor does not lose its connections.
        """

        async def one(name: str) -> dict[str, Any] | None:
            try:
                st: dict[str, Any] = await asyncio.wait_for(
                    self._slots[name].status.remote(), self.settings.health_timeout_s
                )
                self._slow.pop(name, None)
                self._last_good[name] = st
                return st
            except TimeoutError:
                self._slow[name] = self._slow.get(name, 0) + 1
                if self._slow[name] < 2 and name in self._last_good:
                    log.warning("slot %s slow to answer; keeping it this pass", name)
                    return self._last_good[name]
                log.warning("slot %s not answering", name)
                return None
            except Exception as e:
                log.warning("slot %s unhealthy: %s", name, type(e).__name__)
                self._last_good.pop(name, None)
                return None

        results = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, results, strict=True))

    async def _probe_alive(self, nodes: list[str]) -> dict[str, dict[str, Any] | None]:
        """``_probe`` of every slot, except that one on a node Ray has declared dead is not
        asked (the call would only time out, and its last answer is no longer true)."""
        lost = {n for n in self._slots if self._slot_nodes.get(n) not in nodes}
        for name in lost:
            self._last_good.pop(name, None)
        status: dict[str, dict[str, Any] | None] = dict.fromkeys(lost)
        status.update(await self._probe([n for n in self._slots if n not in lost]))
        return status

    @ray.method(concurrency_group="data")
    async def reconcile(self) -> dict[str, Any]:
        async with self._lock:
            return await self._reconcile()

    async def _lead(self) -> bool:
        """Act only while holding the master database's coordinator lock (ingest.store.leadership).
        Standing by, this cluster's sessions stop: the holder runs them. The database away, what
        runs keeps running, as through any master outage."""
        if self._leadership is None:
            me = f"scada-coordinator ray {ray.get_runtime_context().gcs_address} pid {os.getpid()}"
            self._leadership = Leadership(self.settings.master_dsn, me)
        verdict = await self._leadership.decide()
        if verdict == "standby":
            await asyncio.gather(
                *(asyncio.wait_for(h.apply.remote([]), 30) for h in self._slots.values()), return_exceptions=True
            )
        if verdict != "lead":
            self.last_pass = {"at": time.time(), "lock": verdict, "standby": self._leadership.standby}
        return verdict == "lead"

    async def _reconcile(self) -> dict[str, Any]:
        if not await self._lead():
            return self.last_pass
        t0 = time.monotonic()
        s = self.settings
        state = await (await self._ensure_master()).read()
        now = time.monotonic()
        for t in state.tenants:
            # Idempotent: starts the writer's rollup refresher and retention job (again, after
            # a restart of the actor) even while no batch arrives. Not every pass: a call per
            # tenant every 2 s would be 500 Ray calls a second from this actor for 1,000 tenants.
            if now >= self._writer_start_due.get(t.id, 0.0):
                self._writer(t.id, t.slug).start.remote()
                self._writer_start_due[t.id] = now + WRITER_START_EVERY_S
        specs = {c.connection_id: c for c in state.all_specs()}
        nodes = alive_nodes()
        per_node = actors_per_node(
            sum(len(c.tags) for c in specs.values()), len(nodes), s.tags_per_actor, s.max_actors_per_node
        )
        wanted_slots = desired_slots(nodes, per_node)
        for name, node in wanted_slots.items():
            self._slot(name, node)
        status = await self._probe_alive(nodes)
        healthy = [n for n in wanted_slots if status.get(n) is not None]
        # Pure rendezvous placement (slack None): a slot joining or leaving moves exactly the
        # connections whose best slot changed. Balance comes from the hash; the pool grows with
        # the tag count (ingest.placement.pool), which is how connection weight enters.
        assignment = assign_connections({c: sp.weight for c, sp in specs.items()}, healthy)
        changes: dict[str, Any] = {}
        # Every live slot, those no longer wanted included: they pass theirs on before retiring.
        have = {
            slot: {c: v["fingerprint"] for c, v in st["connections"].items()}
            for slot, st in status.items()
            if st is not None
        }
        fingerprints = {c: sp.fingerprint() for c, sp in specs.items()}
        for batch in apply_rounds(fingerprints, assignment, have, healthy):
            results = await asyncio.gather(
                *(
                    asyncio.wait_for(self._slots[s].apply.remote([specs[c] for c in w], p), 30)
                    for s, w, p in batch
                ),
                return_exceptions=True,
            )
            for (slot, wanted, _), res in zip(batch, results, strict=True):
                if isinstance(res, dict):
                    done = changes.setdefault(slot, {})
                    done.update({k: v for k, v in res.items() if v or k not in done})
                    self.moves += len(res.get("started", []))
                else:  # say where and what, not only the exception type
                    changes[slot] = {"error": _describe(res), "connections": wanted}
                    log.warning("slot %s: apply failed: %s", slot, changes[slot]["error"])
        # Slots no longer wanted (their node left, or the pool shrank): retire once emptied.
        for name in [n for n in self._slots if n not in wanted_slots]:
            handle = self._slots.pop(name)
            self._slot_nodes.pop(name, None)
            try:
                ray.kill(handle, no_restart=True)
            except Exception:
                pass
            changes[name] = {"retired": True}
        if assignment != self.last_assignment and self._master is not None:
            try:
                await self._master.save_assignments(
                    {c: (specs[c].tenant_id, sl, specs[c].fingerprint()) for c, sl in assignment.items()}
                )
            except Exception as e:
                log.warning("assignment not persisted: %s", type(e).__name__)
        self._last_status = {k: v for k, v in status.items() if v is not None}
        await (await self._ensure_master()).record_changed(specs, self._last_status)
        await self._retire_deleted()  # type: ignore[operator]  # a plain method, called in-actor
        self.last_state, self.last_assignment = state, assignment
        self.passes += 1
        self.last_pass = {
            "at": time.time(),
            "duration_s": round(time.monotonic() - t0, 3),
            "nodes": len(nodes),
            "slots": len(wanted_slots),
            "healthy_slots": len(healthy),
            "changes": changes,
            "degraded": state.degraded,
        }
        return self.last_pass

    @ray.method(concurrency_group="health")
    async def _retire_deleted(self) -> None:
        """Writers of deleted tenants stop (their sessions stopped with their connections
        above); deleted tenants past the grace period have their databases dropped, hourly."""
        if self._master is None:
            return
        try:
            for tid in await self._master.deleted_among(list(self._writers)):
                handle = self._writers.pop(tid)
                self._writer_start_due.pop(tid, None)
                try:
                    ray.kill(handle, no_restart=True)
                except Exception:
                    pass
                log.info("writer of deleted tenant %s retired", tid)
            if time.monotonic() >= self._next_purge:
                self._next_purge = time.monotonic() + 3600.0
                purged = await self._master.purge_due(self.settings.tenant_purge_grace_days)
                for tid, keys in (await drop_keys_of_purged(self.settings, purged)).items():
                    log.info("deleted tenant %s purged after the grace period", tid)
                    detail = {"by": "grace_period", "redis_keys": keys}
                    await self._master.audit("coordinator", tid, "tenant.purge", detail)
        except Exception as e:  # the master database away: the next pass tries again
            log.warning("retiring deleted tenants failed: %s", type(e).__name__)

    @ray.method(concurrency_group="health")
    async def connections_live(self, tenant_slug: str) -> dict[str, dict[str, Any]]:
        """What the hosts last reported of each of the tenant's sessions (health, newest value,
        values/s, reconnects), from the last reconcile pass's snapshot: no actor is called."""
        return live_connections(self._last_status, tenant_slug)

    @ray.method(concurrency_group="health")
    async def assignment(self) -> dict[str, str]:
        return dict(self.last_assignment)

    @ray.method(concurrency_group="data")
    async def status(self) -> dict[str, Any]:
        slots = await self._probe_alive(alive_nodes())
        writers: dict[str, Any] = {}
        for t in self.last_state.tenants:
            w = self._writers.get(t.id)
            try:
                writers[t.slug] = await asyncio.wait_for(w.stats.remote(), 5) if w else None
            except Exception as e:
                writers[t.slug] = {"error": f"{type(e).__name__}"}
        return cluster_status(
            self.last_state,
            slots,
            self._slot_nodes,
            writers,
            {
                "leader": self._leadership is not None and self._leadership.held,
                "standby": self._leadership.standby if self._leadership else None,
                "passes": self.passes,
                "moves": self.moves,
                "last_pass": self.last_pass,
            },
        )

    @ray.method(concurrency_group="health")
    async def health(self) -> bool:
        return True

    @ray.method(concurrency_group="health")
    async def leadership(self) -> dict[str, Any]:
        """``leader``: True once it holds the lock, False standing by (``holder`` says who holds it),
        None before its first pass."""
        lead = self._leadership
        if lead is None or (not lead.held and lead.standby is None):
            return {"leader": None, "holder": None}
        return {"leader": lead.held, "holder": (lead.standby or {}).get("holder")}
