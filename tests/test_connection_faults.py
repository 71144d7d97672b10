"""Faults of one connection stay with that connection, and a restarted session never loses
readings silently.

- A connection that cannot be built (put straight into a tenant's database, bypassing the API that
  refuses it) is FAILED with its reason, retried with backoff, shown in the connection routes and
  the status, and every other connection, of its tenant and of another, streams every value.
- A session restarted while its tenant's database is away cannot learn where the stored data
  ends; it keeps asking until it can, and the readings missed meanwhile lie inside a recorded gap.
"""

from __future__ import annotations

from typing import Any

import pytest
import ray

from ingest.core.config import Settings
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, counting_check, counting_check_with_gaps, db_fetch, wait_for
from tests.test_failover import all_running, cluster_status, placement, register_wells


@pytest.fixture
def sims() -> Any:
    made: list[SimProcess] = []

    def _make(wells: int, tags: int, interval_ms: int) -> SimProcess:
        made.append(SimProcess(wells, tags, interval_ms))
        return made[-1]

    yield _make
    for s in made:
        s.kill()


def _insert_unrunnable(dsn: str) -> dict[str, str]:
    """Two connections no session can run, written straight into the tenant database."""
    out = {}
    for name, protocol, endpoint, tag in [
        (
            "bad-coil",
            "modbus",
            "tcp://127.0.0.1:1502",
            "modbus_unit, modbus_register, modbus_address, modbus_data_type, byte_order) "
            "VALUES ($1, 'x', 1, 'coil', 0, 'uint16', 'ABCD')",
        ),
        ("bad-node", "opcua", "opc.tcp://127.0.0.1:1/x", "node_id) VALUES ($1, 'x', 'i=abc')"),
    ]:
        cid = db_fetch(
            dsn,
            "INSERT INTO scada_connections (name, protocol, endpoint, "
            "publishing_interval_ms) VALUES ($1, $2, $3, 100) RETURNING id::text",
            name,
            protocol,
            endpoint,
        )[0]["id"]
        db_fetch(dsn, f"INSERT INTO tag_mappings (connection_id, name, {tag}", cid)
        out[name] = cid
    return out


def _conn_states(settings: Settings) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for a in cluster_status(settings)["actors"].values():
        out.update(a.get("connections", {}))
    return out


def test_unrunnable_connection_fails_alone(make_tenant: Any, stack: Settings, sims: Any) -> None:
    a, b = make_tenant(), make_tenant()
    sim_a, sim_b = sims(1, 4, 20), sims(1, 4, 20)
    conns_a = register_wells(a, sim_a, 1)
    conns_b = register_wells(b, sim_b, 1)
    bad = _insert_unrunnable(stack.dsn(a.db))

    def failed_twice() -> bool:
        st = _conn_states(stack)
        return all(st.get(c, {}).get("state") == "failed" and st[c]["failures"] >= 2 for c in bad.values())

    # Retried with backoff (1 s, then 2 s...): a second failure shows the retry happened.
    wait_for(failed_twice, 60, "unrunnable connections failed and retried", describe=lambda: _conn_states(stack))
    wait_for(
        lambda: all_running(stack, set(conns_a) | set(conns_b)),
        60,
        "healthy connections of both tenants running",
        describe=lambda: _conn_states(stack),
    )

    # What the failure says, where a user looks for it: the connection routes ...
    def listed() -> dict[str, Any]:
        rows = a.client.get(f"/v1/tenants/{a.slug}/connections").json()
        return {c["id"]: c for c in rows if c["id"] in bad.values()}

    shown = wait_for(
        lambda: (x := listed()) and all(c["state"] == "failed" for c in x.values()) and x,
        30,
        "failed state recorded in the tenant database",
    )
    assert "coil" in shown[bad["bad-coil"]]["last_error"]
    assert "i=abc" in shown[bad["bad-node"]]["last_error"]
    one = a.client.get(f"/v1/tenants/{a.slug}/connections/{bad['bad-coil']}").json()
    assert one["state"] == "failed" and "coil" in one["last_error"]
    # ... and the status: tenant a DEGRADED naming the connections, tenant b HEALTHY.
    tenants = {t["slug"]: t for t in cluster_status(stack)["tenants"]}
    assert tenants[a.slug]["state"] == "DEGRADED"
    assert set(tenants[a.slug]["failed_connections"]) == set(bad.values())
    assert tenants[b.slug]["state"] == "HEALTHY"
    # Every value of the healthy connections lands exactly once.
    sim_a.resume()
    sim_b.resume()
    for t in (a, b):  # the healthy connections of both tenants stream before the stop
        wait_for(
            lambda t=t: db_fetch(stack.dsn(t.db), "SELECT count(*) AS n FROM scada_readings")[0]["n"] > 100,
            60,
            f"tenant {t.slug} streaming",
        )
    for sim, t, conns in ((sim_a, a, conns_a), (sim_b, b, conns_b)):
        summary = sim.stop()
        tag_ids = {n: i for m in conns.values() for n, i in m.items()}
        dsn = stack.dsn(t.db)

        def landed(dsn: str = dsn, tag_ids: dict[str, int] = tag_ids, summary: dict[str, Any] = summary) -> bool:
            return bool(counting_check(dsn, tag_ids, summary["per_node"])["stored"] >= summary["published"])

        wait_for(landed, 60, "values stored")
        result = counting_check(dsn, tag_ids, summary["per_node"])
        print(f"tenant {t.slug}: published {result['published']} stored {result['stored']}")
        assert result["published"] > 0
        assert result["bad"] == [] and result["stored"] == result["published"]


