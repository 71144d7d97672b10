"""A Modbus TCP device simulator (pymodbus server), for tests, demos and capacity runs.

This is its command line; the server is ``ingest.simulators.modbus_server.ModbusSimulator``
(re-exported here with ``COUNTER_BASE``), its registers ``ingest.simulators.modbus_layout``.

``python -m ingest.simulators.modbus_sim --port 0 --units 1 --counters 100 --interval-ms 100``
prints ``READY tcp://127.0.0.1:PORT`` once it accepts connections and serves until SIGTERM /
SIGINT, then prints a JSON summary line. ``--count N`` starts N such servers as separate
processes (free ports, or PORT..PORT+N-1) and prints one READY line for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import subprocess
import sys
import threading

from ingest.simulators.modbus_layout import COUNTER_BASE
from ingest.simulators.modbus_server import ModbusSimulator, SimulatorMode

__all__ = ["COUNTER_BASE", "ModbusSimulator", "SimulatorMode", "main"]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ingest.simulators.modbus_sim", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--units", default="1", help="comma-separated unit ids, e.g. 1,2,3")
    p.add_argument("--counters", type=int, default=100, help="uint32 counters per unit")
    p.add_argument("--interval-ms", type=int, default=100, help="counter increment period")
    p.add_argument("--mode", choices=["counting", "static"], default="counting")
    p.add_argument("--count", type=int, default=1, help="servers to start, one process each")
    p.add_argument("--exit-on-stdin-eof", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.unit_ids = tuple(int(u) for u in args.units.split(",") if u.strip())
    except ValueError:
        p.error(f"--units must be comma-separated integers, got {args.units!r}")
    if args.count < 1:
        p.error("--count must be >= 1")
    return args


async def _serve(args: argparse.Namespace) -> None:
    sim = ModbusSimulator(
        host=args.host,
        port=args.port,
        units=args.unit_ids,
        mode=args.mode,
        interval_ms=args.interval_ms,
        counters=args.counters,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_on_stdin_eof:
        # Started by a --count parent: its end (even by SIGKILL) closes our stdin.
        def watch() -> None:
            sys.stdin.buffer.read()
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch, name="stdin-watch", daemon=True).start()
    await sim.start()
    try:
        print(f"READY {sim.endpoint}", flush=True)
        await stop.wait()
    finally:
        await sim.stop()
    print(json.dumps(sim.summary()), flush=True)


def _serve_many(args: argparse.Namespace, argv: list[str]) -> int:
    """Start ``--count`` servers as child processes and relay their READY lines."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    children: list[subprocess.Popen[bytes]] = []
    rc = 0
    try:
        for i in range(args.count):
            port = 0 if args.port == 0 else args.port + i
            cmd = [sys.executable, "-m", "ingest.simulators.modbus_sim", *argv]
            cmd += ["--count", "1", "--port", str(port), "--exit-on-stdin-eof"]
            child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            children.append(child)
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline().decode().strip()
            if not line.startswith("READY "):
                print(f"simulator process {child.pid} failed to start", file=sys.stderr)
                return 1
            print(line, flush=True)
        while not stop.wait(0.2):
            if any(c.poll() is not None for c in children):
                print("a simulator process exited", file=sys.stderr)
                rc = 1
                break
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                out, _ = child.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                out, _ = child.communicate()
            for line in out.decode().splitlines():
                if line.startswith("{"):
                    print(line, flush=True)
    return rc


def _strip_count_and_port(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--count", "--port"):
            skip = True
            continue
        if a.startswith(("--count=", "--port=")):
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    from ingest.core.logging_json import configure_json_logging

    configure_json_logging(logging.WARNING)
    raw = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(raw)
    if args.count > 1:
        return _serve_many(args, _strip_count_and_port(raw))
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
