"""``python -m scale_tests failover``: lose a node that hosts connection actors mid-stream.

A real Ray cluster of three nodes on this machine (ray.cluster_utils.Cluster), the local
TimescaleDB and Redis, one OPC UA simulator in counting mode with one connection per well. After
the streams settle, the worker node hosting the most connections is removed without warning.
Reported: how long until every moved connection is connected again elsewhere (``recovery_s``,
from the sessions' own clocks: node removed -> the last moved session connected), and where every
published value went: stored, inside a recorded gap, or lost silently (must be 0).

It runs once per kind of server (``--servers``), each on a fresh cluster:
- ``takeover``: keeps a dead client's session 60 s and completes TransferSubscriptions;
- ``history``: a 1 s session timeout and no TransferSubscriptions, history kept (HistoryRead);
- ``neither``: no TransferSubscriptions, no history (exact gaps);
- ``stock``: asyncua's own TransferSubscriptions (answers Good, then publishes nothing).
Node death is detected by Ray's health checks, set here to ``HEALTH`` (README, "Failover").
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx

from ingest.core.config import REPO_ROOT, Settings
from ingest.core.net import free_port
from ingest.core.ray_env import ray_env_defaults
from ingest.device.opcua_values import GAP_CAUSES
from ingest.simulators.fleet import SimProcess, counting_check_with_gaps, wait_for
from ingest.simulators.node_loss import kill_node
from scale_tests.bench_devices import start_modbus_sim
from scale_tests.common import at_worker_priority, drop_earlier_tenants, log, prepare_stack

SERVERS: dict[str, list[str]] = {
    "takeover": [],
    # No TransferSubscriptions either: with recovery now under the 1 s session timeout, the
    # subscription would otherwise still be there and HistoryRead never needed.
    "history": ["--historize", "--session-timeout-ms", "1000", "--transfer", "unsupported"],
    "neither": ["--transfer", "unsupported"],
    "stock": ["--transfer", "stock"],
}
# Ray's node health checks: a node is declared dead after this many missed checks in a row.
HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 2}
_SESSION_STATS = (
    "floors_ms",
    "connect_ms",
    "takeover_attempts",
    "transferred",
    "transfers_silent",
    "republished",
    "backfilled",
    "duplicates_dropped",
    *(f"gaps_{c}" for c in GAP_CAUSES),
)


MODBUS_POLL_MS = 100


def _modbus_connection(client: httpx.Client, slug: str, endpoint: str, name: str) -> str:
    from ingest.simulators.modbus_sim import COUNTER_BASE

    tags = [
        {
            "name": f"{name}-c{k}",
            "modbus_unit": 1,
            "modbus_register": "holding",
            "modbus_address": COUNTER_BASE + 2 * k,
            "modbus_data_type": "uint32",
        }
        for k in range(5)
    ]
    body = {"name": name, "protocol": "modbus", "endpoint": endpoint, "publishing_interval_ms": MODBUS_POLL_MS}
    r = client.post(f"/v1/tenants/{slug}/connections", json={**body, "tags": tags})
    r.raise_for_status()
    return str(r.json()["id"])


def _placement(coord: Any) -> dict[str, dict[str, Any]]:
    import ray

    try:
        st = ray.get(coord.status.remote(), timeout=30)
    except Exception:  # the coordinator restarting: ask again on the next poll
        return {}
    out = {}
    for node, info in st["nodes"].items():
        for slot in info["actors"]:
            if "error" in st["actors"].get(slot, {}):
                continue  # lost or not answering: what it said last is no longer true
            for cid, c in st["actors"].get(slot, {}).get("connections", {}).items():
                out[cid] = {"node": node, "slot": slot, **c}
    return out


class _Timeline:
    """Watches, every 50 ms from a thread, when Ray declares the node dead and when the
    coordinator's assignment first moves the lost node's connections elsewhere."""

    def __init__(self, coord: Any, node_id: str, moved: list[str]) -> None:
        self._coord, self._node, self._moved = coord, node_id, set(moved)
        self._marks: dict[str, float] = {}
        self._t0 = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._before: dict[str, str] = {}

    def start(self, t0: float) -> None:
        import ray

        self._t0 = t0
        self._before = ray.get(self._coord.assignment.remote(), timeout=30)
        self._thread.start()

    def _watch(self) -> None:
        import ray

        while not self._done.is_set() and len(self._marks) < 2:
            now = time.time() - self._t0
            if "node_dead_s" not in self._marks:
                alive = {n["NodeID"]: n.get("Alive") for n in ray.nodes()}  # type: ignore[no-untyped-call]
                if not alive.get(self._node, False):
                    self._marks["node_dead_s"] = round(now, 2)
            if "reassigned_s" not in self._marks:
                try:
                    a = ray.get(self._coord.assignment.remote(), timeout=5)
                except Exception:
                    a = {}
                if self._moved and all(a.get(c) not in (None, self._before.get(c)) for c in self._moved):
                    self._marks["reassigned_s"] = round(time.time() - self._t0, 2)
            time.sleep(0.05)

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join(timeout=10)
        return dict(self._marks)


def run(
    wells: int = 6,
    tags: int = 5,
    interval_ms: int = 50,
    servers: tuple[str, ...] = tuple(SERVERS),
    settle_s: float = 5.0,
    after_s: float = 5.0,
) -> dict[str, Any]:
    """One node loss per kind of server; the take-over kind's figures are also the top level."""
    unknown = sorted(set(servers) - SERVERS.keys())
    if unknown:
        raise SystemExit(f"--servers: unknown kind {', '.join(unknown)} (known: {', '.join(SERVERS)})")
    results = {}
    for kind in servers:
        log(f"--- server kind: {kind}")
        results[kind] = run_one(kind, wells, tags, interval_ms, settle_s, after_s)
        log(f"{kind}: {results[kind]}")
    top = results.get("takeover") or next(iter(results.values()))
    return {**top, "configurations": results}