def test_session_restarted_while_database_away_records_its_gap(
    stack: Settings, tenant: TenantHandle, sims: Any
) -> None:
    sim = sims(1, 4, 20)
    conns = register_wells(tenant, sim, 1)
    cid = next(iter(conns))
    before = wait_for(lambda: all_running(stack, {cid}), 60, "connection running")
    dsn = stack.dsn(tenant.db)
    sim.resume()
    wait_for(
        lambda: db_fetch(dsn, "SELECT count(*) AS n FROM scada_readings")[0]["n"] > 100, 120, "readings stored"
    )
    su = stack.dsn("postgres")
    db_fetch(su, f'ALTER DATABASE "{tenant.db}" WITH ALLOW_CONNECTIONS false')
    db_fetch(su, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", tenant.db)
    try:
        # The actor hosting the session dies; Ray restarts it and the coordinator gives it the
        # connection again. Readings published meanwhile are gone, and where the stored data
        # ends cannot be asked of the database now.
        slot = before[cid]["slot"]
        ray.kill(ray.get_actor(slot, namespace=stack.namespace), no_restart=False)
        wait_for(
            lambda: (
                (p := placement(stack)).get(cid, {}).get("started_at", 0) > before[cid]["started_at"]
                and p[cid]["state"] == "connected"
            ),
            120,
            "session restarted",
        )
        wait_for(
            lambda: _conn_states(stack)[cid]["gap_check_failures"] >= 1, 120, "gap check waiting for the database"
        )
    finally:
        db_fetch(su, f'ALTER DATABASE "{tenant.db}" WITH ALLOW_CONNECTIONS true')
    n = db_fetch(dsn, "SELECT count(*) AS n FROM scada_readings")[0]["n"]
    wait_for(
        lambda: db_fetch(dsn, "SELECT count(*) AS n FROM scada_readings")[0]["n"] > n,
        120,
        "readings landing again after the database returned",
    )
    summary = sim.stop()
    tag_ids = {n: i for n, i in conns[cid].items()}
    wait_for(
        lambda: counting_check_with_gaps(dsn, tag_ids, summary["per_node"])["unaccounted"] == 0,
        90,
        "every value stored or inside a recorded gap",
        describe=lambda: counting_check_with_gaps(dsn, tag_ids, summary["per_node"]),
    )
    result = counting_check_with_gaps(dsn, tag_ids, summary["per_node"])
    print(
        f"published {result['published']} stored {result['stored']} in recorded gaps "
        f"{result['gap_values']} duplicates {result['duplicates']}"
    )
    assert result["gap_values"] > 0 and result["duplicates"] == 0
