"""``scada-ingest edge``: device sessions -> disk buffer -> push, in one asyncio process.

The same ConnectionHost the cluster's connection actors run, with two things swapped: a batch
"sent" by a session's BatchSender is a batch written to the SQLite buffer (so it is on disk
before anything else happens to it), and the session-start gap check asks the buffer's
``last_seen`` as it was when this process started (so readings the device published while the
agent was down, or lost in memory at a SIGKILL, are covered by a gap marker). A second loop takes
the buffer's oldest batch, pushes it, and acts on the outcome (ingest.edge.pusher).

No Ray, PostgreSQL or Redis: the buffer is the only state, and it is a file.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ingest.core.aio import run_ticks
from ingest.core.backoff import Backoff
from ingest.core.batch import ReadingBatch, TextBatch, per_tag
from ingest.core.models import ConnectionSpec
from ingest.core.order import Place
from ingest.device.host import ConnectionHost
from ingest.device.sender import BatchSender
from ingest.edge.buffer import EdgeBuffer, Sealed
from ingest.edge.config import EdgeConfig, device_specs, edge_tags
from ingest.edge.encode import PushedTag
from ingest.edge.observe import EdgeMetrics, serve
from ingest.edge.pusher import Outcome, Pusher, PushResult

log = logging.getLogger("ingest.edge")
T = TypeVar("T")


class EdgeAgent:
    def __init__(self, cfg: EdgeConfig) -> None:
        self.cfg = cfg
        self.metrics = EdgeMetrics()
        # One thread owns every SQLite call, so the event loop never waits on an fsync.
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="edge-buffer")
        self.buffer = EdgeBuffer(
            cfg.buffer.path,
            cfg.cluster.tenant,
            max_bytes=cfg.buffer.max_bytes,
            max_age_s=cfg.buffer.max_age_hours * 3600.0,
        )
        self.tags = [PushedTag(t.well, t.name, t.unit) for t in edge_tags(cfg)]
        ids = self.buffer.register_tags(self.tags)
        self.specs = device_specs(cfg, ids)
        self._last_seen = self.buffer.last_seen()  # as stored before this run started
        self.host = ConnectionHost("edge", self._sender_for, last_times=self._last_times)
        self.pusher = Pusher(
            cfg.cluster.url, cfg.api_key(), timeout_s=cfg.cluster.timeout_s, verify=cfg.cluster.verify_tls
        )
        self.link_up = False
        self.stopped_reason: str | None = None
        self.last_error: str | None = None
        self.pushed_rows = 0
        self.metrics_port = 0
        self._session_markers = 0
        self._gap_base: tuple[float, int] | None = None
        self._gap_seen: tuple[float, int] | None = None
        self._sessions: dict[str, str] = {}
        self._inflight: set[int] = set()
        self._taking = asyncio.Lock()

    async def _disk_call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._disk, fn, *args)

    # -- devices -> buffer --------------------------------------------------------------------
    def _sender_for(self, spec: ConnectionSpec) -> BatchSender:
        # In order, one at a time; a failed write (disk full) is retried with backoff. Past the
        # bound the sender itself turns the oldest held readings into gap markers.
        return BatchSender(self._keep, max_inflight=1, backoff_max_s=5.0, max_unacked_rows=2_000_000)

    async def _keep(self, batch: ReadingBatch | TextBatch, _place: Place) -> None:
        if isinstance(batch, TextBatch):
            # The push endpoint carries numbers; a text value that reaches us anyway (an OPC UA
            # node that turned out to be a String) is recorded as lost, never dropped silently.
            first, counts = per_tag(batch.tag_id, batch.time_us)
            gaps = [
                (int(t), int(s), float(n), True)
                for t, s, n in zip(
                    batch.tag_id[first].tolist(), batch.time_us[first].tolist(), counts.tolist(), strict=True
                )
            ]
            await self._disk_call(self.buffer.record_gaps, gaps)
            self.metrics.rejected.labels("text_value").inc(len(batch))
            return
        dropped = await self._disk_call(self.buffer.append, batch)
        self.metrics.buffered.inc(len(batch))
        if dropped:
            log.warning("buffer bound reached: %d readings dropped, recorded as a gap", int(dropped))

    async def _last_times(self, spec: ConnectionSpec, first: dict[int, int]) -> dict[int, int]:
        return {t: s for t, f in first.items() if (s := self._last_seen.get(t)) is not None and s < f}

    # -- buffer -> cluster --------------------------------------------------------------------
    async def _register_tags(self) -> None:
        backoff = Backoff(self.cfg.push.backoff_initial_s, self.cfg.push.backoff_max_s)
        while True:
            res = await self.pusher.register_tags(self.cfg.cluster.tenant, self.tags)
            self.link_up = res.status is not None
            if res.outcome is Outcome.DELIVERED:
                log.info("tags registered", extra={"tags": len(self.tags)})
                return
            if res.outcome is Outcome.STOPPED:
                self._stop_pushing(res)
                return
            if res.outcome is Outcome.REFUSED:
                log.warning(
                    "tags not registered (%s): the key lacks the admin scope; register them with an "
                    "admin key or let the tenant create them on first push (auto_register)",
                    res.message,
                )
                return
            self.last_error = res.message
            delay = backoff.next_delay()
            log.info("tag registration retried in %.1f s: %s", delay, res.message)
            await asyncio.sleep(delay)

    def _stop_pushing(self, res: PushResult) -> None:
        fix = "push.max_points (or the tenant's limits)" if res.status in (400, 413) else "cluster.api_key"
        self.stopped_reason = f"the cluster answered {res.message}; fix {fix} and restart"
        self.metrics.push_stopped.set(1)
        log.error("pushing stopped: %s (readings keep being buffered)", self.stopped_reason)

    async def _push_loop(self) -> None:
        p = self.cfg.push
        if p.register_tags:
            await self._register_tags()
        # ``concurrency`` requests in flight, each its own batch (the oldest not yet taken), so a
        # backlog drains at the cluster's pace rather than one round trip at a time.
        await asyncio.gather(*(self._pusher_task() for _ in range(p.concurrency)))

    async def _pusher_task(self) -> None:
        p = self.cfg.push
        backoff = Backoff(p.backoff_initial_s, p.backoff_max_s)
        due_s = p.interval_ms / 1000.0
        idle_s = min(0.05, due_s / 4)
        while self.stopped_reason is None:
            try:
                await self._push_one(backoff, due_s, idle_s)
            except asyncio.CancelledError:
                raise
            except Exception:  # the buffer file unwritable, say: log, wait, try again
                log.exception("push loop step failed")
                await asyncio.sleep(backoff.next_delay())

    async def _take(self, due_s: float) -> Sealed | None:
        async with self._taking:
            s: Sealed | None = await self._disk_call(
                self.buffer.next_batch, self.cfg.push.max_points, due_s, frozenset(self._inflight)
            )
            if s is not None:
                self._inflight.add(s.seq)
            return s

    async def _push_one(self, backoff: Backoff, due_s: float, idle_s: float) -> None:
        s = await self._take(due_s)
        if s is None:
            await asyncio.sleep(idle_s)
            return
        try:
            await self._send(s, backoff)
        finally:
            self._inflight.discard(s.seq)

    async def _send(self, s: Sealed, backoff: Backoff) -> None:
        p = self.cfg.push
        res = await self.pusher.push(s)
        self.metrics.requests.labels(res.outcome.value).inc()
        self.link_up = res.status is not None
        self.metrics.link_up.set(1 if self.link_up else 0)
        if res.outcome is Outcome.DELIVERED:
            await self._disk_call(self.buffer.delivered, s)
            backoff.reset()
            self.pushed_rows += res.accepted
            self.metrics.pushed.inc(res.accepted)
            for reason in res.rejected_reasons:
                self.metrics.rejected.labels(reason or "unknown").inc()
            if res.rejected:
                log.warning(
                    "%d points rejected by the cluster: %s", res.rejected, sorted(set(res.rejected_reasons))
                )
            return
        self.last_error = res.message
        if res.outcome is Outcome.STOPPED:
            self._stop_pushing(res)
            return
        if res.outcome is Outcome.REFUSED:
            log.error(
                "batch %s refused for good (%s): kept in the buffer file, recorded as a gap", s.key, res.message
            )
            self.metrics.rejected.labels(f"http_{res.status}").inc(s.rows)
            await self._disk_call(self.buffer.refused, s, res.status or 0, res.answer)
            return
        delay = backoff.next_delay()
        if res.retry_after_s is not None:
            delay = min(res.retry_after_s, p.retry_after_max_s)
        log.info("push retried in %.1f s: %s", delay, res.message)
        await asyncio.sleep(delay)

    # -- housekeeping -------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        period = self.cfg.batch_interval_ms / 1000.0
        await run_ticks(period, self.host.step, (max(1, round(1.0 / period)), self._refresh))

    async def _refresh(self) -> None:
        st = await self._disk_call(self.buffer.stats)
        m = self.metrics
        m.buffer_rows.set(st.rows)
        m.buffer_bytes.set(st.bytes)
        m.buffer_file_bytes.set(st.file_bytes)
        m.buffer_age.set(st.oldest_age_s)
        new_markers = self.host.gap_markers - self._session_markers
        if new_markers > 0:
            m.session_gaps.inc(new_markers)
            self._session_markers = self.host.gap_markers
        # The buffer file counts gaps for its whole life; the counters count this run's.
        base = self._gap_base = self._gap_base or (st.gap_readings, st.gap_markers)
        seen = self._gap_seen or base
        m.gaps.inc(max(0.0, st.gap_readings - seen[0]))
        m.gap_markers.inc(max(0, st.gap_markers - seen[1]))
        self._gap_seen = (st.gap_readings, st.gap_markers)
        states: dict[str, int] = {}
        sessions = {cid: c["state"] for cid, c in self.host.status()["connections"].items()}
        for state in sessions.values():
            states[state] = states.get(state, 0) + 1
        self._sessions = sessions  # replaced whole: what the health thread reads
        for state in ("connecting", "connected", "reconnecting", "failed", *states):
            m.sessions.labels(state).set(states.get(state, 0))
        self._stats = st

    def health(self) -> tuple[bool, dict[str, Any]]:
        st = getattr(self, "_stats", None)
        # Runs on the metrics server's thread: reads snapshots only, never the live host.
        sessions = self._sessions
        body = {
            "status": "stopped" if self.stopped_reason else "ok" if self.link_up else "buffering",
            "link": "up" if self.link_up else "down",
            "push_stopped": self.stopped_reason,
            "last_error": self.last_error,
            "pushed_rows": self.pushed_rows,
            "devices": sessions,
            "buffer": None if st is None else vars(st),
            "time": time.time(),
        }
        return self.stopped_reason is None, body

    # -- lifecycle ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> int:
        httpd, self.metrics_port = serve(self.metrics, self.health, self.cfg.metrics.host, self.cfg.metrics.port)
        await self._refresh()
        result = await self.host.apply(self.specs)
        log.info(
            "edge agent started",
            extra={
                "metrics_port": self.metrics_port,
                "devices": len(self.specs),
                "tags": len(self.tags),
                "buffer": str(self.cfg.buffer.path),
                "buffered_rows": self._stats.rows,
                "failed": result["failed"],
            },
        )
        tasks = [asyncio.create_task(self._tick_loop()), asyncio.create_task(self._push_loop())]
        try:
            await stop.wait()
        finally:
            # Sessions stop first, then what they read is written to disk; what is not yet
            # pushed stays in the buffer for the next start.
            await self.host.apply([])
            await self.host.drain(10.0)
            await self.host.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.pusher.close()
            httpd.shutdown()
            await self._disk_call(self.buffer.close)
            self._disk.shutdown()
        return 0


def run_edge(cfg: EdgeConfig) -> int:
    logging.getLogger().setLevel(cfg.log_level)
    # The agent says what matters itself; the libraries' per-request and per-connect lines do not.
    for name in ("httpx", "httpcore", "asyncua"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await EdgeAgent(cfg).run(stop)

    return asyncio.run(main())
