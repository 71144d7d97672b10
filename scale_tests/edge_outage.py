"""``python -m scale_tests edge_outage``: a site loses its link to the cluster for a minute or more.

OPC UA simulators (counting mode) -> ``scada-ingest edge`` (a real subprocess, its own SQLite
buffer) -> a cuttable TCP link -> the cluster's push API (Ray Serve, writer actor, TimescaleDB).
After the streams settle the link is cut for ``outage_s``, then restored. Reported: where every
published value went (stored, inside a recorded gap, or lost silently: must be 0), duplicates
(must be 0), how long the backlog took to drain, and the drain rate over the offered rate.

Drain: from the restore until the agent's buffer is back to what it holds in steady state; its
rate is the readings the cluster accepted in that window over its length.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from ingest.core.config import REPO_ROOT, Settings
from ingest.core.net import free_port
from ingest.core.ray_env import ray_env_defaults
from ingest.simulators.edge_site import EdgeProcess, Link, edge_config, node_tag_ids
from ingest.simulators.fleet import SimProcess, counting_check_with_gaps, wait_for
from scale_tests.common import drop_earlier_tenants, log, prepare_stack


def run(
    wells: int = 2, tags: int = 10, interval_ms: int = 100, outage_s: float = 65.0, settle_s: float = 5.0
) -> dict[str, Any]:
    ray_env_defaults()
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from actors.deploy import wait_http
    from serve_app.deploy import deploy

    settings = Settings(
        local_dir=REPO_ROOT / ".local" / "scale-edge",
        pg_port=int(os.environ.get("SCADA_SCALE_PG_PORT", "25453")),
        redis_port=int(os.environ.get("SCADA_SCALE_REDIS_PORT", "26400")),
        namespace="scada-edge-scale",
        http_port=free_port(),
        reconcile_interval_s=1.0,
    ).with_local_secrets()
    prepare_stack(settings)
    # A head of its own on free ports (not Ray's default port, which another checkout may hold).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    ray.init(
        address=cluster.address, namespace=settings.namespace, log_to_driver=False, logging_level=logging.WARNING
    )
    tmp = tempfile.TemporaryDirectory(prefix="edge-outage-")
    sim = link = agent = None
    try:
        info = deploy(settings)
        wait_http(f"{info['api']}/healthz")
        admin = httpx.Client(
            base_url=info["api"], timeout=60, headers={"Authorization": f"Bearer {settings.admin_key}"}
        )
        drop_earlier_tenants(admin)
        slug = f"edge{int(time.time())}"
        created = admin.post("/v1/tenants", json={"slug": slug, "name": "edge outage scenario"})
        created.raise_for_status()
        # A backlog drains back to back: the default 100 requests a minute would pace it.
        admin.patch(
            f"/v1/tenants/{slug}/push/settings", json={"requests_per_minute": 1_000_000}
        ).raise_for_status()
        sim = SimProcess(wells, tags, interval_ms)
        u = urlparse(info["api"])
        link = Link(u.hostname or "127.0.0.1", u.port or 80)
        port = free_port()
        conf = edge_config(
            Path(tmp.name) / "edge.yaml",
            api_url=link.url,
            tenant=slug,
            api_key=created.json()["api_key"],
            sims=[sim],
            metrics_port=port,
        )
        agent = EdgeProcess(conf, port, Path(tmp.name) / "edge.log").start()
        agent.wait_connected()
        sim.resume()
        offered = wells * tags * 1000.0 / interval_ms
        log(
            f"streaming {wells * tags} tags at {1000 / interval_ms:.0f} Hz "
            f"({offered:.0f} values/s) for {settle_s:.0f} s"
        )
        wait_for(lambda: agent.metric("scada_edge_readings_pushed_total") > 0, 60, "pushing")
        time.sleep(settle_s)
        steady_rows = max(agent.metric("scada_edge_buffer_rows"), offered * 2)
        peak_bytes = peak_file = 0.0
        log(f"cutting the link for {outage_s:.0f} s")
        link.cut()
        t_cut = time.monotonic()
        while time.monotonic() - t_cut < outage_s:
            peak_bytes = max(peak_bytes, agent.metric("scada_edge_buffer_bytes"))
            peak_file = max(peak_file, agent.metric("scada_edge_buffer_file_bytes"))
            time.sleep(0.5)
        backlog = agent.metric("scada_edge_buffer_rows")
        pushed_0 = agent.metric("scada_edge_readings_pushed_total")
        link.restore()
        t_restore = time.monotonic()
        outage = t_restore - t_cut
        log(f"link restored after {outage:.1f} s with {backlog:.0f} readings buffered")
        wait_for(lambda: agent.metric("scada_edge_buffer_rows") <= steady_rows, 600, "drain", every_s=0.1)
        drain_s = time.monotonic() - t_restore
        drained = agent.metric("scada_edge_readings_pushed_total") - pushed_0
        drain_rate = drained / drain_s if drain_s > 0 else 0.0
        log(f"drained in {drain_s:.1f} s: {drain_rate:.0f} readings/s")
        time.sleep(2)
        sim.pause()
        time.sleep(1)
        summary = sim.stop()
        dsn = settings.dsn(f"scada_t_{slug}")
        tag_ids = node_tag_ids([sim], dsn)
        try:
            wait_for(
                lambda: counting_check_with_gaps(dsn, tag_ids, summary["per_node"])["unaccounted"] == 0,
                120,
                "every value accounted for",
            )
        except AssertionError:
            pass  # reported below as lost
        result = counting_check_with_gaps(dsn, tag_ids, summary["per_node"])
        return {
            "scenario": "edge_outage",
            "tags": len(tag_ids),
            "offered_per_s": round(offered, 1),
            "published": result["published"],
            "stored": result["stored"],
            "gaps_recorded": result["gap_values"],
            "lost": result["unaccounted"],
            "duplicates": result["duplicates"],
            "outage_s": round(outage, 1),
            "backlog_rows": int(backlog),
            "drain_s": round(drain_s, 2),
            "drain_per_s": round(drain_rate, 1),
            "drain_ratio": round(drain_rate / offered, 2),
            "buffer_peak_bytes": int(peak_bytes),
            "buffer_peak_file_bytes": int(peak_file),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        if agent is not None:
            agent.stop()
        if sim is not None:
            sim.kill()
        if link is not None:
            link.close()
        tmp.cleanup()
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
            cluster.shutdown()  # type: ignore[no-untyped-call]
