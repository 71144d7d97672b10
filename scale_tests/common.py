"""Set-up shared by benchmarks and scenarios: the local stack, a private Ray, a bench tenant."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx

from ingest.core.config import Settings
from ingest.core.models import Tenant
from ingest.core.ray_env import BACKGROUND_NICENESS, ray_env_defaults
from ingest.store.master import MasterStore
from ingest.store.registration import ConnectionCreate, TagCreate
from ingest.store.tenant_store import TenantStore


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# The niceness of the actors that collect (ingest.core.ray_env: Ray's workers start at 10, where
# the API's replicas, Serve's proxy and the writers stay; connection actors move to 15).
RAY_WORKER_NICENESS = BACKGROUND_NICENESS


@contextlib.contextmanager
def at_worker_priority() -> Iterator[None]:
    """This thread, and the processes it starts meanwhile (simulators), at the niceness of the
    connection actors. Field devices and dashboards do not share the cluster's cores
    in production; here they do, and at niceness 0 they would take the CPU before the actors they
    load (Ray keeps its workers niced so that its own daemons come first). At the same niceness
    neither side is favoured. Restored afterwards (lowering niceness needs root; without it, it
    stays)."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, max(before, RAY_WORKER_NICENESS))
    try:
        yield
    finally:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, before)


def direct_api(api: str, slug: str, key: str) -> str:
    """The API replica's own HTTP address (Serve's direct ingress, on by default:
    ingest.core.ray_env), as a stream ticket's answer names it (``live_url``)."""
    return direct_apis(api, slug, key, 1)[0]


def direct_apis(api: str, slug: str, key: str, replicas: int, tries: int = 200) -> list[str]:
    """Every API replica's own address: tickets asked through Serve's proxy, which spreads them
    over the replicas, until ``replicas`` different ones answered."""
    auth = {"Authorization": f"Bearer {key}"}
    seen: list[str] = []
    for _ in range(tries):
        r = httpx.post(f"{api}/v1/tenants/{slug}/stream-tickets", headers=auth, timeout=60)
        r.raise_for_status()
        url = r.json()["live_url"]
        if not url:
            raise RuntimeError("the API names no address of its own (direct ingress off?)")
        if url not in seen:
            seen.append(str(url))
        if len(seen) >= replicas:
            return seen
    raise RuntimeError(f"{len(seen)} of {replicas} API replicas named themselves in {tries} tickets")


# What the scenarios and benches name their tenants: the prefix, then a number (then ``x`` and a
# number, for several at once). They share the local stack.
SCENARIO_PREFIXES = ("bench", "blive", "bpush", "edge", "failover")


def drop_earlier_tenants(admin: httpx.Client, *prefixes: str) -> int:
    """Delete (with their databases) the tenants earlier runs left, named by one of ``prefixes``
    (every scenario's, when none is given; runs on one stack follow each other): their
    connections dial simulators that are gone, and each kept a writer and its sessions' retries
    running beside the run being measured (fifteen of them slowed the failover scenario's
    reassignment from about 1 s to 10.9 s; the live bench's ten tenants ran beside every later
    bench). Returns how many."""
    gone = 0
    for t in admin.get("/v1/tenants").json():
        for prefix in prefixes or SCENARIO_PREFIXES:
            if t["slug"].startswith(prefix) and re.fullmatch(r"\d+(x\d+)?", t["slug"][len(prefix) :]):
                admin.delete(f"/v1/tenants/{t['slug']}", params={"purge": "true"}).raise_for_status()
                gone += 1
                break
    return gone


def prepare_stack(settings: Settings) -> None:
    from ingest.core.config import on_cluster
    from ingest.store.master import migrate_all

    if not on_cluster():
        from ingest.localstack.stack import start_local

        start_local(settings)
    asyncio.run(migrate_all(settings))


def start_private_ray(num_cpus: int = 2) -> None:
    """A Ray instance of the benchmark's own, so a running demo does not skew it."""
    import ray

    if not ray.is_initialized():
        ray_env_defaults()
        # On a loaded machine the raylet may not register within Ray's fixed 30 s ("The current
        # node timed out during startup"): that is the machine, so the start is tried again.
        for attempt in range(3):
            try:
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    namespace="scada-bench",
                )
                return
            except Exception:
                ray.shutdown()
                if attempt == 2:
                    raise
                time.sleep(5.0)


def start_cluster(nodes: int, head_cpus: int = 2) -> Any:
    """A ``ray.cluster_utils.Cluster`` of ``nodes`` nodes on this machine, joined by this driver
    (namespace scada-bench); each start tried again like ``start_private_ray``."""
    import ray
    from ray.cluster_utils import Cluster

    ray_env_defaults()
    for attempt in range(3):
        try:
            head = {"num_cpus": head_cpus, "include_dashboard": False}
            cluster = Cluster(initialize_head=True, head_node_args=head)
            break
        except Exception:
            if attempt == 2:
                raise
            time.sleep(5.0)
    for _ in range(nodes - 1):
        for attempt in range(3):
            try:
                cluster.add_node(num_cpus=1)
                break
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(5.0)
    ray.init(address=cluster.address, namespace="scada-bench", log_to_driver=False, logging_level=logging.WARNING)
    cluster.wait_for_nodes()
    return cluster


async def ensure_tenant(settings: Settings, slug: str, tags: int) -> tuple[Tenant, list[int]]:
    """A tenant with ``tags`` registered tags (valid range 0..1e9, no deadband), reused."""
    master = await MasterStore.connect(settings)
    try:
        try:
            tenant = await master.get_tenant(slug)
        except Exception:
            tenant, _ = await master.create_tenant(slug, f"benchmark {slug}")
        store = await TenantStore.connect(await master.tenant_dsn(tenant.id), master.box)
        try:
            have = await store.list_tags()
            if len(have) < tags:
                body = ConnectionCreate(
                    name=f"bench-{len(have)}",
                    protocol="opcua",
                    endpoint="opc.tcp://127.0.0.1:1/bench",
                    enabled=False,
                    tags=[
                        TagCreate(name=f"t{i}", node_id=f"ns=2;s=T{i}", valid_min=0, valid_max=1e9)
                        for i in range(tags - len(have))
                    ],
                )
                await store.create_connection(body)
                have = await store.list_tags()
            return tenant, [t["tag_id"] for t in have][:tags]
        finally:
            await store.close()
    finally:
        await master.close()


async def truncate(settings: Settings, database: str) -> None:
    conn = await asyncpg.connect(settings.dsn(database))
    try:
        await conn.execute("TRUNCATE scada_readings, ingest_ledger")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def count_rows(settings: Settings, database: str) -> int:
    conn = await asyncpg.connect(settings.dsn(database))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM scada_readings"))
    finally:
        await conn.close()


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def summary_rates(results: dict[str, list[float]]) -> dict[str, Any]:
    """Best of each method's rounds (the machine is shared; the best run is the least disturbed)."""
    return {k: round(max(v), 1) for k, v in results.items()}
