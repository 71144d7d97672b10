"""An OPC UA server that plays a field of wells, for tests, demos and capacity runs.

Address space: one object per well (``W001`` .. ``Wnnn``) under Objects, each holding Double
variables ``T001`` .. ``Tmmm`` whose string node ids are ``W001.T001`` in the namespace
``urn:scada-ingest:sim``.

Two modes:
- ``counting``: on every tick each tag is written with its next integer (1.0, 2.0, 3.0, ...), so a
  tag whose count is N has published exactly 1..N. A client that received anything else lost or
  duplicated data. Before the first tick every tag holds 0.0 (Good): the snapshot a new
  monitored item reports first is then never mistaken for a count (counts start at 1).
- ``realistic``: plausible oilfield signals (tubing and casing pressure, temperature, oil and gas
  rate) with a slow cycle and measurement noise.

Values are written server-side (``Server.write_attribute_value``), not through a client, with
SourceTimestamp = ServerTimestamp = now (UTC) and status Good.

What asyncua 2.1's server does with the values between two publish responses (read in
``asyncua/server/monitored_item_service.py`` and ``internal_subscription.py``), which is what zero
loss rests on:
- every write calls each monitored item's ``datachange_callback``; it passes the item's trigger
  filter (default StatusValue: a value equal to the previous one is *not* reported; the
  StatusValueTimestamp trigger reports it) and then ``enqueue_datachange_event`` appends it to a
  per-item list. Nothing is coalesced to the latest value: the list holds up to the item's revised
  queue size and drops the *oldest* entry only once it is full (DiscardOldest behaviour).
- the revised queue size is ``min(requested, server.iserver.max_monitored_item_queue_size)``
  (10 000 by default); a requested size of 0 is revised to that cap, not to 1 as the spec says.
- the subscription loop publishes every publishing interval; if the client has no PublishRequest
  outstanding the queue simply keeps growing until one arrives, and then *all* queued
  notifications go out in a single message (MoreNotifications is always False).
- sampling interval is ignored: every write is a sample (revised to the publishing interval).
So a client that asks for queue_size > (writes per item between two publish responses) receives
every value; no patching of the server is needed. The only loss path is a full per-item queue
(a client that stops sending PublishRequests for longer than queue_size ticks), plus whatever is
still queued when the server shuts down: hence ``drain()``.

Command line (``python -m ingest.simulators.opcua_sim --help``): prints ``NODES <json list>``,
then ``READY <endpoint>`` once it accepts connections. SIGUSR1 resumes and SIGUSR2 pauses
publishing (``--start-paused`` starts paused). On SIGTERM / SIGINT or after ``--duration`` it stops
publishing, writes the summary ``{"published", "per_node", "endpoint"}`` to ``--summary-file``
and as the last stdout line, drains (``--drain-s``), then shuts the server down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import socket
import sys
from collections.abc import Coroutine
from datetime import UTC
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

__all__ = ["NAMESPACE_URI", "OpcUaSimulator", "SimulatorMode", "main"]

NAMESPACE_URI = "urn:scada-ingest:sim"

SimulatorMode = Literal["counting", "realistic"]

# (name, base, cycle amplitude, noise sigma, cycle period s); a well's tags cycle through them.
_SIGNALS: tuple[tuple[str, float, float, float, float], ...] = (
    ("tubing_pressure_psi", 850.0, 40.0, 3.0, 300.0),
    ("casing_pressure_psi", 1200.0, 25.0, 2.0, 600.0),
    ("wellhead_temperature_degF", 165.0, 4.0, 0.3, 900.0),
    ("oil_rate_bbl_d", 420.0, 30.0, 8.0, 120.0),
    ("gas_rate_mcf_d", 900.0, 60.0, 15.0, 180.0),
)

_GOOD = ua.StatusCode(ua.UInt32(StatusCodes.Good))


class OpcUaSimulator:
    """A simulated well field served over OPC UA (security mode None)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4840,
        wells: int = 2,
        tags_per_well: int = 5,
        interval_ms: int = 100,
        mode: SimulatorMode = "counting",
        name: str = "scada-sim",
        *,
        paused: bool = False,
        seed: int = 0,
    ) -> None:
        """``paused=True`` starts the server without publishing until ``resume()``."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        if wells < 1:
            raise ValueError(f"wells must be >= 1, got {wells}")
        if tags_per_well < 1:
            raise ValueError(f"tags_per_well must be >= 1, got {tags_per_well}")
        if interval_ms < 1:
            raise ValueError(f"interval_ms must be >= 1, got {interval_ms}")
        if mode not in ("counting", "realistic"):
            raise ValueError(f"mode must be 'counting' or 'realistic', got {mode!r}")
        if not name or "/" in name:
            raise ValueError(f"name must be a non-empty path segment, got {name!r}")
        self.host = host
        self.port = port
        self.wells = wells
        self.tags_per_well = tags_per_well
        self.interval_ms = interval_ms
        self.mode: SimulatorMode = mode
        self.name = name
        self._names = [
            f"W{w:03d}.T{t:03d}" for w in range(1, wells + 1) for t in range(1, tags_per_well + 1)
        ]
        self._counts = [0] * len(self._names)
        self._server: Server | None = None
        self._ns = 0
        self._ua_ids: list[ua.NodeId] = []
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._running = asyncio.Event()
        if not paused:
            self._running.set()
        self._tick_lock = asyncio.Lock()
        self._rng = np.random.default_rng(seed)
        self._signal_params = _signal_params(wells, tags_per_well, self._rng)
        self._t0 = 0.0

    # --- public surface ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/{self.name}/"

    @property
    def total_published(self) -> int:
        return sum(self._counts)

    @property
    def namespace_index(self) -> int:
        return self._ns

    def published_per_node(self) -> dict[str, int]:
        """Values written so far, keyed by full node id (``ns=2;s=W001.T001``)."""
        return dict(zip(self.node_ids(), self._counts, strict=True))

    def node_ids(self) -> list[str]:
        """Full string node ids in the namespace index the server actually registered."""
        if not self._ua_ids:
            raise RuntimeError("node ids are known once the simulator has started")
        return [f"ns={self._ns};s={n}" for n in self._names]

    async def start(self) -> None:
        if self._server is not None or self._stopped:
            raise RuntimeError("a simulator starts once; make a new one to restart")
        if self.port == 0:
            self.port = _free_port(self.host)
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(self.name)
        # Security None only: the simulator carries no certificate (the client side is where
        # Sign / SignAndEncrypt get exercised, against servers configured for it).
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        self._ns = await server.register_namespace(NAMESPACE_URI)
        self._ua_ids = []
        objects = server.nodes.objects
        for w in range(1, self.wells + 1):
            well = await objects.add_object(
                ua.NodeId(ua.String(f"W{w:03d}"), ua.Int16(self._ns)), f"W{w:03d}"
            )
            for t in range(1, self.tags_per_well + 1):
                nid = ua.NodeId(ua.String(f"W{w:03d}.T{t:03d}"), ua.Int16(self._ns))
                await well.add_variable(nid, f"T{t:03d}", 0.0, ua.VariantType.Double)
                self._ua_ids.append(nid)
        self._server = server
        # Initial values are not counted: 0.0 in counting mode, a first sample in realistic mode.
        initial = [0.0] * len(self._ua_ids) if self.mode == "counting" else self._next_values(0.0)
        await self._write_all(initial)
        await server.start()
        self._t0 = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._publish_loop(), name=f"opcua-sim-{self.port}")

    async def pause(self) -> None:
        """Stop publishing; when this returns no further value is written until ``resume()``."""
        self._running.clear()
        async with self._tick_lock:  # waits for a tick in progress
            pass

    async def resume(self) -> None:
        self._running.set()

    async def stop(self) -> None:
        """Stop publishing, then shut the server down (connected clients see the socket close)."""
        if self._stopped:
            return
        self._stopped = True
        await self.pause()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._server is not None:
            await self._server.stop()

    async def drain(self, timeout_s: float = 3.0) -> bool:
        """Wait until every subscriber has been sent, and has acknowledged, what was published.

        Call after ``pause()`` and before ``stop()`` so the last values queued for a client are
        not thrown away with the server. Returns False if ``timeout_s`` passed first (a client
        that went away leaves its queue behind until its session times out).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._has_undelivered():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def _has_undelivered(self) -> bool:
        if self._server is None:
            return False
        # asyncua keeps no public view of this: read the per-subscription queues (see the module
        # docstring) and treat a layout we do not recognise as "nothing pending".
        subs = getattr(self._server.iserver.subscription_service, "subscriptions", {})
        return any(
            getattr(sub, "_triggered_datachanges", None)
            or getattr(sub, "_not_acknowledged_results", None)
            for sub in list(subs.values())
        )

    def summary(self) -> dict[str, object]:
        return {
            "published": self.total_published,
            "per_node": self.published_per_node(),
            "endpoint": self.endpoint,
        }

    # --- publishing ---------------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.interval_ms / 1000.0
        next_at = loop.time()
        while True:
            if not self._running.is_set():
                await self._running.wait()
                next_at = loop.time()
            async with self._tick_lock:
                if self._running.is_set():
                    await self._tick(loop.time())
            next_at += period
            delay = next_at - loop.time()
            if delay < -period:
                # Fell behind by more than a tick (server saturated): carry on from now instead of
                # bursting to catch up; every write is still counted, the rate is just lower.
                next_at = loop.time()
                delay = 0.0
            await asyncio.sleep(max(delay, 0.0))

    async def _tick(self, now_s: float) -> None:
        await self._write_all(self._next_values(now_s), count=True)

    async def _write_all(self, values: list[float], *, count: bool = False) -> None:
        assert self._server is not None
        ts = ua.DateTime.now(UTC)  # the asyncua subtype, so the types line up
        write = self._server.write_attribute_value
        counts = self._counts
        for i, nid in enumerate(self._ua_ids):
            dv = ua.DataValue(
                Value=ua.Variant(values[i], ua.VariantType.Double),
                StatusCode=_GOOD,
                SourceTimestamp=ts,
                ServerTimestamp=ts,
            )
            await write(nid, dv)
            if count:
                counts[i] += 1

    def _next_values(self, now_s: float) -> list[float]:
        if self.mode == "counting":
            return [float(c + 1) for c in self._counts]
        return self._realistic_values(now_s - self._t0)

    def _realistic_values(self, t: float) -> list[float]:
        base, amp, sigma, period, phase = self._signal_params
        noise = self._rng.normal(0.0, sigma)
        v = base + amp * np.sin(2.0 * math.pi * t / period + phase) + noise
        return [float(x) for x in np.maximum(v, 0.0)]


