"""An OPC UA server that plays a field of wells, for tests, demos and capacity runs.

This is its command line (``python -m ingest.simulators.opcua_sim --help``); the server is
``ingest.simulators.opcua_server.OpcUaSimulator`` (re-exported here), the tags and values are
``ingest.simulators.well_field``.

It prints ``NODES <json list>``, then ``READY <endpoint>`` once it accepts connections. SIGUSR1
resumes and SIGUSR2 pauses publishing (``--start-paused`` starts paused). On SIGTERM / SIGINT or
after ``--duration`` it stops publishing, writes the summary ``{"published", "per_node",
"endpoint"}`` to ``--summary-file`` and as the last stdout line, drains (``--drain-s``), then shuts
the server down. ``--count N`` runs N such servers, one process each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ingest.core.models import SecurityMode, SecurityPolicy
from ingest.simulators.opcua_server import NAMESPACE_URI, TRANSFER_MODES, OpcUaSimulator, SecuritySpec
from ingest.simulators.well_field import SimulatorMode

__all__ = ["NAMESPACE_URI", "OpcUaSimulator", "SimulatorMode", "main"]


def _security_arg(text: str) -> SecuritySpec:
    mode, _, policy = text.partition(":")
    try:
        spec = (SecurityMode(mode), SecurityPolicy(policy or "None"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected Mode:Policy (e.g. SignAndEncrypt:Basic256Sha256 or None), got {text!r}"
        ) from None
    return spec


def _user_arg(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not name or not sep:
        raise argparse.ArgumentTypeError("expected name:password")
    return name, password


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of ms, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ingest.simulators.opcua_sim", description=__doc__.split("\n")[0])
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
    p.add_argument(
        "--security",
        type=_security_arg,
        action="append",
        default=None,
        help="endpoint to offer, Mode:Policy (repeatable; default None). Modes: None, Sign, "
        "SignAndEncrypt; policies: Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss",
    )
    p.add_argument("--pki-dir", type=Path, default=None, help="server certificate folder")
    p.add_argument(
        "--user",
        type=_user_arg,
        action="append",
        default=None,
        help="name:password (repeatable); when given, anonymous logins are refused",
    )
    p.add_argument("--string-tags", action="store_true", help="one String tag per well")
    p.add_argument("--extra-nodes", type=int, default=0, help="static variables under Objects/Extra (browsing)")
    p.add_argument("--max-nodes-per-browse", type=int, default=0, help="OperationLimits value to state (0: none)")
    p.add_argument("--historize", action="store_true", help="keep history of every tag")
    p.add_argument("--history-db", type=Path, default=None, help="SQLite file for the history")
    p.add_argument(
        "--slow-fraction", type=float, default=0.0, help="share of each well's tags in the slow class (0..1)"
    )
    p.add_argument("--slow-every", type=int, default=10, help="slow tags publish every this many ticks")
    p.add_argument(
        "--transfer",
        choices=TRANSFER_MODES,
        default="complete",
        help="TransferSubscriptions: complete (default) moves a subscription so it publishes to the "
        "new session; stock is asyncua's own (answers Good, then the subscription stays silent); "
        "unsupported answers BadServiceUnsupported",
    )
    p.add_argument(
        "--session-timeout-ms",
        type=_positive_int,
        default=None,
        metavar="N",
        help="longest session timeout granted, in ms (default: asyncua's, up to 10 min); the "
        "session of a client that went away, and its subscriptions, are deleted this long after "
        "its last request",
    )
    p.add_argument(
        "--count",
        type=int,
        default=1,
        help="simulator servers to run, one process each, each on its own port "
        "(needs --port 0); every one prints its own NODES/READY lines",
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
        security=args.security,
        pki_dir=args.pki_dir,
        users=dict(args.user) if args.user else None,
        string_tags=args.string_tags,
        historize=args.historize,
        history_db=args.history_db,
        slow_every=args.slow_every,
        slow_fraction=args.slow_fraction,
        extra_nodes=args.extra_nodes,
        max_nodes_per_browse=args.max_nodes_per_browse,
        transfer=args.transfer,
        session_timeout_ms=args.session_timeout_ms,
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


def _run_many(argv: list[str], count: int) -> int:
    """Start ``count`` simulator processes, pass their lines through, stop them all on a signal."""
    import subprocess
    import threading

    child_argv = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--count":
            skip = True
            continue
        if a.startswith("--count="):
            continue
        child_argv.append(a)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ingest.simulators.opcua_sim", *child_argv], stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]

    def relay(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()

    threads = [threading.Thread(target=relay, args=(p,), daemon=True) for p in procs]
    for t in threads:
        t.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    codes = [p.wait() for p in procs]
    for t in threads:
        t.join(5)
    return max(codes)


def main(argv: list[str] | None = None) -> int:
    from ingest.core.logging_json import configure_json_logging

    configure_json_logging(logging.WARNING)
    raw = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(raw)
    if args.count > 1:
        if args.port != 0:
            raise SystemExit("--count > 1 needs --port 0 (each server takes a free port)")
        return _run_many(raw, args.count)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
