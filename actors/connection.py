"""Connection actor ``conn-<n>``: hosts many device sessions (ingest.connection_host)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from actors.common import CONCURRENCY_GROUPS, writer_name
from ingest.batch import ReadingBatch
from ingest.config import Settings
from ingest.connection_host import ConnectionHost
from ingest.connection_metrics import ConnectionGauges
from ingest.metrics import Metrics, safe
from ingest.models import ConnectionSpec
from ingest.sender import BatchSender

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, concurrency_groups=CONCURRENCY_GROUPS)
class ConnectionActor:
    def __init__(self, settings: Settings, slot: str) -> None:
        self.settings = settings
        self.slot = slot
        self.gauges = ConnectionGauges(Metrics.get())
        self.host = ConnectionHost(
            slot, self._sender_for, last_times=self._last_times,
            on_state_change=lambda spec, state, error: self.gauges.on_state_change(
                spec.tenant_slug, spec.protocol.value, state, error),
        )
        self._ticker: asyncio.Task[None] | None = None

    def _sender_for(self, spec: ConnectionSpec) -> BatchSender:
        name = writer_name(spec.tenant_slug)
        namespace = self.settings.namespace
        handle: list[Any] = []

        async def send(batch: ReadingBatch) -> Any:
            if not handle:
                # The coordinator creates writers; until it has, the lookup fails and we retry.
                handle.append(ray.get_actor(name, namespace=namespace))
            try:
                return await handle[0].write.remote(batch.to_arrow())
            except ray.exceptions.RayActorError:
                handle.clear()  # restarted or replaced: look it up again on the retry
                raise

        m = Metrics.get()
        tags = {"tenant": spec.tenant_slug, "protocol": spec.protocol.value}
        return BatchSender(
            send,
            max_inflight=self.settings.writer_inflight_max,
            max_unacked_rows=self.settings.sender_max_unacked_rows,
            on_gap=lambda n: safe(m.gaps.inc, n, tags),
        )

    async def _last_times(self, spec: ConnectionSpec) -> dict[int, int]:
        writer = ray.get_actor(writer_name(spec.tenant_slug), namespace=self.settings.namespace)
        result: dict[int, int] = await writer.last_times.remote([t.tag_id for t in spec.tags])
        return result

    async def _tick_loop(self) -> None:
        period = self.settings.batch_interval_ms / 1000.0
        ticks_per_gauge = max(1, round(1.0 / period))  # session gauges about once a second
        n = 0
        while True:
            await asyncio.sleep(period)
            try:
                self.host.tick()
            except Exception:
                log.exception("tick failed")
            n += 1
            if n % ticks_per_gauge == 0:
                try:
                    self.gauges.publish(self.host.status())
                except Exception:
                    log.exception("session gauges failed")

    @ray.method(concurrency_group="data")
    async def apply(self, specs: list[ConnectionSpec]) -> dict[str, Any]:
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop())
        return await self.host.apply(specs)

    @ray.method(concurrency_group="data")
    async def drain(self, timeout_s: float = 30.0) -> bool:
        return await self.host.drain(timeout_s)

    @ray.method(concurrency_group="health")
    async def status(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "node_id": ray.get_runtime_context().get_node_id(),
            **self.host.status(),
        }

    @ray.method(concurrency_group="health")
    async def health(self) -> bool:
        return True
