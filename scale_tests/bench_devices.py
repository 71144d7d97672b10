"""``scada-ingest bench opcua`` and ``bench modbus``: the whole pipeline against a bare client.

Both phases read the same simulator load in the same run:
  bare      a plain asyncua subscription (one Python callback per value) or a plain pymodbus
            polling loop, counting what arrives and storing nothing
  pipeline  the simulator registered through the API: connection actor -> writer actor ->
            TimescaleDB; counted as rows stored
OPC UA runs the simulators in counting mode, so the pipeline phase also proves where every
published value went: ``lost`` = published - stored - values inside recorded gaps.

Cost: CPU seconds per million values, read from /proc for the processes doing the work in the
measuring window: the bare client's own thread (it runs alone on this driver's event loop), the
connection actors' Ray workers, the tenant's writer. ``cpu_ratio_vs_bare`` is the device side
(connection actors) against the bare client, as DESIGN.md defines it; the writer is shown beside
it and in ``cpu_ratio_pipeline_vs_bare``. Latency is source timestamp to commit, every row, from
the writer's histogram.

Default offered loads: OPC UA 12,000 values/s, above what the source delivers on a 2-core machine
(the asyncua simulators saturate near 7,000-8,000 in all; at 40,000 they fell over to under
1,000), so both sides run at the simulators' limit. Modbus 40,000 (1,000 uint32 counters every
25 ms): a load both sides keep, so the cost per value compares like with like. Past the
pipeline's knee (``python -m scale_tests capacity`` finds it; about 40,000-55,000 here, where the
writer and the database share the two cores with the device side) polls run over their ticks and
every missed tick is recorded as a Bad row per point (ingest.device.modbus), so the device side
does more per Good value by design while the bare loop just polls back to back: ``--offered
200000`` shows that regime (2026-11-26: bare 117,111 values/s, pipeline 40,913, ratio 2.06).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import httpx

from ingest.core.config import Settings
from ingest.core.models import GAP_QUALITY as GAP
from ingest.core.net import free_port
from ingest.simulators.fleet import SimProcess, counting_check_with_gaps, db_fetch, wait_for
from scale_tests.common import at_worker_priority, drop_earlier_tenants, log, prepare_stack, start_private_ray
from scale_tests.cpu import per_million
from scale_tests.probe import PipelineProbe, cost_summary

NAMESPACE = "scada-bench"


def _bench_settings() -> Settings:
    # local_dir and the ports come from the environment (SCADA_LOCAL_DIR, SCADA_PG_PORT, ...), so
    # a bench can run beside another stack on the same machine.
    return Settings(namespace=NAMESPACE, http_port=free_port(), reconcile_interval_s=1.0).with_local_secrets()


def deploy_bench(settings: Settings) -> tuple[httpx.Client, str]:
    from actors.deploy import wait_http
    from serve_app.deploy import deploy

    prepare_stack(settings)
    start_private_ray()
    info = deploy(settings)
    wait_http(f"{info['api']}/healthz")
    admin = httpx.Client(
        base_url=info["api"], timeout=120, headers={"Authorization": f"Bearer {settings.admin_key}"}
    )
    drop_earlier_tenants(admin)
    slug = f"bench{int(time.time())}"
    r = admin.post("/v1/tenants", json={"slug": slug, "name": "device benchmark"})
    r.raise_for_status()
    client = httpx.Client(
        base_url=info["api"], timeout=120, headers={"Authorization": f"Bearer {r.json()['api_key']}"}
    )
    return client, slug


# -- OPC UA ---------------------------------------------------------------------------------------
async def _bare_opcua(endpoints: list[tuple[str, list[str]]], seconds: float, start: Any) -> tuple[int, float]:
    """Values per second received, and CPU seconds per million values (this thread only)."""
    from asyncua import ua
    from asyncua.client.client import Client
    from asyncua.ua.attribute_ids import AttributeIds

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
        params: list[ua.MonitoredItemCreateRequest] = []
        for n in nodes:
            p = ua.MonitoringParameters()
            p.ClientHandle = len(params) + 1
            p.QueueSize = 1000
            p.SamplingInterval = 0
            req = ua.MonitoredItemCreateRequest()
            req.ItemToMonitor.NodeId = ua.NodeId.from_string(n)
            req.ItemToMonitor.AttributeId = AttributeIds.Value
            req.MonitoringMode = ua.MonitoringMode.Reporting
            req.RequestedParameters = p
            params.append(req)
        for i in range(0, len(params), 500):
            await sub.create_monitored_items(params[i : i + 500])
        clients.append(c)
    await asyncio.sleep(1.0)  # initial values
    start()
    await asyncio.sleep(0.5)
    r0, t0, c0 = received, time.perf_counter(), time.thread_time()
    await asyncio.sleep(seconds)
    got = received - r0
    rate = got / (time.perf_counter() - t0)
    cpu = time.thread_time() - c0
    for c in clients:
        await c.disconnect()
    return int(rate), per_million(cpu, got)


Shape = tuple[int, int, int, int]  # simulators, wells per simulator, tags per well, interval (ms)


def opcua_shape(offered: float, sims: int = 2, wells: int = 10, interval_ms: int = 50) -> Shape:
    """Simulators, wells, tags per well and interval that publish about ``offered`` values/s."""
    tags = max(1, round(offered * interval_ms / 1000 / (sims * wells)))
    return sims, wells, tags, interval_ms


def pipeline_opcua(
    client: httpx.Client,
    settings: Settings,
    slug: str,
    shape: Shape,
    seconds: float,
    db_pids: list[int] | None = None,
) -> dict[str, Any]:
    """The pipeline phase: simulators registered through the API, counted as rows stored."""
    sims, wells, tags, interval_ms = shape
    fleet = [SimProcess(wells, tags, interval_ms) for _ in range(sims)]
    cids: list[str] = []
    try:
        tag_ids: dict[str, int] = {}
        per_node: dict[str, int] = {}
        for i, s in enumerate(fleet):
            body = s.connection_body(f"sim-{i}-{int(time.time())}", publishing_interval_ms=50)
            body["tags"] = [{**t, "name": f"s{i}.{t['name']}", "zscore_threshold": None} for t in body["tags"]]
            r = client.post(f"/v1/tenants/{slug}/connections", json=body)
            r.raise_for_status()
            cids.append(r.json()["id"])
            tag_ids.update({f"{i}|{t['node_id']}": t["tag_id"] for t in r.json()["tags"]})
        dsn = settings.dsn(f"scada_t_{slug}")
        count = "SELECT count(*) AS n FROM scada_readings"
        ids = list(tag_ids.values())
        wait_for(
            lambda: (
                db_fetch(
                    dsn, "SELECT count(DISTINCT tag_id) AS n FROM scada_readings WHERE tag_id = ANY($1)", ids
                )[0]["n"]
                == len(ids)
            ),
            120,
            "pipeline subscribed",
        )
        for s in fleet:
            s.resume()
        time.sleep(1.5)
        probe = PipelineProbe(NAMESPACE, [slug], db_pids)
        n0, t0 = db_fetch(dsn, count)[0]["n"], time.perf_counter()
        read0 = sum(_values_read(c) for c in cids)
        probe.start()
        time.sleep(seconds)
        n1, t1 = db_fetch(dsn, count)[0]["n"], time.perf_counter()
        cost = probe.stop()
        read = sum(_values_read(c) for c in cids) - read0
        pipe_rate = (n1 - n0) / (t1 - t0)
        for i, s in enumerate(fleet):
            per_node.update({f"{i}|{k}": v for k, v in s.stop()["per_node"].items()})
        try:
            wait_for(
                lambda: counting_check_with_gaps(dsn, tag_ids, per_node)["unaccounted"] == 0,
                60,
                "pipeline drained",
            )
        except AssertionError:
            pass  # an overloaded source or pipeline loses values: reported below as lost
        result = counting_check_with_gaps(dsn, tag_ids, per_node)
    finally:
        for s in fleet:
            s.kill()
        for cid in cids:  # the next step's simulators get the connection actors to themselves
            client.patch(f"/v1/tenants/{slug}/connections/{cid}", json={"enabled": False})
    values = n1 - n0
    return {
        "values_per_s": round(pipe_rate),
        "values": values,
        "values_read": read,
        "cpu_s": cost["cpu_s"],
        "cpu_s_per_million": {
            # The device side per value it read, the writer per value it stored: past the
            # pipeline's limit the two differ by what is still queued.
            "connection_actors": per_million(cost["cpu_s"]["connection_actors"], read),
            "writer": per_million(cost["cpu_s"]["writers"], values),
        },
        "latency_p50_ms": cost["latency_p50_ms"],
        "latency_p99_ms": cost["latency_p99_ms"],
        "published": result["published"],
        "stored": result["stored"],
        "gaps_recorded": result["gap_values"],
        "duplicates": result["duplicates"],
        "lost": result["published"] - result["stored"] - result["gap_values"],
    }


def bare_opcua(shape: Shape, seconds: float) -> tuple[int, float]:
    sims, wells, tags, interval_ms = shape
    fleet = [SimProcess(wells, tags, interval_ms) for _ in range(sims)]
    try:

        def start() -> None:
            for s in fleet:
                s.resume()

        return asyncio.run(_bare_opcua([(s.endpoint, s.node_ids) for s in fleet], seconds, start))
    finally:
        for s in fleet:
            s.kill()


def run_opcua(offered: float = 12_000.0, seconds: float = 20.0) -> dict[str, Any]:
    settings = _bench_settings()
    client, slug = deploy_bench(settings)
    # The simulators and the bare client run at the niceness of Ray's workers (15), as the
    # connection actors do: at 0 the simulators took the CPU first, and the pipeline, not the
    # bare client, was starved (1,107 values/s against 7,595, p50 15 s behind the source).
    with at_worker_priority():
        return _run_opcua(client, settings, slug, offered, seconds)


def _run_opcua(
    client: httpx.Client, settings: Settings, slug: str, offered: float, seconds: float
) -> dict[str, Any]:
    shape = opcua_shape(offered)
    sims, wells, tags, interval_ms = shape
    offered = sims * wells * tags * 1000 / interval_ms
    log(f"{sims} simulators x {wells * tags} tags every {interval_ms} ms (offered {offered:,.0f} values/s)")
    bare_rate, bare_cpu = bare_opcua(shape, seconds)
    log(f"bare asyncua client: {bare_rate:,.0f} values/s, {bare_cpu} CPU s per million")
    pipe = pipeline_opcua(client, settings, slug, shape, seconds)
    log(f"pipeline: {pipe['values_per_s']:,.0f} values/s stored, CPU s per million {pipe['cpu_s_per_million']}")
    return {
        "bench": "opcua",
        "simulators": sims,
        "tags": sims * wells * tags,
        "interval_ms": interval_ms,
        "offered_values_per_s": offered,
        "seconds": seconds,
        **cost_summary(pipe, bare_rate, bare_cpu),
        **{k: pipe[k] for k in ("values_read", "published", "stored", "gaps_recorded", "duplicates", "lost")},
    }


# -- Modbus ---------------------------------------------------------------------------------------
async def _bare_modbus(endpoint: str, counters: int, interval_ms: int, seconds: float) -> tuple[int, float]:
    """Values per second read, and CPU seconds per million values (this thread only)."""
    from pymodbus.client import AsyncModbusTcpClient

    from ingest.simulators.modbus_sim import COUNTER_BASE

    host, port = endpoint.removeprefix("tcp://").split(":")
    c = AsyncModbusTcpClient(host, port=int(port), timeout=1, retries=0, reconnect_delay=0)
    await c.connect()
    values = 0
    t0, c0 = time.perf_counter(), time.thread_time()
    next_t = t0
    while time.perf_counter() - t0 < seconds:
        for start in range(0, 2 * counters, 124):
            n = min(124, 2 * counters - start)
            rr = await c.read_holding_registers(COUNTER_BASE + start, count=n, device_id=1)
            values += len(rr.registers) // 2
        next_t += interval_ms / 1000
        await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
    cpu = time.thread_time() - c0
    c.close()
    return int(values / (time.perf_counter() - t0)), per_million(cpu, values)


def _values_read(connection_id: str) -> int:
    """Values the connection actors received from this connection's device so far."""
    import ray

    from actors.common import COORDINATOR_NAME

    st: Any = ray.get(ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE).status.remote())
    return sum(int(a.get("delivered", {}).get(connection_id, 0)) for a in st["actors"].values())


