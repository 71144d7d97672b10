"""``python -m scale_tests capacity``: offered load stepped up per stage until it breaks, and the
cluster size that follows from what each stage costs per core.

Stages (each against the real Serve app, connection actors, writer and TimescaleDB):
  opcua   OPC UA simulators in counting mode, subscribed by the connection actors
  modbus  one Modbus simulator of uint32 counters, polled by the connection actors
  push    concurrent HTTP clients posting 1,000-point batches (closed loop: the step is the
          number of clients; its latency is the acknowledgement time)
Each step runs ``seconds`` and records offered and stored values/s, source-to-commit latency
p50/p99 (from the writer's histogram), and CPU seconds of the connection actors, the writer and
the database server in the window (/proc). A stage stops at the first step that loses values (or
lets them go as recorded gaps) or whose p99 passes 1 s; its knee is the highest stored rate of a
step that did neither.

Values/s per core = values stored / CPU seconds of the role's processes, so a role's capacity is
what one core does when the role is the only thing on it; ``nodes_for_500k`` divides 500,000
values/s (seed 000's target) by that times this machine's cores, per role.

The whole run happens on a three-node ``ray.cluster_utils.Cluster`` (all nodes on this machine),
and the summary shows the node of every connection actor and writer.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from scale_tests.bench_devices import (
    NAMESPACE,
    _bench_settings,
    deploy_bench,
    opcua_shape,
    pipeline_modbus,
    pipeline_opcua,
    start_modbus_sim,
)
from scale_tests.common import at_worker_priority, log, prepare_stack, start_cluster
from scale_tests.probe import placement

TARGET = 500_000
P99_LIMIT_MS = 1000.0
# OPC UA stops early on two cores: the asyncua simulators themselves saturate near 7,000 values/s
# in all (README, "Device paths"), and far above that they fall over rather than plateau.
FULL = {
    "opcua": [2_500, 5_000, 10_000, 20_000],
    "modbus": [10_000, 40_000, 100_000, 200_000],
    "push": [1, 2, 4, 8],
}
QUICK = {"opcua": [1_000, 2_000], "modbus": [2_000, 4_000], "push": [1, 2]}
RESULTS = Path(__file__).resolve().parent / "out"


def database_pids(settings: Any) -> list[int]:
    """The local PostgreSQL server and its backends (children of the postmaster)."""
    pid_file = Path(settings.local_dir) / "pg" / "data" / "postmaster.pid"
    try:
        master = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == master:
                kids.append(int(d.name))
    return [master, *kids]


def _stopped(step: dict[str, Any]) -> bool:
    """Past the knee: values lost, values let go as recorded gaps (accounted, yet not stored), or
    a p99 over the limit."""
    p99 = step.get("latency_p99_ms")
    dropped = step.get("lost", 0) + step.get("gaps_recorded", 0)
    return dropped > 0 or (p99 is not None and p99 > P99_LIMIT_MS)


def _push_step(settings: Any, api: str, clients: int, seconds: float, wells: int = 250) -> dict[str, Any]:
    """One push step: a fresh tenant, a short warm-up, then ``clients`` clients for ``seconds``."""
    import numpy as np

    from scale_tests.bench_push import push_tenant
    from scale_tests.probe import PipelineProbe
    from scale_tests.push_load import PushTarget, request_times, run_phase

    # The earlier steps' push tenants go; the run's own tenant (the device stages') stays.
    admin, key, slug, _ = push_tenant(settings, api, wells, drop=("bpush",))
    admin.close()
    to = PushTarget(api, key, slug, wells, request_times())
    run_phase(to, 1, 2.0, False)  # warm-up: writer, tag map, pools
    probe = PipelineProbe(NAMESPACE, [slug], database_pids(settings)).start()
    stats, took = run_phase(to, clients, seconds, False)
    cost = probe.stop()
    lat = np.asarray(stats.latencies_ms) if stats.latencies_ms else np.zeros(1)
    return {
        "offered": clients,
        "values_per_s": round(stats.acked_points / took),
        "values": stats.acked_points,
        # The points carry times an hour old, so the writer's source-to-commit histogram says
        # nothing here; the acknowledgement time is what a pushing site waits for.
        "latency_p50_ms": round(float(np.percentile(lat, 50)), 1),
        "latency_p99_ms": round(float(np.percentile(lat, 99)), 1),
        # The Serve replicas' CPU is not read (their pids are not in the coordinator's status).
        "cpu_s": {k: v for k, v in cost["cpu_s"].items() if k != "connection_actors"},
        "lost": 0,
    }


def _stage(name: str, steps: list[int], seconds: float, settings: Any, client: Any, slug: str, api: str) -> Any:
    out = []
    for offered in steps:
        if name == "opcua":
            shape = opcua_shape(offered)
            step = pipeline_opcua(client, settings, slug, shape, seconds, database_pids(settings))
            step["offered"] = shape[0] * shape[1] * shape[2] * 1000 / shape[3]
        elif name == "modbus":
            counters = max(1, round(offered * 25 / 1000))
            proc, endpoint = start_modbus_sim(counters)
            try:
                step = pipeline_modbus(
                    client, settings, slug, endpoint, counters, 25, seconds, database_pids(settings)
                )
            finally:
                proc.terminate()
                proc.wait(30)
            step["offered"] = counters * 1000 / 25
        else:
            step = _push_step(settings, api, offered, seconds)
        log(
            f"{name}: offered {step['offered']:,.0f} -> {step['values_per_s']:,.0f} values/s, "
            f"p99 {step['latency_p99_ms']} ms, lost {step.get('lost', 0)}, "
            f"gaps {step.get('gaps_recorded', 0)}, cpu {step['cpu_s']}"
        )
        out.append(step)
        if _stopped(step):
            break
    return out


def _per_core(steps: list[dict[str, Any]]) -> dict[str, float]:
    """Values per CPU-second of each role, over the steps before the knee (the busiest ones
    weigh most, as they carry most values)."""
    good = [s for s in steps if not _stopped(s)] or steps[:1]
    values = sum(s["values"] for s in good)
    roles: dict[str, float] = {}
    for role in ("connection_actors", "writers", "database"):
        cpu = sum(s["cpu_s"].get(role, 0.0) for s in good)
        if cpu > 0:
            roles[role] = round(values / cpu)
    return roles


def run(quick: bool = False, seconds: float | None = None, nodes: int = 3) -> dict[str, Any]:
    import ray

    from scale_tests.capacity_plots import plot_all

    seconds = seconds or (3.0 if quick else 10.0)
    settings = _bench_settings()
    prepare_stack(settings)
    cluster = start_cluster(nodes)
    try:
        client, slug = deploy_bench(settings)
        api = str(client.base_url).rstrip("/")
        steps = QUICK if quick else FULL
        with at_worker_priority():  # simulators and push clients beside the actors, not before them
            stages = {name: _stage(name, steps[name], seconds, settings, client, slug, api) for name in steps}
        where = placement(NAMESPACE)
    finally:
        from ray import serve

        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        cluster.shutdown()
    folder = RESULTS / f"capacity-{time.strftime('%Y%m%dT%H%M%S')}"
    plots = plot_all(stages, folder)
    knee = {
        name: max((s["values_per_s"] for s in st if not _stopped(s)), default=0) for name, st in stages.items()
    }
    per_core = {name: _per_core(st) for name, st in stages.items()}
    cores = os.cpu_count() or 1
    nodes_for = {}
    for name, roles in per_core.items():
        nodes_for[name] = {role: math.ceil(TARGET / (v * cores)) for role, v in roles.items() if v > 0}
    node_ids = sorted({a["node_id"] for a in where["connection_actors"].values() if a.get("node_id")})
    for line in [f"{n}: {r} values/s per core" for n, r in per_core.items()]:
        log(line)
    return {
        "scenario": "capacity",
        "quick": quick,
        "seconds_per_step": seconds,
        "cores_per_node": cores,
        "p99_limit_ms": P99_LIMIT_MS,
        "stages": stages,
        "knee_values_per_s": knee,
        "values_per_s_per_core": per_core,
        "nodes_for_500k": nodes_for,
        "cluster": {
            "nodes": nodes,
            "nodes_with_connection_actors": len(node_ids),
            "placement": where,
        },
        "plots": [str(p) for p in plots],
        "results_dir": str(folder),
    }
