"""``scada-ingest bench opcua`` and ``bench modbus``: the whole pipeline against a bare client.

Both phases read the same simulator load in the same run:
  bare      a plain asyncua subscription (one Python callback per value) or a plain pymodbus
            polling loop, counting what arrives and storing nothing
  pipeline  the simulator registered through the API: connection actor -> writer actor ->
            TimescaleDB; counted as rows stored
OPC UA runs the simulators in counting mode, so the pipeline phase also proves where every
published value went: ``lost`` = published - stored - values inside recorded gaps.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from typing import Any

import httpx

from ingest.core.config import REPO_ROOT, Settings
from ingest.simulators.fleet import SimProcess, counting_check_with_gaps, db_fetch, wait_for
from scale_tests.common import log, prepare_stack, ratio, start_private_ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bench_settings() -> Settings:
    return Settings(
        local_dir=REPO_ROOT / ".local", namespace="scada-bench", http_port=_free_port(), reconcile_interval_s=1.0
    ).with_local_secrets()


def _deploy(settings: Settings) -> tuple[httpx.Client, str]:
    from actors.deploy import wait_http
    from serve_app.deploy import deploy

    prepare_stack(settings)
    start_private_ray()
    info = deploy(settings)
    wait_http(f"{info['api']}/healthz")
    admin = httpx.Client(
        base_url=info["api"], timeout=120, headers={"Authorization": f"Bearer {settings.admin_key}"}
    )
    # Earlier runs' tenants point at simulators that are gone: suspend them, so their sessions
    # do not poll dead endpoints beside this run.
    for t in admin.get("/v1/tenants").json():
        if t["slug"].startswith("bench1") and t["status"] == "ACTIVE":
            admin.put(f"/v1/tenants/{t['slug']}/status", json={"status": "SUSPENDED"})
    slug = f"bench{int(time.time())}"
    r = admin.post("/v1/tenants", json={"slug": slug, "name": "device benchmark"})
    r.raise_for_status()
    client = httpx.Client(
        base_url=info["api"], timeout=120, headers={"Authorization": f"Bearer {r.json()['api_key']}"}
    )
    return client, slug


# -- OPC UA ---------------------------------------------------------------------------------------
async def _bare_opcua(endpoints: list[tuple[str, list[str]]], seconds: float, start: Any) -> int:
    from asyncua import Client, ua

    received = 0

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            nonlocal received
            received += 1

    clients = []
    for endpoint, nodes in endpoints:
        c = Client(endpoint)
        await c.connect()
        sub = await c.create_subscription(50, Handler())
        params = []
        for n in nodes:
            p = ua.MonitoringParameters()
            p.ClientHandle = len(params) + 1
            p.QueueSize = 1000
            p.SamplingInterval = 0
            req = ua.MonitoredItemCreateRequest()
            req.ItemToMonitor.NodeId = ua.NodeId.from_string(n)
            req.ItemToMonitor.AttributeId = ua.AttributeIds.Value
            req.MonitoringMode = ua.MonitoringMode.Reporting
            req.RequestedParameters = p
            params.append(req)
        for i in range(0, len(params), 500):
            await sub.create_monitored_items(params[i : i + 500])
        clients.append(c)
    await asyncio.sleep(1.0)  # initial values
    start()
    await asyncio.sleep(0.5)
    r0, t0 = received, time.perf_counter()
    await asyncio.sleep(seconds)
    got = received - r0
    rate = got / (time.perf_counter() - t0)
    for c in clients:
        await c.disconnect()
    return int(rate)


def run_opcua(
    sims: int = 2, wells: int = 10, tags: int = 25, interval_ms: int = 50, seconds: float = 20.0
) -> dict[str, Any]:
    settings = _bench_settings()
    client, slug = _deploy(settings)
    offered = sims * wells * tags * 1000 / interval_ms
    log(f"{sims} simulators x {wells * tags} tags every {interval_ms} ms (offered {offered:,.0f} values/s)")
    # Phase 1: bare client.
    fleet = [SimProcess(wells, tags, interval_ms) for _ in range(sims)]
    try:
        bare_rate = asyncio.run(
            _bare_opcua([(s.endpoint, s.node_ids) for s in fleet], seconds, lambda: [s.resume() for s in fleet])
        )
        bare_published = sum(s.stop()["published"] for s in fleet)
    finally:
        for s in fleet:
            s.kill()
    log(f"bare asyncua client: {bare_rate:,.0f} values/s")
    # Phase 2: the pipeline, same load.
    fleet = [SimProcess(wells, tags, interval_ms) for _ in range(sims)]
    try:
        tag_ids: dict[str, int] = {}
        per_node: dict[str, int] = {}
        for i, s in enumerate(fleet):
            body = s.connection_body(f"sim-{i}", publishing_interval_ms=50)
            body["tags"] = [{**t, "name": f"s{i}.{t['name']}", "zscore_threshold": None} for t in body["tags"]]
            r = client.post(f"/v1/tenants/{slug}/connections", json=body)
            r.raise_for_status()
            tag_ids.update({f"{i}|{t['node_id']}": t["tag_id"] for t in r.json()["tags"]})
        dsn = settings.dsn(f"scada_t_{slug}")
        count = "SELECT count(*) AS n FROM scada_readings"
        wait_for(
            lambda: (
                db_fetch(dsn, "SELECT count(DISTINCT tag_id) AS n FROM scada_readings")[0]["n"] == len(tag_ids)
            ),
            120,
            "pipeline subscribed",
        )
        for s in fleet:
            s.resume()
        time.sleep(1.5)
        n0, t0 = db_fetch(dsn, count)[0]["n"], time.perf_counter()
        time.sleep(seconds)
        n1, t1 = db_fetch(dsn, count)[0]["n"], time.perf_counter()
        pipe_rate = (n1 - n0) / (t1 - t0)
        for i, s in enumerate(fleet):
            per_node.update({f"{i}|{k}": v for k, v in s.stop()["per_node"].items()})
        wait_for(
            lambda: counting_check_with_gaps(dsn, tag_ids, per_node)["unaccounted"] == 0, 120, "pipeline drained"
        )
        result = counting_check_with_gaps(dsn, tag_ids, per_node)
    finally:
        for s in fleet:
            s.kill()
    log(f"pipeline: {pipe_rate:,.0f} values/s stored")
    return {
        "bench": "opcua",
        "simulators": sims,
        "tags": sims * wells * tags,
        "interval_ms": interval_ms,
        "offered_values_per_s": offered,
        "seconds": seconds,
        "values_per_s": {"pipeline": round(pipe_rate), "bare_client": bare_rate},
        "ratio_vs_bare": ratio(pipe_rate, bare_rate),
        "bare_published": bare_published,
        "published": result["published"],
        "stored": result["stored"],
        "gaps_recorded": result["gap_values"],
        "duplicates": result["duplicates"],
        "lost": result["published"] - result["stored"] - result["gap_values"],
    }


# -- Modbus ---------------------------------------------------------------------------------------
async def _bare_modbus(endpoint: str, counters: int, interval_ms: int, seconds: float) -> int:
    from pymodbus.client import AsyncModbusTcpClient

    from ingest.simulators.modbus_sim import COUNTER_BASE

    host, port = endpoint.removeprefix("tcp://").split(":")
    c = AsyncModbusTcpClient(host, port=int(port), timeout=1, retries=0, reconnect_delay=0)
    await c.connect()
    values = 0
    t0 = time.perf_counter()
    next_t = t0
    while time.perf_counter() - t0 < seconds:
        for start in range(0, 2 * counters, 124):
            n = min(124, 2 * counters - start)
            rr = await c.read_holding_registers(COUNTER_BASE + start, count=n, device_id=1)
            values += len(rr.registers) // 2
        next_t += interval_ms / 1000
        await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
    c.close()
    return int(values / (time.perf_counter() - t0))


def _values_read(connection_id: str) -> int:
    """Values the connection actors received from this connection's device so far."""
    import ray

    from actors.common import COORDINATOR_NAME

    st = ray.get(ray.get_actor(COORDINATOR_NAME, namespace="scada-bench").status.remote())
    return sum(int(a.get("delivered", {}).get(connection_id, 0)) for a in st["actors"].values())


