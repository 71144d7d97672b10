"""Writer actor: one per tenant, named ``writer-<slug>``; hosts an ingest.write.writer.TenantWriter
with its durable spool, quarantine, validator and Redis fan-out."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import redis.asyncio as aioredis

from actors.common import CONCURRENCY_GROUPS
from ingest.core.aio import cancel_and_wait
from ingest.core.batch import Batch, ReadingBatch, TextBatch, is_text
from ingest.core.config import Settings
from ingest.core.errors import StorageUnavailable
from ingest.core.heap import settle_heap
from ingest.core.metrics import Metrics, safe
from ingest.core.order import Place
from ingest.read.refresher import RollupRefresher
from ingest.read.retention import retention_loop
from ingest.store.master import MasterStore
from ingest.store.secrets import SecretBox
from ingest.store.tenant_store import TenantStore
from ingest.write.fanout import RedisFanout
from ingest.write.rules import TagRules
from ingest.write.spool import Quarantine, RedisSpool
from ingest.write.validation import Validator
from ingest.write.writer import TenantWriter

log = logging.getLogger(__name__)


def rules_from_rows(rows: list[dict[str, Any]]) -> list[TagRules]:
    return [
        TagRules(
            tag_id=r["tag_id"],
            valid_min=r["valid_min"],
            valid_max=r["valid_max"],
            out_of_range=r["out_of_range"],
            deadband=r["deadband"],
            zscore_threshold=r["zscore_threshold"],
        )
        for r in rows
    ]


@ray.remote(
    num_cpus=0,
    max_restarts=-1,
    max_task_retries=0,  # type: ignore[call-overload]  # Ray's stubs lack concurrency_groups
    concurrency_groups=CONCURRENCY_GROUPS,
)
class WriterActor:
    def __init__(self, settings: Settings, tenant_id: str, tenant_slug: str) -> None:
        # At the API's niceness, not moved to the background level as the connection actors are:
        # a push's answer waits on this actor's flush (ingest.core.ray_env).
        self.settings = settings
        self.tenant_id = tenant_id
        self.slug = tenant_slug
        self.writer: TenantWriter | None = None
        self._store: TenantStore | None = None
        self._rules_version = ""
        self._rules_task: asyncio.Task[None] | None = None
        # Used on the data loop only (the concurrency rule in actors.common).
        self._init_lock = asyncio.Lock()
        self._rules_stale = asyncio.Event()
        # Where it runs: the pid lets a benchmark read this process's CPU time (scale_tests.cpu).
        self._where = {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}
        self._snapshot: dict[str, Any] = {"tenant": tenant_slug, "started": False, **self._where}
        self.refresher: RollupRefresher | None = None
        self._db_tasks: list[asyncio.Task[None]] = []

    async def _ensure(self) -> TenantWriter:
        if self.writer is not None:
            return self.writer
        async with self._init_lock:
            if self.writer is None:
                self.writer = await self._build()
                settle_heap()  # built: full collections skip what it holds from here on
        return self.writer

    async def _build(self) -> TenantWriter:
        s = self.settings
        dsn, box = await self._tenant_dsn()
        m = Metrics.get()
        tags = {"tenant": self.slug}
        redis = aioredis.from_url(s.redis_url, socket_timeout=5, socket_connect_timeout=5)
        validator = Validator([])
        try:
            self._store = await TenantStore.connect(dsn, box, max_size=2, migrate=True)
            await self._refresh_rules(validator)
        except Exception as e:
            # Rules load again later; until then readings pass with "unknown_tag" counted.
            log.warning("tag rules not loaded yet: %s", type(e).__name__)

        def on_commit(batch: ReadingBatch, write_s: float) -> None:
            safe(m.readings_ingested.inc, len(batch), {"tenant": self.slug, "protocol": "any"})
            safe(m.batch_size.observe, len(batch), tags)
            safe(m.db_write_latency.observe, write_s, tags)

        def on_event(reason: str, n: int) -> None:
            if reason == "validation:unknown_tag":
                self._rules_stale.set()  # tags registered since the last load: reload now
            if reason.startswith("validation:"):
                safe(m.validation_errors.inc, n, {"tenant": self.slug, "reason": reason.split(":", 1)[1]})
            elif reason == "duplicate":
                safe(m.duplicate_batches.inc, n, tags)
            else:
                safe(m.write_failures.inc, n, {"tenant": self.slug, "outcome": reason})

        def on_redis_error(_: Exception) -> None:
            safe(m.redis_errors.inc, 1, tags)

        w = TenantWriter(
            dsn,
            flush_rows=s.flush_rows,
            flush_interval_ms=s.flush_interval_ms,
            prompt_gap_ms=s.prompt_flush_gap_ms,
            spool=RedisSpool(redis, self.slug, s.spool_max_rows),
            quarantine=Quarantine(redis, self.slug),
            validator=validator,
            fanout=RedisFanout(
                redis,
                self.slug,
                on_error=on_redis_error,
                live_maxlen=s.live_stream_maxlen,
                live_max_age_s=s.live_stream_max_age_s,
                live_every_value=s.live_every_value,
            ),
            on_commit=on_commit,
            on_event=on_event,
        )
        for attempt in range(30):
            try:
                await w.start()
                break
            except Exception as e:  # Redis away at start: the spool depth is unknown; retry
                log.warning("writer start attempt %d failed: %s", attempt, type(e).__name__)
                await asyncio.sleep(1.0)
        self._rules_task = asyncio.create_task(self._rules_loop(validator))
        # The read side's background work lives here, on the data group's loop, because its
        # connections are this tenant's: the rollup refresher and the retention job.
        self._tasks = [asyncio.create_task(self._gauge_loop(w)), asyncio.create_task(self._snapshot_loop())]
        self._db_tasks = self._start_db_work(dsn)
        return w

    def _start_db_work(self, dsn: str) -> list[asyncio.Task[None]]:
        """The read side's work on the tenant database (rollups, retention); stopped while a
        move copies the database, started again on the new one."""
        s, m = self.settings, Metrics.get()
        self.refresher = RollupRefresher(
            dsn,
            interval_s=s.rollup_refresh_interval_s,
            max_minutes_per_pass=s.rollup_minutes_per_pass,
            pace=s.rollup_pace,
            on_lag=lambda lag_s: safe(m.rollup_lag.set, lag_s, {"tenant": self.slug}),
        )
        return [
            asyncio.create_task(self.refresher.run()),
            asyncio.create_task(retention_loop(dsn, s.retention_interval_s)),
        ]

    @ray.method(concurrency_group="data")
    async def hold(self) -> dict[str, Any]:
        """For a move (ingest.store.move): stop writing to the tenant database (batches go to
        the spool, still acknowledged) and stop the rollup and retention work on it; returns
        once nothing of ours writes there any more."""
        w = await self._ensure()
        for t in self._db_tasks:
            await cancel_and_wait(t)
        self._db_tasks = []
        await w.hold()
        return w.stats.as_dict()

    @ray.method(concurrency_group="data")
    async def release(self) -> dict[str, Any]:
        """End a hold: the database is the master's now (the new one after a move, the old one
        after a failed move); the spool drains into it, the rollup and retention work resume."""
        w = await self._ensure()
        dsn, _ = await self._tenant_dsn()
        if self._store is not None:
            await self._store.close()
            self._store = None
        w.release(dsn)
        if not self._db_tasks:
            self._db_tasks = self._start_db_work(dsn)
        return w.stats.as_dict()

    async def _refresh_rules(self, validator: Validator) -> None:
        assert self._store is not None
        version = await self._store.rules_version()
        if version != self._rules_version:
            validator.update_rules(rules_from_rows(await self._store.tag_rules()))
            self._rules_version = version

    async def _rules_loop(self, validator: Validator) -> None:
        while True:
            try:
                await asyncio.wait_for(self._rules_stale.wait(), self.settings.rules_refresh_s)
                await asyncio.sleep(0.2)  # at most a few reloads a second
            except TimeoutError:
                pass
            self._rules_stale.clear()
            try:
                await self._tenant_store()
                await self._refresh_rules(validator)
            except Exception as e:
                log.warning("tag rules refresh failed: %s", type(e).__name__)

    async def _gauge_loop(self, w: TenantWriter) -> None:
        m = Metrics.get()
        tags = {"tenant": self.slug}
        while True:
            await asyncio.sleep(2.0)
            safe(m.spool_rows.set, w.stats.spool_rows, tags)
            high = w.stats.spool_rows >= 0.8 * self.settings.spool_max_rows
            safe(m.spool_high.set, 1.0 if high else 0.0, tags)

    @ray.method(concurrency_group="data")
    async def write(self, rb: pa.RecordBatch, prompt: bool = False, place: Place | None = None) -> dict[str, Any]:
        """Land one batch (committed, spooled or quarantined); ``prompt`` when a client waits
        on the answer, ``place`` where it stands among its sender's (see TenantWriter.write)."""
        w = await self._ensure()
        batch: Batch = TextBatch.from_arrow(rb) if is_text(rb) else ReadingBatch.from_arrow(rb)
        r = await w.write(batch, prompt, place)
        e2e = Metrics.get().end_to_end_latency
        if not (r.duplicate or r.spooled or r.quarantined) and len(batch):
            lat = time.time() - float(np.median(batch.time_us)) / 1e6
            safe(e2e.observe, lat, {"tenant": self.slug})
        return {
            "batch_id": r.batch_id,
            "rows": r.rows,
            "duplicate": r.duplicate,
            "spooled": r.spooled,
            "quarantined": r.quarantined,
        }

    @ray.method(concurrency_group="data")
    async def start(self) -> bool:
        """Build the writer and start its background work (rollups, retention) without waiting
        for the first batch; the coordinator calls it for every active tenant."""
        await self._ensure()
        return True

    @ray.method(concurrency_group="data")
    async def replay_quarantined(self, batch_id: str) -> dict[str, Any]:
        """Operator action: retry a quarantined batch (after fixing its cause)."""
        w = await self._ensure()
        assert w.quarantine is not None
        batch = await w.quarantine.take(batch_id)
        if batch is None:
            return {"batch_id": batch_id, "found": False}
        r = await w.write(batch)
        return {"batch_id": batch_id, "found": True, "rows": r.rows, "quarantined": r.quarantined}

    @ray.method(concurrency_group="data")
    async def last_times(self, tag_ids: list[int], before_us: list[int]) -> dict[int, int]:
        """Newest stored source time per tag before the given times: where a new device
        session's gap check starts. Raises while the tenant database cannot answer (the caller
        retries); an empty answer would mean "nothing stored" and hide a gap."""
        w = await self._ensure()
        if w.stats.spool_rows > 0:  # stored data ends after what the spool still holds
            raise StorageUnavailable(f"spool still holds {w.stats.spool_rows} rows")
        if w.queue.holds_older(dict(zip(tag_ids, before_us, strict=True))):  # ... or what is queued
            raise StorageUnavailable("older rows of these tags are still queued for commit")
        store = await self._tenant_store()
        return await store.last_times(tag_ids, before_us)

    async def _tenant_dsn(self) -> tuple[str, SecretBox]:
        """The tenant database's address and the box that opens its secrets, from the master."""
        master = await MasterStore.connect(self.settings)
        try:
            return await master.tenant_dsn(self.tenant_id), master.box
        finally:
            await master.close()

    async def _tenant_store(self) -> TenantStore:
        """The tenant store, connected now if the writer started while its database was away."""
        if self._store is None:
            try:
                dsn, box = await self._tenant_dsn()
                self._store = await TenantStore.connect(dsn, box, max_size=2, migrate=True)
            except Exception as e:
                raise StorageUnavailable(f"tenant database not reachable: {type(e).__name__}: {e}") from e
        return self._store

    @ray.method(concurrency_group="data")
    async def quarantined(self) -> list[dict[str, Any]]:
        w = await self._ensure()
        assert w.quarantine is not None
        return await w.quarantine.list()

    def _stats_now(self) -> dict[str, Any]:
        if self.writer is None:
            return {"tenant": self.slug, "started": False, **self._where}
        out: dict[str, Any] = {
            "tenant": self.slug,
            "started": True,
            **self._where,
            **self.writer.stats.as_dict(),
        }
        if self.writer.fanout is not None:
            out["redis_errors"] = self.writer.fanout.errors
        if self.refresher is not None:
            out["rollup_passes"] = self.refresher.passes
            out["rollup_failures"] = self.refresher.failures
            out["rollup_lag_s"] = round(self.refresher.lag_s, 3)
            out["rollup_last_error"] = self.refresher.last_error
        return out

    async def _snapshot_loop(self) -> None:
        """Refreshes the snapshot the health group reads (the concurrency rule, actors.common)."""
        while True:
            self._snapshot = self._stats_now()
            await asyncio.sleep(0.5)

    @ray.method(concurrency_group="health")
    async def stats(self) -> dict[str, Any]:
        """A snapshot at most half a second old."""
        return self._snapshot

    @ray.method(concurrency_group="data")
    async def stats_now(self) -> dict[str, Any]:
        """The writer's figures this instant (waits behind a busy data loop)."""
        return self._stats_now()

    @ray.method(concurrency_group="data")
    async def latency_histogram(self) -> np.ndarray:
        """Counts per 1 ms bucket since the actor started (callers diff two snapshots)."""
        if self.writer is None:
            return np.zeros(1, np.int64)
        return self.writer.stats.latency.counts.copy()

    @ray.method(concurrency_group="health")
    async def health(self) -> bool:
        return True
