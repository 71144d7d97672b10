"""Writer actor: one per tenant, named ``writer-<slug>``; hosts an ingest.writer.TenantWriter."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from actors.common import CONCURRENCY_GROUPS
from ingest.batch import ReadingBatch
from ingest.config import Settings
from ingest.master import MasterStore
from ingest.metrics import Metrics, safe
from ingest.writer import TenantWriter

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, concurrency_groups=CONCURRENCY_GROUPS)
class WriterActor:
    def __init__(self, settings: Settings, tenant_id: str, tenant_slug: str) -> None:
        self.settings = settings
        self.tenant_id = tenant_id
        self.slug = tenant_slug
        self.writer: TenantWriter | None = None

    async def _ensure(self) -> TenantWriter:
        if self.writer is None:
            master = await MasterStore.connect(self.settings)
            try:
                dsn = await master.tenant_dsn(self.tenant_id)
            finally:
                await master.close()
            m = Metrics.get()
            tags = {"tenant": self.slug}

            def on_commit(batch: ReadingBatch, write_s: float) -> None:
                safe(m.readings_ingested.inc, len(batch), {"tenant": self.slug, "protocol": "any"})
                safe(m.batch_size.observe, len(batch), tags)
                safe(m.db_write_latency.observe, write_s, tags)

            w = TenantWriter(
                dsn, flush_rows=self.settings.flush_rows,
                flush_interval_ms=self.settings.flush_interval_ms, on_commit=on_commit,
            )
            await w.start()
            self.writer = w
        return self.writer

    @ray.method(concurrency_group="data")
    async def write(self, rb: pa.RecordBatch) -> dict[str, Any]:
        w = await self._ensure()
        r = await w.write(ReadingBatch.from_arrow(rb))
        return {"batch_id": r.batch_id, "rows": r.rows, "duplicate": r.duplicate}

    @ray.method(concurrency_group="health")
    async def stats(self) -> dict[str, Any]:
        if self.writer is None:
            return {"tenant": self.slug, "started": False}
        return {"tenant": self.slug, "started": True, **self.writer.stats.as_dict()}

    @ray.method(concurrency_group="health")
    async def latency_histogram(self) -> np.ndarray:
        """Counts per 1 ms bucket since the actor started (callers diff two snapshots)."""
        if self.writer is None:
            return np.zeros(1, np.int64)
        return self.writer.stats.latency.counts.copy()

    @ray.method(concurrency_group="health")
    async def health(self) -> bool:
        return True
