"""The whole pipeline through a writer kill and a 30 s database outage: nothing lost, nothing twice."""

from __future__ import annotations

import time
from typing import Any

import pytest
import ray
import redis

from actors.common import writer_name
from ingest.core.config import Settings
from ingest.localstack.postgres import ensure_postgres, stop_postgres
from ingest.localstack.stack import pg_params
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, counting_check, db_fetch, wait_for


@pytest.fixture
def sim() -> Any:
    s = SimProcess(wells=2, tags=5, interval_ms=50)
    yield s
    s.kill()


def test_writer_killed_and_database_stopped_30s_mid_stream(
    tenant: TenantHandle, stack: Settings, sim: SimProcess
) -> None:
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=sim.connection_body("faulty-day"))
    assert r.status_code == 201, r.text
    tag_ids = {t["node_id"]: t["tag_id"] for t in r.json()["tags"]}
    dsn = stack.dsn(tenant.db)
    wait_for(
        lambda: db_fetch(dsn, "SELECT count(DISTINCT tag_id) AS n FROM scada_readings")[0]["n"] == len(tag_ids),
        60,
        "subscription delivering",
    )

    def rows() -> int:
        return int(db_fetch(dsn, "SELECT count(*) AS n FROM scada_readings")[0]["n"])

    sim.resume()
    n = rows()
    wait_for(lambda: rows() > n + 1000, 60, "counts streaming in")
    # 1. The writer actor dies mid-stream; Ray restarts it; senders resend unacknowledged batches.
    ray.kill(ray.get_actor(writer_name(tenant.slug), namespace=stack.namespace), no_restart=False)
    n = rows()
    wait_for(lambda: rows() > n + 1000, 60, "the restarted writer committing")
    # 2. The database stops for 30 s while devices keep publishing.
    rds = redis.Redis.from_url(stack.redis_url)
    stop_postgres(pg_params(stack))
    spool_peak = 0
    t_end = time.monotonic() + 30  # the outage's length: a window, not a wait for a condition
    try:
        while time.monotonic() < t_end:
            spool_peak = max(spool_peak, int(rds.llen(f"scada:spool:{tenant.slug}")))
            time.sleep(0.5)
    finally:
        ensure_postgres(pg_params(stack))
    n = rows()
    wait_for(lambda: rows() > n, 60, "the database taking readings again")
    summary = sim.stop()
    published = summary["per_node"]
    wait_for(
        lambda: counting_check(dsn, tag_ids, published)["stored"] >= summary["published"],
        180,
        "every published value stored after the outage",
    )
    result = counting_check(dsn, tag_ids, published)
    print(
        f"writer kill + 30 s database stop: published {result['published']}, stored "
        f"{result['stored']}, spool peak {spool_peak} batches"
    )
    assert spool_peak > 0, "the outage should have gone through the durable spool"
    assert result["bad"] == [], result["bad"][:3]
    assert result["stored"] == result["published"] > 10 * 20 * 30
    wait_for(lambda: int(rds.llen(f"scada:spool:{tenant.slug}")) == 0, 60, "spool drained")
    assert int(rds.get(f"scada:spool:{tenant.slug}:rows") or 0) == 0
    rds.close()
