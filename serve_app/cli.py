"""``scada-ingest``: the one entry point. Verbs: up, down, demo, status, migrate, bench, edge.

The CLI is the composition root, so it sits in the top layer (serve_app -> actors -> ingest): it
starts the local stack, deploys the actors and the Serve app, and runs the demo. ``bench`` hands
over to ``python -m scale_tests bench ...`` in the same process (exec), so the benchmarks, which
use every layer, are reached without anything importing them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from ingest.core.config import Settings, load_settings, on_cluster
from ingest.core.errors import StandingBy
from ingest.core.logging_json import configure_json_logging
from ingest.core.ray_env import ray_env_defaults
from ingest.store.master import migrate_all


def _print_json(obj: dict[str, Any]) -> None:
    # Scripts read the last line of stdout: exactly one JSON object.
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _info(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    if not on_cluster():
        from ingest.localstack.stack import start_local

        start_local(settings)
    _print_json({"applied": asyncio.run(migrate_all(settings))})
    return 0


def up(settings: Settings) -> dict[str, Any]:
    from actors import deploy
    from serve_app.deploy import deploy as deploy_app

    started_ray = False
    if not on_cluster():
        from ingest.localstack.stack import start_local

        _info("starting PostgreSQL + TimescaleDB and Redis (local stack)")
        start_local(settings)
    asyncio.run(migrate_all(settings))
    if not on_cluster():
        _info("starting Ray (loopback, token authentication)")
        started_ray = deploy.start_local_ray(settings)
    deploy.connect(settings)
    info = deploy_app(settings)
    deploy.wait_http(f"{info['api']}/healthz")
    return {
        **info,
        "ray_started": started_ray,
        "docs": f"{info['api']}/docs",
        "live_page": f"{info['api']}/ui/",
        "dashboard": f"http://127.0.0.1:{settings.dashboard_port}",
    }


def cmd_up(settings: Settings, _: argparse.Namespace) -> int:
    info = up(settings)
    _info(f"API docs: {info['docs']}   live page: {info['live_page']}")
    _info(f"Ray dashboard: {info['dashboard']} (token: `ray get-auth-token`)")
    _print_json(info)
    return 0


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from actors import deploy
    from serve_app.deploy import undeploy

    if not deploy.gcs_listening(settings):
        _info(f"no Ray cluster at {deploy.ray_address(settings)} to undeploy from")
    else:
        try:
            deploy.connect(settings)
            undeploy(settings)
        except Exception as e:
            _info(f"no Ray cluster to undeploy from ({type(e).__name__})")
    if not on_cluster():
        deploy.stop_local_ray()
        from ingest.localstack.stack import stop_local

        stop_local(settings)
    _print_json({"down": True})
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    import ray

    from actors import deploy

    if not deploy.gcs_listening(settings):  # else ray.init waits minutes for a GCS to appear
        address = deploy.ray_address(settings)
        _info(f"no Ray cluster listens at {address}: nothing is running (`scada-ingest up` starts it)")
        _print_json({"running": False, "address": address})
        return 3
    deploy.connect(settings)
    status = ray.get(deploy.coordinator(settings).status.remote(), timeout=30)
    if not args.json:
        from ingest.placement.status_view import render

        sys.stdout.write(render(status) + "\n")
    _print_json(status)
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from serve_app.demo import run_demo

    info = up(settings)
    _info(f"API docs: {info['docs']}")
    _info(
        f"Ray dashboard: {info['dashboard']} (token auth on: open it with the token that "
        "`.venv/bin/ray get-auth-token` prints)"
    )
    summary = run_demo(settings, info["api"], args.duration, args.wells, args.tags, args.interval_ms)
    _print_json(summary)
    return 0 if summary["lost"] == 0 else 1


def cmd_edge(args: argparse.Namespace) -> int:
    """The site agent: no Ray, PostgreSQL or Redis, so none of them is imported or started here."""
    from ingest.core.errors import EdgeConfigInvalid
    from ingest.edge.config import load_config

    try:
        cfg = load_config(args.config)
    except EdgeConfigInvalid as e:
        _info(f"scada-ingest edge: {args.config}: {e}")
        return 2
    if args.check:
        _print_json({"config": str(args.config), "devices": len(cfg.devices), "ok": True})
        return 0
    from ingest.edge.agent import run_edge

    return run_edge(cfg)


def main(argv: list[str] | None = None) -> int:
    # Ray reads its environment once, when it is imported: set it before anything does.
    ray_env_defaults()
    configure_json_logging(logging.WARNING)
    p = argparse.ArgumentParser(prog="scada-ingest", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("up", help="start the local stack (or join RAY_ADDRESS) and deploy")
    sub.add_parser("down", help="remove the deployment and stop the local stack")
    sub.add_parser("migrate", help="apply master and tenant migrations")
    st = sub.add_parser("status", help="tenants, actors, connections, health")
    st.add_argument("--json", action="store_true")
    d = sub.add_parser("demo", help="run a simulated fleet end to end and report")
    d.add_argument("--duration", type=float, default=30.0, help="seconds of streaming")
    d.add_argument("--wells", type=int, default=8)
    d.add_argument("--tags", type=int, default=25, help="tags per well")
    d.add_argument("--interval-ms", type=int, default=100, help="simulator update period")
    b = sub.add_parser(
        "bench",
        help="measure a path against its baseline (python -m scale_tests bench TARGET --help for its options)",
    )
    b.add_argument("target", choices=["writer", "opcua", "modbus", "query", "push", "live"])
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options of that bench, e.g. --json")
    e = sub.add_parser("edge", help="run the site agent: devices -> disk buffer -> push to the cluster")
    e.add_argument("--config", required=True, help="the agent's YAML file (deploy/edge.example.yaml)")
    e.add_argument("--check", action="store_true", help="check the file and exit (2 names a bad field)")
    args = p.parse_args(argv)
    if args.verb == "edge":
        return cmd_edge(args)
    settings = load_settings()
    verbs = {
        "up": cmd_up,
        "down": cmd_down,
        "migrate": cmd_migrate,
        "status": cmd_status,
        "demo": cmd_demo,
        "bench": cmd_bench,
    }
    try:
        return verbs[args.verb](settings, args)
    except StandingBy as e:
        print(f"scada-ingest {args.verb}: {e}", file=sys.stderr)
        return 3


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "scale_tests", "bench", args.target, *args.rest]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # does not return


if __name__ == "__main__":
    raise SystemExit(main())