def run_one(kind: str, wells: int, tags: int, interval_ms: int, settle_s: float, after_s: float) -> dict[str, Any]:
    ray_env_defaults()
    import ray
    from ray.cluster_utils import Cluster

    from actors.common import COORDINATOR_NAME
    from actors.deploy import wait_http
    from serve_app.deploy import deploy

    settings = Settings(
        local_dir=REPO_ROOT / ".local" / "scale",
        pg_port=25452,
        redis_port=26399,
        namespace="scada-scale",
        http_port=free_port(),
        reconcile_interval_s=1.0,
    ).with_local_secrets()
    prepare_stack(settings)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "_system_config": dict(HEALTH)},
    )
    sim = None
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(
            address=cluster.address, namespace=settings.namespace, log_to_driver=False, logging_level=logging.ERROR
        )
        info = deploy(settings)
        wait_http(f"{info['api']}/healthz")
        coord = ray.get_actor(COORDINATOR_NAME, namespace=settings.namespace)
        head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n.get("Resources", {}))  # type: ignore[no-untyped-call]
        try:  # from the GCS directly (the state API needs the dashboard, which is off here)
            where = str(ray._private.state.actors(coord._actor_id.hex())["Address"]["NodeID"])
        except Exception as e:
            where = f"? ({type(e).__name__})"
        log(f"coordinator on node {where[:8]} (head {head[:8]})")
        where_writer = "?"
        admin = httpx.Client(
            base_url=info["api"], timeout=60, headers={"Authorization": f"Bearer {settings.admin_key}"}
        )
        drop_earlier_tenants(admin)
        slug = f"failover{int(time.time())}"
        created = admin.post("/v1/tenants", json={"slug": slug, "name": "failover scenario"})
        created.raise_for_status()
        key = created.json()["api_key"]
        client = httpx.Client(base_url=info["api"], timeout=60, headers={"Authorization": f"Bearer {key}"})
        with at_worker_priority():  # the simulators do not take the CPU before the actors
            sim = SimProcess(wells, tags, interval_ms, extra_args=SERVERS[kind])
            mb_proc, mb_endpoint = start_modbus_sim(5)
        conns: dict[str, dict[str, int]] = {}
        for w in range(1, wells + 1):
            body = sim.connection_body(f"well-{w}")
            body["tags"] = [x for x in body["tags"] if x["node_id"].split(";s=")[-1].startswith(f"W{w:03d}.")]
            r = client.post(f"/v1/tenants/{slug}/connections", json=body)
            r.raise_for_status()
            conns[r.json()["id"]] = {x["node_id"]: x["tag_id"] for x in r.json()["tags"]}

        # Beside them, Modbus polls (one connection per well too, five counters each, the
        # simulator started above): a moved poll loop must read within one poll period of
        # landing on its new slot.
        mconns = [_modbus_connection(client, slug, mb_endpoint, f"plc-{w}") for w in range(1, wells + 1)]
        every = set(conns) | set(mconns)

        def running() -> dict[str, dict[str, Any]] | None:
            p = _placement(coord)
            ok = every <= p.keys() and all(p[c]["state"] == "connected" for c in every)
            return p if ok else None

        before = wait_for(running, 90, "connections running")
        sim.resume()
        log(f"streaming {wells * tags} tags at {1000 // interval_ms} Hz for {settle_s:.0f} s")
        time.sleep(settle_s)
        load = {w.node_id: sum(1 for c in conns if before[c]["node"] == w.node_id) for w in workers}
        try:
            w_actor = ray.get_actor(f"writer-{slug}", namespace=settings.namespace)
            where_writer = str(ray._private.state.actors(w_actor._actor_id.hex())["Address"]["NodeID"])
        except Exception as e:
            where_writer = f"? ({type(e).__name__})"
        log(f"writer on node {where_writer[:8]}")
        victim = max(workers, key=lambda w: load[w.node_id])
        moved = [c for c in conns if before[c]["node"] == victim.node_id]
        moved_mb = [c for c in mconns if before[c]["node"] == victim.node_id]
        log(f"removing node {victim.node_id[:8]} hosting {len(moved)} connections")
        marks = _Timeline(coord, victim.node_id, moved)
        t0 = time.time()
        kill_node(cluster, victim)
        marks.start(t0)

        def moved_away() -> dict[str, dict[str, Any]] | None:
            p = running()
            gone = ("?", victim.node_id)  # "?": a slot retired while its status was read
            if (
                p
                and all(p[c]["node"] not in gone for c in every)
                and all(p[c]["slot"] != before[c]["slot"] for c in moved + moved_mb)
            ):
                return p
            return None

        after = wait_for(moved_away, 120, "failover")
        # The sessions' own clocks: when each moved connection started on its new slot (the
        # coordinator's decision landed) and when it was first connected there.
        started_s = max(after[c]["started_at"] for c in moved) - t0 if moved else 0.0
        recovery_s = max(after[c]["connected_at"] or time.time() for c in moved) - t0 if moved else 0.0
        timeline = marks.stop()
        for c in moved:
            since = after[c]["started_at"] - t0
            log(f"  {c[:8]}: {before[c]['slot']} -> {after[c]['slot']}, started {since:.2f} s")
        log(f"timeline (s after the node was removed): {timeline}; all connected after {recovery_s:.2f} s")
        # Modbus: from landing on the new slot to the first value read there.
        wait_for(
            lambda: all((_placement(coord).get(c) or {}).get("first_value_at") for c in moved_mb), 30, "polls"
        )
        landed = _placement(coord)
        modbus_first_s = max(
            (landed[c]["first_value_at"] - landed[c]["started_at"] for c in moved_mb), default=None
        )
        # ... of which the session itself (from its run() to the first values read):
        modbus_session_ms = max((float(landed[c].get("first_value_ms") or 0) for c in moved_mb), default=None)
        modbus_poll_ms = max((float(landed[c].get("first_poll_ms") or 0) for c in moved_mb), default=None)
        time.sleep(after_s)
        summary = sim.stop()
        mb_proc.kill()
        dsn = settings.dsn(f"scada_t_{slug}")
        tag_ids = {n: t for m in conns.values() for n, t in m.items()}
        try:
            wait_for(
                lambda: counting_check_with_gaps(dsn, tag_ids, summary["per_node"])["unaccounted"] == 0,
                60,
                "drain",
            )
        except AssertionError:
            pass  # reported below as silent loss
        result = counting_check_with_gaps(dsn, tag_ids, summary["per_node"])
        final = _placement(coord)
        sessions = {k: sum(int(final.get(c, {}).get(k, 0) or 0) for c in moved) for k in _SESSION_STATS}
        for k in ("floors_ms", "connect_ms"):  # the slowest moved session's, not a sum
            sessions[k] = max((int(final.get(c, {}).get(k, 0) or 0) for c in moved), default=0)
        return {
            "scenario": "failover",
            "server": kind,
            "health_checks": HEALTH,
            "nodes": 3,
            "connections": len(conns),
            "moved_connections": len(moved),
            "tags": len(tag_ids),
            "node_dead_s": timeline.get("node_dead_s"),
            "reassigned_s": timeline.get("reassigned_s"),
            "started_s": round(started_s, 2),
            "recovery_s": round(recovery_s, 2),
            "published": result["published"],
            "stored": result["stored"],
            "gaps_recorded": result["gap_values"],
            "gap_markers": result["gap_markers"],
            "gaps_by_cause": {c: sessions.pop(f"gaps_{c}") for c in GAP_CAUSES},
            "sessions": sessions,
            "duplicates": result["duplicates"],
            "silent_loss": result["published"] - result["stored"] - result["gap_values"],
            "modbus": {
                "connections": len(mconns),
                "moved": len(moved_mb),
                "poll_ms": MODBUS_POLL_MS,
                "first_value_after_landing_s": None if modbus_first_s is None else round(modbus_first_s, 3),
                "first_poll_after_session_start_ms": modbus_poll_ms,
                "first_value_after_session_start_ms": modbus_session_ms,
            },
        }
    finally:
        if sim is not None:
            sim.kill()
        try:
            ray.shutdown()
        finally:
            cluster.shutdown()  # type: ignore[no-untyped-call]
