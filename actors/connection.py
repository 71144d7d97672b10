"""Connection actor ``conn-<n>``: hosts many device sessions (ingest.device.host)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import ray

from actors.common import CONCURRENCY_GROUPS, writer_name
from ingest.core.aio import run_ticks
from ingest.core.batch import ReadingBatch
from ingest.core.config import Settings
from ingest.core.heap import settle_heap
from ingest.core.metrics import Metrics, safe
from ingest.core.models import ConnectionSpec
from ingest.core.order import Place
from ingest.core.ray_env import background_priority
from ingest.device.connection_metrics import ConnectionGauges
from ingest.device.host import ConnectionHost
from ingest.device.sender import BatchSender
from ingest.device.takeover import TakeoverStore

log = logging.getLogger(__name__)


# Takeover records are saved every third batch tick (300 ms by default): one Redis pipeline per
# actor, and OPC UA acknowledgements wait at most that much longer.
RECORD_EVERY_TICKS = 3


@ray.remote(
    num_cpus=0,
    max_restarts=-1,
    max_task_retries=0,  # type: ignore[call-overload]  # Ray's stubs lack concurrency_groups
    concurrency_groups=CONCURRENCY_GROUPS,
)
class ConnectionActor:
    def __init__(self, settings: Settings, slot: str) -> None:
        background_priority()  # below the API replicas (ingest.core.ray_env)
        self.settings = settings
        self.slot = slot
        self.gauges = ConnectionGauges(Metrics.get())
        self.host = ConnectionHost(
            slot,
            self._sender_for,
            last_times=self._last_times,
            on_state_change=lambda spec, state, error: self.gauges.on_state_change(
                spec.tenant_slug, spec.protocol.value, state, error
            ),
            on_gap_markers=lambda spec, n: safe(
                Metrics.get().gaps.inc, n, {"tenant": spec.tenant_slug, "protocol": spec.protocol.value}
            ),
            # Where each OPC UA subscription stands, for the actor that takes it over if this
            # one's node is lost (ingest.device.takeover).
            takeover_store=TakeoverStore(settings.redis_url),
        )
        self._ticker: asyncio.Task[None] | None = None
        self._node_id = ray.get_runtime_context().get_node_id()
        self._status: dict[str, Any] = {}
        self._refresh_status()
        settle_heap()  # full collections skip what the actor holds from here on

    def _sender_for(self, spec: ConnectionSpec) -> BatchSender:
        name = writer_name(spec.tenant_slug)
        namespace = self.settings.namespace
        handle: list[Any] = []
        # One lookup at a time: sends waiting on it go on in the order they came, so the calls
        # leave in the order cut (a send that found the handle while an older one still looked
        # it up overtook it; the writer now refuses that, but every refusal costs a pause).
        lookup = asyncio.Lock()

        async def send(batch: ReadingBatch, place: Place) -> Any:
            if not handle:
                async with lookup:
                    if not handle:
                        # The coordinator creates writers; until it has, the lookup fails and
                        # the sender resends.
                        handle.append(await asyncio.to_thread(ray.get_actor, name, namespace=namespace))
            try:
                return await handle[0].write.remote(batch.to_arrow(), False, place)
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

    async def _last_times(self, spec: ConnectionSpec, first: dict[int, int]) -> dict[int, int]:
        """Newest stored time of each tag before its first new reading (the gap check's query);
        raises while the writer or its database cannot answer, and the check retries."""
        name = writer_name(spec.tenant_slug)
        writer = await asyncio.to_thread(ray.get_actor, name, namespace=self.settings.namespace)
        tags = list(first)
        result: dict[int, int] = await writer.last_times.remote(tags, [first[t] for t in tags])
        return result

    async def _tick_loop(self) -> None:
        period = self.settings.batch_interval_ms / 1000.0
        about_a_second = max(1, round(1.0 / period))
        await run_ticks(
            period,
            self.host.step,
            (RECORD_EVERY_TICKS, self.host.record_takeovers),
            (3, self._refresh_status),
            (about_a_second, self._publish_gauges),
        )

    def _publish_gauges(self) -> None:
        self.gauges.publish(self.host.status())

    def _refresh_status(self) -> None:
        # Replaced whole, never mutated: what the health group reads (actors.common).
        # The pid lets a benchmark read this process's CPU time (scale_tests.cpu).
        self._status = {"slot": self.slot, "node_id": self._node_id, "pid": os.getpid(), **self.host.status()}

    @ray.method(concurrency_group="data")
    async def apply(self, specs: list[ConnectionSpec], pass_on: list[str] | None = None) -> dict[str, Any]:
        """Run exactly these connections; ``pass_on``: those leaving for another live slot
        (``ConnectionHost.apply``)."""
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop())
        result = await self.host.apply(specs, pass_on or ())
        self._refresh_status()
        return result

    @ray.method(concurrency_group="data")
    async def drain(self, timeout_s: float = 30.0) -> bool:
        return await self.host.drain(timeout_s)

    @ray.method(concurrency_group="health")
    async def status(self) -> dict[str, Any]:
        """A snapshot refreshed by the data loop every few ticks and after each apply."""
        return self._status

    @ray.method(concurrency_group="health")
    async def health(self) -> bool:
        return True
