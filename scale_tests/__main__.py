"""``python -m scale_tests <scenario> [--json]``; the last line of stdout is a JSON summary."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ingest.core.errors import StandingBy
from ingest.core.ray_env import ray_env_defaults

# Ray reads its environment when it is first imported, and the private Ray a bench starts runs
# with token authentication (scale_tests.common): set here, or a driver that imported ray before
# start_private_ray talks to its own cluster without the token and is refused.
ray_env_defaults()


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m scale_tests")
    sub = p.add_subparsers(dest="scenario", required=True)
    f = sub.add_parser("failover", help="remove a node hosting connection actors mid-stream")
    f.add_argument("--wells", type=int, default=6)
    f.add_argument("--tags", type=int, default=5)
    f.add_argument("--interval-ms", type=int, default=50)
    f.add_argument(
        "--runs", type=int, default=1, help="repeat the scenario; prints each run, then the worst as the summary"
    )
    f.add_argument(
        "--servers",
        default="takeover,history,neither,stock",
        help="kinds of OPC UA server, one node loss each: takeover, history, neither, stock",
    )
    f.add_argument("--json", action="store_true")
    e = sub.add_parser("edge_outage", help="cut an edge agent's link to the cluster, restore it, count")
    e.add_argument("--wells", type=int, default=2)
    e.add_argument("--tags", type=int, default=10)
    e.add_argument("--interval-ms", type=int, default=100)
    e.add_argument("--outage-s", type=float, default=65.0, help="how long the link stays cut (>= 60)")
    e.add_argument("--json", action="store_true")
    c = sub.add_parser("capacity", help="offered load stepped up per stage until loss or p99 > 1 s; plots")
    c.add_argument("--quick", action="store_true", help="two small steps per stage, 3 s each (for a test)")
    c.add_argument("--seconds", type=float, default=None, help="measuring window per step (10 s; quick: 3 s)")
    c.add_argument("--nodes", type=int, default=3, help="nodes of the ray.cluster_utils.Cluster it runs on")
    c.add_argument("--json", action="store_true")
    b = sub.add_parser("bench", help="a path against its baseline, side by side in one run")
    b.add_argument("target", choices=["writer", "opcua", "modbus", "query", "push", "live"])
    b.add_argument(
        "--seconds", type=float, default=None, help="measuring window (opcua, modbus, live: 20 s; push: 60 s)"
    )
    b.add_argument("--rows", type=int, default=1_000_000)
    b.add_argument("--rounds", type=int, default=2)
    b.add_argument("--tags", type=int, default=100, help="tags with a month of data (query)")
    b.add_argument("--days", type=int, default=30, help="days of data per tag (query)")
    b.add_argument("--interval-s", type=int, default=10, help="seconds between readings (query)")
    b.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="requests per query kind (query; 2,000: about 4 s a kind, 500 were a second)",
    )
    b.add_argument("--kinds", help="query: only these kinds (comma-separated, e.g. latest_100), for a profile")
    b.add_argument("--api-replicas", type=int, default=2, help="API replicas deployed for the run (query)")
    b.add_argument(
        "--no-round-trips", action="store_true", help="query: skip counting statements per request (2 minutes)"
    )
    b.add_argument(
        "--clients",
        type=int,
        default=32,
        help="concurrent HTTP clients (push; each sends after its answer, so it takes enough of them to keep"
        " the server busy: 8 left it waiting between group commits)",
    )
    b.add_argument("--dup-seconds", type=float, default=10.0, help="duplicate-send phase (push)")
    b.add_argument("--subscribers", type=int, default=200, help="live clients, SSE and WebSocket mixed (live)")
    b.add_argument("--tenants", type=int, default=10, help="tenants the live clients spread over (live)")
    b.add_argument(
        "--cycles", type=int, default=10_000, help="connect/disconnect cycles for the memory check (live)"
    )
    b.add_argument(
        "--paths",
        default=None,
        help="live, query: the HTTP paths measured in turn, of proxy (Serve's proxy) and direct (the replica's "
        "own port); live: proxy,direct by default, query: direct,proxy",
    )
    b.add_argument("--offered", type=float, default=None, help="values/s offered (opcua: 12,000; modbus: 40,000)")
    b.add_argument("--profile", default=None, help="folder for py-spy profiles of the writer rounds (writer)")
    b.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    ok = True
    if args.scenario == "bench":
        result = run_bench(args)
    elif args.scenario == "capacity":
        from scale_tests.capacity import run as capacity

        result = capacity(quick=args.quick, seconds=args.seconds, nodes=args.nodes)
    elif args.scenario == "edge_outage":
        from scale_tests.edge_outage import run as edge_outage

        result = edge_outage(args.wells, args.tags, args.interval_ms, args.outage_s)
        ok = result["lost"] == 0 and result["duplicates"] == 0
    else:
        from scale_tests.failover import run

        runs = []
        for i in range(args.runs):
            runs.append(run(args.wells, args.tags, args.interval_ms, tuple(args.servers.split(","))))
            sys.stderr.write(f"run {i + 1}/{args.runs}: {json.dumps(runs[-1])}\n")
        result = (
            runs[0]
            if len(runs) == 1
            else {
                "scenario": "failover",
                "runs": len(runs),
                "worst_silent_loss": max(r["silent_loss"] for r in runs),
                "worst_recovery_s": max(r["recovery_s"] for r in runs),
                "worst_duplicates": max(r["duplicates"] for r in runs),
                "silent_loss": [r["silent_loss"] for r in runs],
                "recovery_s": [r["recovery_s"] for r in runs],
                "gaps_recorded": [r["gaps_recorded"] for r in runs],
                "published": [r["published"] for r in runs],
                "moved_connections": [r["moved_connections"] for r in runs],
            }
        )
        # Loss and duplicates decide; recovery time is reported, not judged (a loaded machine).
        ok = all(
            c["silent_loss"] == 0 and c["duplicates"] == 0 for r in runs for c in r["configurations"].values()
        )
    if not args.json:
        sys.stderr.write(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if ok else 1


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from ingest.core.config import load_settings

    if args.target == "writer":
        from pathlib import Path

        from scale_tests.bench_writer import run as bench_writer

        profile = Path(args.profile) if args.profile else None
        return bench_writer(load_settings(), args.rows, args.rounds, profile)
    if args.target == "push":
        from scale_tests.bench_push import run as bench_push

        return bench_push(seconds=args.seconds or 60.0, clients=args.clients, dup_seconds=args.dup_seconds)
    if args.target == "live":
        from scale_tests.bench_live import run as bench_live

        return bench_live(
            subscribers=args.subscribers,
            tenants=args.tenants,
            seconds=args.seconds or 20.0,
            cycles=args.cycles,
            paths=tuple(x.strip() for x in (args.paths or "proxy,direct").split(",") if x.strip()),
        )
    if args.target == "query":
        from scale_tests.bench_query import run as bench_query

        return bench_query(
            tags=args.tags,
            days=args.days,
            interval_s=args.interval_s,
            requests=args.requests,
            paths=tuple(x.strip() for x in (args.paths or "direct,proxy").split(",") if x.strip()),
            round_trips=not args.no_round_trips,
            api_replicas=args.api_replicas,
            only=tuple(x.strip() for x in (args.kinds or "").split(",") if x.strip()),
        )
    if args.target == "opcua":
        from scale_tests.bench_devices import run_opcua

        return run_opcua(offered=args.offered or 12_000.0, seconds=args.seconds or 20.0)
    from scale_tests.bench_devices import run_modbus

    return run_modbus(offered=args.offered or 40_000.0, seconds=args.seconds or 20.0)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except StandingBy as e:  # another cluster runs on this stack: it would be measured twice
        print(f"scale_tests: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
