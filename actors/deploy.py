"""Ray plumbing for the CLI: start or join Ray, deploy (or find) the coordinator, undeploy."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.common import COORDINATOR_NAME
from actors.coordinator import CoordinatorActor
from ingest.core import procfs
from ingest.core.config import Settings
from ingest.core.errors import StandingBy
from ingest.core.ray_env import ray_env_defaults

RAY_PORT = 6390


# Structured logs from every actor and task: Ray's own JSON encoding (one object per line, with
# job, worker, actor and task ids). Actors inherit it from the job that creates them, so the
# driver that deploys sets it.
def ray_logging_config() -> ray.LoggingConfig:
    return ray.LoggingConfig(encoding="JSON", log_level="INFO")


def _ray_bin() -> str:
    return os.path.join(os.path.dirname(sys.executable), "ray")


def ray_address(settings: Settings) -> str:
    return os.environ.get("RAY_ADDRESS") or f"{settings.pg_host}:{RAY_PORT}"


def gcs_listening(settings: Settings, timeout_s: float = 2.0) -> bool:
    """Whether anything accepts a connection at the cluster's address. ``ray.init`` against an
    address where nothing listens does not fail: it keeps waiting for a GCS to appear (minutes),
    which made ``down`` hang when no cluster was running. An address that is not ``host:port``
    (``auto``, ``ray://``) is left to Ray."""
    import socket

    host, sep, port = ray_address(settings).rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return True
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def use_token_auth() -> None:
    """Token authentication on for this process and its children (ray CLI, workers), and the
    rest of ``ingest.core.ray_env``."""
    ray_env_defaults()


def start_local_ray(settings: Settings) -> bool:
    """Start a local Ray head bound to loopback, with token authentication on; False if running."""
    use_token_auth()
    # A token must exist before `ray start` for the head to turn token authentication on.
    subprocess.run([_ray_bin(), "get-auth-token", "--generate"], check=True, capture_output=True, timeout=60)
    probe = subprocess.run(
        [_ray_bin(), "status", "--address", ray_address(settings)],
        capture_output=True,
        timeout=60,
    )
    if probe.returncode == 0:
        return False
    env = dict(os.environ)
    subprocess.run(
        [
            _ray_bin(),
            "start",
            "--head",
            f"--port={RAY_PORT}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={settings.dashboard_port}",
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
        timeout=180,
        env=env,
    )
    return True


def stop_local_ray(port: int = RAY_PORT, grace_s: float = 10.0) -> list[int]:
    """Stop the Ray cluster whose GCS listens on ``port``, and only it: ``ray stop`` ends every
    Ray process on the machine, another cluster's (a test run, a bench) included. Its processes
    are the GCS and whatever was started with its address (raylet, dashboard, monitors, workers),
    with their descendants: SIGTERM, then SIGKILL after ``grace_s``. Returns the pids signalled."""
    pids = own_ray_pids(port)
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(procfs.alive(p) for p in pids):
        time.sleep(0.2)
    _signal([p for p in pids if procfs.alive(p)], signal.SIGKILL)
    return pids


def own_ray_pids(port: int) -> list[int]:
    """Pids of the Ray cluster whose GCS listens on ``port`` (see ``stop_local_ray``)."""
    mark, suffix = f"--gcs_server_port={port}", f":{port}"
    roots = set()
    for pid in procfs.pids():
        args = procfs.cmdline(pid) or []
        if any(a == mark or ("gcs" in a and a.startswith("--") and a.endswith(suffix)) for a in args):
            roots.add(pid)
    # Their descendants too: workers forked by the raylet, their helpers.
    found = procfs.descendants(roots)
    found.discard(os.getpid())
    return sorted(found)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def connect(settings: Settings) -> None:
    if not ray.is_initialized():
        use_token_auth()
        ray.init(
            address=ray_address(settings),
            namespace=settings.namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
            logging_config=ray_logging_config(),
        )


def head_node_id() -> str | None:
    for n in ray.nodes():  # type: ignore[no-untyped-call]
        if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {}):
            return str(n["NodeID"])
    return None


def ensure_coordinator(settings: Settings) -> Any:
    """Create (or find) the detached coordinator and start its loop. Idempotent: after a
    cluster upgrade (a new Ray cluster) it creates the coordinator again, which creates the
    writers and connection actors from the desired state kept in PostgreSQL."""
    # The coordinator runs on the head node: losing the head loses the cluster anyway, while a
    # coordinator on a worker dies with that worker and must be restarted (seconds) before it
    # can move anything. Hard: a soft preference was seen to land it on a worker (the failover
    # scenario then took 7-9 s instead of 1-2 s).
    head = head_node_id()
    strategy = NodeAffinitySchedulingStrategy(head, soft=False) if head else "DEFAULT"
    coord = CoordinatorActor.options(  # type: ignore[attr-defined]
        name=COORDINATOR_NAME,
        namespace=settings.namespace,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=strategy,
    ).remote(settings)
    ray.get(coord.start.remote(), timeout=60)
    return coord


def require_leadership(coord: Any, timeout_s: float = 60.0) -> None:
    """Wait for the coordinator's first pass; ``StandingBy`` when another cluster's coordinator
    holds the lock (two clusters on one set of databases would poll every device twice)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lead: dict[str, Any] = ray.get(coord.leadership.remote(), timeout=30)
        if lead["leader"]:
            return
        if lead["leader"] is False:
            h = lead.get("holder") or {}
            raise StandingBy(
                "another scada-ingest coordinator holds this stack's master database "
                f"({h.get('application_name', 'holder unknown')}, from {h.get('client_addr') or 'this machine'}, "
                f"since {h.get('since', '?')}): this cluster stands by and polls nothing. Stop the other "
                "one (`scada-ingest down` where it runs) or give this one a stack of its own "
                "(SCADA_LOCAL_DIR and the SCADA_*_PORT settings)."
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"the coordinator made no first pass within {timeout_s:.0f} s")
        time.sleep(0.2)


def undeploy(settings: Settings) -> None:
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == settings.namespace:
            try:
                ray.kill(ray.get_actor(actor["name"], namespace=settings.namespace))
            except Exception:
                pass


def coordinator(settings: Settings) -> Any:
    return ray.get_actor(COORDINATOR_NAME, namespace=settings.namespace)


def wait_http(url: str, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")