def _signal_params(
    wells: int, tags_per_well: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], ...]:
    """Per tag: base, cycle amplitude, noise sigma, period and phase (each well a bit different)."""
    n = wells * tags_per_well
    kinds = np.arange(n) % len(_SIGNALS)
    table = np.array([s[1:] for s in _SIGNALS], dtype=np.float64)
    well_scale = rng.uniform(0.7, 1.3, wells)[np.repeat(np.arange(wells), tags_per_well)]
    phase = rng.uniform(0.0, 2.0 * math.pi, n)
    return (
        table[kinds, 0] * well_scale,
        table[kinds, 1] * well_scale,
        table[kinds, 2],
        table[kinds, 3],
        phase,
    )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- command line -------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ingest.simulators.opcua_sim", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4840, help="0 picks a free port")
    p.add_argument("--wells", type=int, default=2)
    p.add_argument("--tags", type=int, default=5, help="tags per well")
    p.add_argument("--interval-ms", type=int, default=100)
    p.add_argument("--mode", choices=["counting", "realistic"], default="counting")
    p.add_argument("--name", default="scada-sim")
    p.add_argument("--duration", type=float, default=None, help="seconds; default: until signal")
    p.add_argument("--summary-file", type=Path, default=None)
    p.add_argument(
        "--drain-s",
        type=float,
        default=3.0,
        help="after the summary, keep serving up to this long until every subscriber has "
        "received and acknowledged what was published (0: shut down at once)",
    )
    p.add_argument(
        "--start-paused",
        action="store_true",
        help="serve but publish nothing until SIGUSR1 (SIGUSR2 pauses again)",
    )
    return p.parse_args(argv)


async def _run(args: argparse.Namespace) -> dict[str, object]:
    sim = OpcUaSimulator(
        host=args.host,
        port=args.port,
        wells=args.wells,
        tags_per_well=args.tags,
        interval_ms=args.interval_ms,
        mode=args.mode,
        name=args.name,
        paused=args.start_paused,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pending: set[asyncio.Task[None]] = set()

    def later(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGUSR1, lambda: later(sim.resume()))
    loop.add_signal_handler(signal.SIGUSR2, lambda: later(sim.pause()))
    await sim.start()
    try:
        print(f"NODES {json.dumps(sim.node_ids())}", flush=True)
        print(f"READY {sim.endpoint}", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.duration)
        # Freeze the counts before reporting them, and report before closing the server so a
        # client can still drain what was published.
        await sim.pause()
        summary = sim.summary()
        line = json.dumps(summary)
        if args.summary_file is not None:
            args.summary_file.write_text(line + "\n")
        print(line, flush=True)
        if args.drain_s > 0:
            await sim.drain(args.drain_s)
    finally:
        await sim.stop()
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args = _parse_args(argv)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