def _stopped(connection_id: str) -> bool:
    import ray

    from actors.common import COORDINATOR_NAME

    st = ray.get(ray.get_actor(COORDINATOR_NAME, namespace="scada-bench").status.remote())
    return not any(connection_id in a.get("connections", {}) for a in st["actors"].values())


def run_modbus(
    counters: int = 2000,
    interval_ms: int = 50,
    seconds: float = 20.0,
) -> dict[str, Any]:
    from ingest.simulators.modbus_sim import COUNTER_BASE

    settings = _bench_settings()
    client, slug = _deploy(settings)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest.simulators.modbus_sim",
            "--port",
            "0",
            "--counters",
            str(counters),
            "--interval-ms",
            "10",
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().split()[1]
        offered = counters * 1000 / interval_ms
        log(f"{counters} uint32 registers polled every {interval_ms} ms (offered {offered:,.0f} values/s)")
        bare = asyncio.run(_bare_modbus(endpoint, counters, interval_ms, seconds))
        log(f"bare pymodbus loop: {bare:,.0f} values/s")
        tags = [
            {
                "name": f"c{k}",
                "modbus_unit": 1,
                "modbus_register": "holding",
                "modbus_address": COUNTER_BASE + 2 * k,
                "modbus_data_type": "uint32",
                "zscore_threshold": None,
            }
            for k in range(counters)
        ]
        r = client.post(
            f"/v1/tenants/{slug}/connections",
            json={
                "name": "plc",
                "protocol": "modbus",
                "endpoint": endpoint,
                "publishing_interval_ms": interval_ms,
                "tags": tags,
            },
        )
        r.raise_for_status()
        dsn = settings.dsn(f"scada_t_{slug}")
        q = "SELECT count(*) AS n, count(*) FILTER (WHERE quality <> 0) AS bad FROM scada_readings"
        wait_for(lambda: db_fetch(dsn, q)[0]["n"] > 0, 120, "pipeline polling")
        time.sleep(2)
        r0, t0 = db_fetch(dsn, q)[0], time.perf_counter()
        time.sleep(seconds)
        r1, t1 = db_fetch(dsn, q)[0], time.perf_counter()
        pipe = (r1["n"] - r0["n"]) / (t1 - t0)
        log(f"pipeline: {pipe:,.0f} values/s stored")
        # Stop polling, let the pipeline drain, then account for every value read.
        cid = r.json()["id"]
        client.patch(f"/v1/tenants/{slug}/connections/{cid}", json={"enabled": False}).raise_for_status()
        wait_for(lambda: _stopped(cid), 60, "polling stopped")
        read = _values_read(cid)
        try:
            wait_for(lambda: db_fetch(dsn, q)[0]["n"] >= read, 30, "pipeline drained")
        except AssertionError:
            pass  # reported as lost below
        stored = int(db_fetch(dsn, q)[0]["n"])
        return {
            "published": read,
            "stored": stored,
            "lost": read - stored,
            "bench": "modbus",
            "registers": 2 * counters,
            "points": counters,
            "interval_ms": interval_ms,
            "offered_values_per_s": offered,
            "seconds": seconds,
            "values_per_s": {"pipeline": round(pipe), "bare_client": bare},
            "ratio_vs_bare": ratio(pipe, bare),
            "bad_quality_rows": int(r1["bad"]),
        }
    finally:
        proc.terminate()
        proc.wait(30)
