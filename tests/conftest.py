"""One PostgreSQL cluster, one Redis, one Ray instance and one Serve app per test session.

The test stack lives under .local/test with its own ports, so it never touches a running demo.
Each test that needs a tenant gets its own (and so its own database).

Tests come in three tiers, selected with ``-m``: ``unit`` (no services: in-process code and device
simulators), ``integration`` (PostgreSQL and Redis) and ``system`` (Ray and Serve too). A test's
tier follows from the fixtures it uses (see ``pytest_collection_modifyitems``); a module that
starts services without them (test_localstack) marks itself.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.core.config import REPO_ROOT, Settings
from ingest.core.net import free_port
from ingest.core.ray_env import ray_env_defaults

# Tests run Ray the way production does (token authentication on, ingest.core.ray_env). Ray reads
# its environment when it is first imported, so it is set here, before any test module imports ray.
ray_env_defaults()
if not (Path.home() / ".ray" / "auth_token").exists():
    from ray._private.authentication.authentication_token_setup import generate_and_save_token

    generate_and_save_token()


TIERS = ("unit", "integration", "system")
# A test using any of these (directly or through another fixture) needs that tier's services.
SYSTEM_FIXTURES = frozenset({"ray_cluster", "ray_instance", "api"})
INTEGRATION_FIXTURES = frozenset({"stack"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        needs = "system" if used & SYSTEM_FIXTURES else "integration" if used & INTEGRATION_FIXTURES else "unit"
        marked = [t for t in TIERS if item.get_closest_marker(t) is not None]
        if len(marked) > 1:
            raise pytest.UsageError(f"{item.nodeid}: marked {marked}, one tier only")
        if marked and TIERS.index(marked[0]) < TIERS.index(needs):
            # -m unit must never start a service: a test marked below what it uses is a bug.
            raise pytest.UsageError(f"{item.nodeid}: marked {marked[0]} but uses {needs} fixtures")
        if not marked:
            item.add_marker(needs)


@pytest.fixture(scope="session")
def settings() -> Settings:
    local = Path(os.environ.get("SCADA_TEST_LOCAL_DIR", REPO_ROOT / ".local" / "test"))
    return Settings(
        # Overridable so two checkouts (worktrees) can run their suites side by side. The defaults lie
        # outside the kernel's ephemeral port range, so no outgoing connection can hold them.
        local_dir=local,
        pg_port=int(os.environ.get("SCADA_TEST_PG_PORT", "25442")),
        redis_port=int(os.environ.get("SCADA_TEST_REDIS_PORT", "26389")),
        namespace="scada-test",
        http_port=free_port(),
        reconcile_interval_s=1.0,
    ).with_local_secrets()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    from ingest.localstack.stack import start_local, stop_local
    from ingest.store.master import migrate_all

    start_local(settings)
    asyncio.run(migrate_all(settings))
    yield settings
    if not os.environ.get("SCADA_TEST_KEEP_STACK"):
        stop_local(settings)


@pytest.fixture(scope="session")
def second_pg(stack: Settings) -> Iterator[Any]:
    """A second project-owned PostgreSQL + TimescaleDB cluster (its own port and directory), for
    placement over two servers, attaching and moving. Same superuser name, its own password."""
    from ingest.core.keys import read_or_create_secret
    from ingest.localstack.postgres import PostgresParams, ensure_postgres, stop_postgres

    params = PostgresParams(
        data_dir=stack.local_dir / "pg2" / "data",
        port=int(os.environ.get("SCADA_TEST_PG2_PORT", "25543")),
        superuser=stack.pg_superuser,
        password=read_or_create_secret(stack.secrets_dir / "pg2_password"),
    )
    ensure_postgres(params)
    yield params
    if not os.environ.get("SCADA_TEST_KEEP_STACK"):
        stop_postgres(params)


# Node failure is noticed by Ray's health checks; the defaults take ~15 s. The failover tests
# need the coordinator's own probe to decide, so the cluster checks fast too.
FAST_HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}


@pytest.fixture(scope="session")
def ray_cluster(stack: Settings) -> Iterator[Any]:
    """A real multi-node-capable Ray cluster on this machine: a head now, workers on demand."""
    import ray
    from ray.cluster_utils import Cluster

    # On a loaded machine the head's raylet can give up waiting for its metrics agent to start
    # ("The current node timed out during startup"): that is the machine, not the code under
    # test, so the start is tried again a few times.
    for attempt in range(3):
        try:
            cluster = Cluster(
                initialize_head=True,
                head_node_args={"num_cpus": 4, "include_dashboard": False, "_system_config": FAST_HEALTH},
            )
            break
        except Exception:
            if attempt == 2:
                raise
            time.sleep(5.0)
    from actors.deploy import ray_logging_config

    ray.init(
        address=cluster.address,
        namespace=stack.namespace,
        log_to_driver=False,
        logging_level="WARNING",
        logging_config=ray_logging_config(),
    )
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def ray_instance(ray_cluster: Any) -> None:
    return None


@pytest.fixture(scope="session")
def api(stack: Settings, ray_instance: None) -> Iterator[str]:
    from ray import serve

    from actors.deploy import wait_http
    from serve_app.deploy import deploy

    info = deploy(stack)
    wait_http(f"{info['api']}/healthz")
    yield info["api"]
    serve.shutdown()


@pytest.fixture(scope="session")
def admin(api: str, stack: Settings) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=60, headers={"Authorization": f"Bearer {stack.admin_key}"}) as c:
        yield c


class TenantHandle:
    def __init__(self, api: str, created: dict[str, Any]) -> None:
        self.slug: str = created["slug"]
        self.id: str = created["id"]
        self.key: str = created["api_key"]
        self.client = httpx.Client(base_url=api, timeout=60, headers={"Authorization": f"Bearer {self.key}"})

    @property
    def db(self) -> str:
        return f"scada_t_{self.slug}"


@pytest.fixture
def make_tenant(admin: httpx.Client, api: str) -> Iterator[Any]:
    """Creates tenants through the API; deletes them afterwards without a purge: their sessions
    stop, their databases stay (for post-mortems of a failed run), and the coordinator retires
    their writer actors. Suspending them instead kept every test's writer running (a process of
    about 160 MB, 1.5 % of a core idle): 60 of them halfway through the suite, 9.4 GB."""
    made: list[TenantHandle] = []

    def _make() -> TenantHandle:
        slug = f"t{uuid.uuid4().hex[:10]}"
        r = admin.post("/v1/tenants", json={"slug": slug, "name": f"Test {slug}"})
        assert r.status_code == 201, r.text
        made.append(TenantHandle(api, r.json()))
        return made[-1]

    yield _make
    for h in made:
        admin.delete(f"/v1/tenants/{h.slug}")
        h.client.close()


@pytest.fixture
def tenant(make_tenant: Any) -> TenantHandle:
    handle: TenantHandle = make_tenant()
    return handle


async def fresh_database(settings: Settings, prefix: str, migrate: bool = True) -> str:
    """A new empty database (tenant schema applied unless migrate=False); returns its name."""
    import asyncpg

    from ingest.store import migrations

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(settings.dsn("postgres"))
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    if migrate:
        conn = await asyncpg.connect(settings.dsn(name))
        await migrations.apply(conn, "tenant")
        await conn.close()
    return name
