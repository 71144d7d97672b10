"""Many device sessions in one process: the plain-Python heart of a connection actor.

Readings flow: protocol session -> ``_on_values`` (scaling and offset applied here, once, vectorised)
-> the tenant's BatchBuilder -> every ``batch_interval_ms`` a micro-batch -> the tenant's
BatchSender, which keeps it until the writer acknowledges the commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np

from ingest.batch import BatchBuilder, TextBuilder, per_tag
from ingest.models import ConnectionSpec, Protocol, Quality, SecurityMode, quality_as_int4
from ingest.sender import BatchSender

log = logging.getLogger(__name__)


class DeviceSession(TypingProtocol):
    async def run(self) -> None: ...
    async def stop(self) -> None: ...
    @property
    def stats(self) -> dict[str, Any]: ...


SenderFactory = Callable[[ConnectionSpec], BatchSender]
LastTimes = Callable[[ConnectionSpec], Awaitable[dict[int, int]]]
GAP_QUALITY = quality_as_int4(Quality.BAD_DATA_LOST)


class _GapCheck:
    """Marks where a new session may have missed readings: for each tag, if its first reading
    is newer than the newest one already stored, a gap marker (quality Bad_DataLost, value NaN:
    the count is unknown) goes in right after the stored one. Covers sessions that start after a
    failover, a move to another actor, or an actor restart."""

    def __init__(self, last: dict[int, int]) -> None:
        self.pending = dict(last)

    def markers(self, tag_ids: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out_tags, out_times = [], []
        idx, _ = per_tag(tag_ids, times)
        for tag, first in zip(tag_ids[idx].tolist(), times[idx].tolist(), strict=True):
            last = self.pending.pop(tag, None)
            if last is None:
                continue
            if first > last + 1:
                out_tags.append(tag)
                out_times.append(last + 1)
        return np.asarray(out_tags, np.int32), np.asarray(out_times, np.int64)


@dataclass
class _Running:
    spec: ConnectionSpec
    fingerprint: str
    session: DeviceSession
    task: asyncio.Task[None]
    state: str = "connecting"
    error: str | None = None
    started_at: float = 0.0


class _Scaler:
    """Applies each tag's scaling factor and offset to a chunk of readings."""

    def __init__(self, spec: ConnectionSpec) -> None:
        order = sorted(spec.tags, key=lambda t: t.tag_id)
        self.ids = np.array([t.tag_id for t in order], np.int32)
        self.factor = np.array([t.scaling_factor for t in order], np.float64)
        self.offset = np.array([t.offset for t in order], np.float64)
        self.trivial = bool(np.all(self.factor == 1.0) and np.all(self.offset == 0.0))

    def __call__(self, tag_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        if self.trivial:
            return values
        idx = np.searchsorted(self.ids, tag_ids)
        return values * self.factor[idx] + self.offset[idx]


class ConnectionHost:
    def __init__(
        self,
        source: str,
        sender_factory: SenderFactory,
        *,
        session_factory: Callable[..., DeviceSession] | None = None,
        last_times: LastTimes | None = None,
        on_state_change: Callable[[ConnectionSpec, str, str | None], None] | None = None,
    ) -> None:
        self.source = source
        self.epoch = uuid.uuid4().hex[:8]
        self._sender_factory = sender_factory
        self._session_factory = session_factory or make_session
        self._last_times = last_times
        self._on_state_change = on_state_change
        self.gap_markers = 0
        self._running: dict[str, _Running] = {}
        self._builders: dict[str, BatchBuilder] = {}
        self._text_builders: dict[str, TextBuilder] = {}
        self._senders: dict[str, BatchSender] = {}
        self.values_received = 0
        # Per connection, kept after its session stops: what benchmarks and audits count.
        self.delivered: dict[str, int] = {}
        self._rate_mark = (time.monotonic(), 0)
        self.values_per_s = 0.0

    # -- desired state ------------------------------------------------------------------------
    async def apply(self, specs: list[ConnectionSpec]) -> dict[str, list[str]]:
        """Run exactly these connections: start new ones, restart edited ones, stop the rest.
        Connections whose fingerprint did not change are not touched."""
        want = {s.connection_id: s for s in specs}
        started, stopped, kept = [], [], []
        for cid in list(self._running):
            r = self._running[cid]
            if cid not in want or want[cid].fingerprint() != r.fingerprint:
                await self._stop(cid)
                stopped.append(cid)
        for cid, spec in want.items():
            if cid in self._running:
                kept.append(cid)
                continue
            self._start(spec)
            started.append(cid)
        return {"started": started, "stopped": stopped, "kept": kept}

    def _start(self, spec: ConnectionSpec) -> None:
        tenant = spec.tenant_id
        if tenant not in self._builders:
            self._builders[tenant] = BatchBuilder(f"{self.source}/{spec.tenant_slug}", self.epoch)
            self._text_builders[tenant] = TextBuilder(f"{self.source}/{spec.tenant_slug}",
                                                      self.epoch)
            sender = self._sender_factory(spec)
            sender.start()
            self._senders[tenant] = sender
        builder = self._builders[tenant]
        text_builder = self._text_builders[tenant]
        scale = _Scaler(spec)
        cid = spec.connection_id
        gaps: list[_GapCheck] = []

        def on_values(tag_ids: np.ndarray, times: np.ndarray, values: np.ndarray,
                      quality: np.ndarray) -> None:
            if gaps and gaps[0].pending:
                mt, mtime = gaps[0].markers(tag_ids, times)
                if mt.shape[0]:
                    builder.append(mt, mtime, np.full(mt.shape[0], np.nan),
                                   np.full(mt.shape[0], GAP_QUALITY, np.int32))
                    self.gap_markers += int(mt.shape[0])
            builder.append(tag_ids, times, scale(tag_ids, values), quality)
            n = int(times.shape[0])
            self.values_received += n
            self.delivered[cid] = self.delivered.get(cid, 0) + n

        def on_state(state: str, error: str | None) -> None:
            r = self._running.get(cid)
            if r is not None:
                r.state, r.error = state, error
            if self._on_state_change is not None:
                self._on_state_change(spec, state, error)

        def on_text(tag_ids: np.ndarray, times: np.ndarray, texts: list[str],
                    quality: np.ndarray) -> None:
            text_builder.append(tag_ids, times, texts, quality)
            n = len(texts)
            self.values_received += n
            self.delivered[cid] = self.delivered.get(cid, 0) + n

        def on_gap(tag_ids: np.ndarray, from_us: np.ndarray, to_us: np.ndarray) -> None:
            # The device session knows readings between from and to are gone (count unknown).
            n = int(tag_ids.shape[0])
            builder.append(tag_ids, from_us + 1, np.full(n, np.nan),
                           np.full(n, GAP_QUALITY, np.int32))
            self.gap_markers += n

        session = self._session_factory(spec, on_values, on_state, on_text, on_gap)

        async def run() -> None:
            if self._last_times is not None:
                try:
                    gaps.append(_GapCheck(await asyncio.wait_for(self._last_times(spec), 10)))
                except Exception as e:  # no gap check rather than no data
                    log.warning("last stored times unavailable for %s: %s", cid,
                                type(e).__name__)
            await session.run()

        task = asyncio.create_task(run(), name=f"session-{cid}")
        self._running[cid] = _Running(spec, spec.fingerprint(), session, task,
                                      started_at=time.time())

    async def _stop(self, cid: str) -> None:
        r = self._running.pop(cid)
        try:
            await asyncio.wait_for(r.session.stop(), 10)
        except Exception:
            log.warning("session %s did not stop cleanly", cid, exc_info=True)
        r.task.cancel()
        try:
            await r.task
        except BaseException:  # noqa: BLE001 - a cancelled or failed session is gone either way
            pass

    # -- batching -----------------------------------------------------------------------------
    def tick(self) -> int:
        """Cut every tenant's collected readings into a batch and hand it to its sender."""
        rows = 0
        for tenant, builder in self._builders.items():
            batch = builder.cut()
            if batch is not None:
                self._senders[tenant].submit(batch)
                rows += len(batch)
            text = self._text_builders[tenant].cut()
            if text is not None:
                self._senders[tenant].submit(text)  # type: ignore[arg-type]
                rows += len(text)
        return rows

    def unacked_rows(self) -> int:
        return sum(s.unacked_rows for s in self._senders.values())

    async def drain(self, timeout_s: float) -> bool:
        self.tick()
        results = await asyncio.gather(*(s.drain(timeout_s) for s in self._senders.values()))
        return all(results)

    async def close(self) -> None:
        for cid in list(self._running):
            await self._stop(cid)
        self.tick()
        for s in self._senders.values():
            await s.stop()

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        t0, v0 = self._rate_mark
        if now - t0 >= 1.0:
            self.values_per_s = round((self.values_received - v0) / (now - t0), 1)
            self._rate_mark = (now, self.values_received)
        return {
            "values_per_s": self.values_per_s,
            "epoch": self.epoch,
            "values_received": self.values_received,
            "unacked_rows": self.unacked_rows(),
            "gap_markers": self.gap_markers,
            "delivered": dict(self.delivered),
            "connections": {
                cid: {
                    "tenant": r.spec.tenant_slug,
                    "protocol": r.spec.protocol.value,
                    "endpoint": r.spec.endpoint,
                    "tags": len(r.spec.tags),
                    "fingerprint": r.fingerprint,
                    "started_at": r.started_at,
                    "state": r.state,
                    "error": r.error,
                    **{k: v for k, v in r.session.stats.items() if isinstance(v, int | float)},
                }
                for cid, r in self._running.items()
            },
            "senders": {
                t: {"acked_rows": s.acked_rows, "retries": s.retries, "last_error": s.last_error}
                for t, s in self._senders.items()
            },
        }


def make_session(spec: ConnectionSpec, on_values: Any, on_state: Any, on_text: Any = None,
                 on_gap: Any = None) -> DeviceSession:
    """Build the protocol session for a connection spec."""
    if spec.protocol is Protocol.OPCUA:
        from ingest.protocols.opcua import OpcUaSession, OpcUaTag
        from ingest.protocols.opcua_security import OpcUaSecurity

        return OpcUaSession(
            spec.endpoint,
            [OpcUaTag(t.tag_id, t.address) for t in spec.tags],
            on_values,
            publishing_interval_ms=spec.publishing_interval_ms,
            on_state=on_state,
            on_text=on_text,
            on_gap=on_gap,
            security=OpcUaSecurity(
                mode=spec.security_mode, policy=spec.security_policy,
                username=spec.username, password=spec.password,
                auto_accept=spec.auto_accept_server_cert,
            ) if spec.security_mode is not SecurityMode.NONE else None,
        )
    if spec.protocol is Protocol.MODBUS:
        from ingest.protocols.modbus import ModbusSession
        from ingest.protocols.modbus_decode import parse_address

        # pymodbus logs every timeout at ERROR with a frame dump; the session counts them instead.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        def on_strings(pairs: list[tuple[int, str]], time_us: int) -> None:
            if on_text is not None and pairs:
                n = len(pairs)
                on_text(np.array([p[0] for p in pairs], np.int32), np.full(n, time_us, np.int64),
                        [p[1] for p in pairs], np.zeros(n, np.int32))

        return ModbusSession(
            spec.endpoint,
            [parse_address(t.address, tag_id=t.tag_id) for t in spec.tags],
            on_values,
            poll_interval_ms=spec.publishing_interval_ms,
            on_state=on_state,
            on_strings=on_strings,
        )
    raise NotImplementedError(f"protocol {spec.protocol.value} is not supported")