def _stopped(connection_id: str) -> bool:
    import ray

    from actors.common import COORDINATOR_NAME

    st: Any = ray.get(ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE).status.remote())
    return not any(connection_id in a.get("connections", {}) for a in st["actors"].values())


def start_modbus_sim(counters: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest.simulators.modbus_sim", "--port", "0", "--counters", str(counters)]
        + ["--interval-ms", "10"],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[1]


def pipeline_modbus(
    client: httpx.Client,
    settings: Settings,
    slug: str,
    endpoint: str,
    counters: int,
    interval_ms: int,
    seconds: float,
    db_pids: list[int] | None = None,
) -> dict[str, Any]:
    from ingest.simulators.modbus_sim import COUNTER_BASE

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
    body = {"name": f"plc-{int(time.time())}", "protocol": "modbus", "endpoint": endpoint}
    r = client.post(
        f"/v1/tenants/{slug}/connections", json={**body, "publishing_interval_ms": interval_ms, "tags": tags}
    )
    r.raise_for_status()
    cid = r.json()["id"]
    ids = [t["tag_id"] for t in r.json()["tags"]]
    dsn = settings.dsn(f"scada_t_{slug}")
    # A gap marker (Bad_DataLost) is one row standing for ``value`` readings the connection's
    # sender let go (its bound on unacknowledged rows, ingest.device.sender): accounted, not
    # stored. Every other row is a value read, Bad ones included (a poll the device refused). A
    # marker from the session-start gap check (a session restarted) has value NaN: readings never
    # read, of unknown count, so neither stored nor published.
    q = (
        "SELECT count(*) FILTER (WHERE quality <> $2) AS n, "
        "count(*) FILTER (WHERE quality <> 0 AND quality <> $2) AS bad, "
        "count(*) FILTER (WHERE quality = $2) AS markers, "
        "coalesce(sum(value) FILTER (WHERE quality = $2 AND value <> 'NaN'), 0)::int8 AS gap_values, "
        "count(*) FILTER (WHERE quality = $2 AND value = 'NaN') AS restart_markers "
        "FROM scada_readings WHERE tag_id = ANY($1::int[])"
    )
    try:
        wait_for(lambda: db_fetch(dsn, q, ids, GAP)[0]["n"] > 0, 120, "pipeline polling")
        time.sleep(2)
        probe = PipelineProbe(NAMESPACE, [slug], db_pids)
        r0, t0 = db_fetch(dsn, q, ids, GAP)[0], time.perf_counter()
        read0 = _values_read(cid)
        probe.start()
        time.sleep(seconds)
        r1, t1 = db_fetch(dsn, q, ids, GAP)[0], time.perf_counter()
        cost = probe.stop()
        read_window = _values_read(cid) - read0
    finally:
        # Stop polling, let the pipeline drain, then account for every value read.
        client.patch(f"/v1/tenants/{slug}/connections/{cid}", json={"enabled": False}).raise_for_status()
    wait_for(lambda: _stopped(cid), 60, "polling stopped")
    read = _values_read(cid)

    def accounted() -> int:
        r = db_fetch(dsn, q, ids, GAP)[0]
        return int(r["n"]) + int(r["gap_values"])

    try:
        wait_for(lambda: accounted() >= read, 60, "pipeline drained")
    except AssertionError:
        pass  # reported as lost below
    end = db_fetch(dsn, q, ids, GAP)[0]
    stored, gap_values = int(end["n"]), int(end["gap_values"])
    # Good values only: a poll that times out stores a BadNoCommunication row per point (the
    # session records every tick, ingest.device.modbus), which is not a value the bare loop
    # would count; at 200,000 offered such rows were two thirds of what was stored. The CPU of
    # both stages is charged to these values.
    values = (r1["n"] - r1["bad"]) - (r0["n"] - r0["bad"])
    return {
        "values_per_s": round(values / (t1 - t0)),
        "values": values,
        "values_read": read_window,
        "cpu_s": cost["cpu_s"],
        "cpu_s_per_million": {
            "connection_actors": per_million(cost["cpu_s"]["connection_actors"], values),
            "writer": per_million(cost["cpu_s"]["writers"], values),
        },
        "latency_p50_ms": cost["latency_p50_ms"],
        "latency_p99_ms": cost["latency_p99_ms"],
        "published": read,
        "stored": stored,
        "gaps_recorded": gap_values,
        "gap_markers": int(end["markers"]) - int(end["restart_markers"]),
        "restart_gap_markers": int(end["restart_markers"]),
        "lost": read - stored - gap_values,
        "bad_quality_rows": int(end["bad"]),
    }


def run_modbus(offered: float = 40_000.0, interval_ms: int = 25, seconds: float = 20.0) -> dict[str, Any]:
    counters = max(1, round(offered * interval_ms / 1000))
    settings = _bench_settings()
    client, slug = deploy_bench(settings)
    with at_worker_priority():  # the simulator and the bare loop, as in run_opcua
        return _run_modbus(client, settings, slug, counters, interval_ms, seconds)


def _run_modbus(
    client: httpx.Client, settings: Settings, slug: str, counters: int, interval_ms: int, seconds: float
) -> dict[str, Any]:
    proc, endpoint = start_modbus_sim(counters)
    try:
        offered = counters * 1000 / interval_ms
        log(f"{counters} uint32 registers polled every {interval_ms} ms (offered {offered:,.0f} values/s)")
        bare, bare_cpu = asyncio.run(_bare_modbus(endpoint, counters, interval_ms, seconds))
        log(f"bare pymodbus loop: {bare:,.0f} values/s, {bare_cpu} CPU s per million")
        pipe = pipeline_modbus(client, settings, slug, endpoint, counters, interval_ms, seconds)
        log(
            f"pipeline: {pipe['values_per_s']:,.0f} values/s stored, CPU s per million {pipe['cpu_s_per_million']}"
        )
        return {
            "bench": "modbus",
            "registers": 2 * counters,
            "points": counters,
            "interval_ms": interval_ms,
            "offered_values_per_s": offered,
            "seconds": seconds,
            **cost_summary(pipe, bare, bare_cpu),
            **{
                k: pipe[k]
                for k in (
                    "values_read",
                    "published",
                    "stored",
                    "gaps_recorded",
                    "gap_markers",
                    "restart_gap_markers",
                    "lost",
                    "bad_quality_rows",
                )
            },
        }
    finally:
        proc.terminate()
        proc.wait(30)
