"""The coordinator on a real multi-node Ray cluster (ray.cluster_utils.Cluster on this machine).

Node loss, node join, coordinator restart, a tenant database going away, suspend and resume, and
live edits, each with the simulators in counting mode and the real database. These tests assert
where connections run and where every value went; how fast failover is and how much a tenant's
outage costs the others are measured by ``python -m scale_tests failover``, not asserted here.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import ray

from actors.common import COORDINATOR_NAME
from ingest.core.config import Settings
from ingest.placement.sharding import assign_connections
from ingest.simulators.node_loss import kill_node
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, counting_check_with_gaps, db_fetch, wait_for


def coordinator(settings: Settings) -> Any:
    return ray.get_actor(COORDINATOR_NAME, namespace=settings.namespace)


def cluster_status(settings: Settings) -> dict[str, Any]:
    st: dict[str, Any] = ray.get(coordinator(settings).status.remote(), timeout=60)
    return st


def placement(settings: Settings) -> dict[str, dict[str, Any]]:
    """connection id -> {slot, node, state, started_at} as the actors report it."""
    out: dict[str, dict[str, Any]] = {}
    st = cluster_status(settings)
    for node, info in st["nodes"].items():
        for slot in info["actors"]:
            a = st["actors"].get(slot, {})
            for cid, c in a.get("connections", {}).items():
                out[cid] = {
                    "slot": slot,
                    "node": node,
                    "state": c["state"],
                    "started_at": c["started_at"],
                    "values": c.get("values_received", 0),
                }
    return out


def register_wells(t: TenantHandle, sim: SimProcess, wells: int) -> dict[str, dict[str, int]]:
    """One connection per well of the simulator: connection id -> {node id: tag id}."""
    out = {}
    for w in range(1, wells + 1):
        prefix = f"W{w:03d}."
        body = sim.connection_body(f"well-{w}")
        body["tags"] = [x for x in body["tags"] if x["node_id"].split(";s=")[-1].startswith(prefix)]
        r = t.client.post(f"/v1/tenants/{t.slug}/connections", json=body)
        assert r.status_code == 201, r.text
        out[r.json()["id"]] = {x["node_id"]: x["tag_id"] for x in r.json()["tags"]}
    return out


def row_count(dsn: str, tag_id: int | None = None) -> int:
    if tag_id is None:
        return int(db_fetch(dsn, "SELECT count(*) AS n FROM scada_readings")[0]["n"])
    return int(db_fetch(dsn, "SELECT count(*) AS n FROM scada_readings WHERE tag_id = $1", tag_id)[0]["n"])


def settled(count: Any, what: str, quiet_s: float = 1.0) -> int:
    """Poll ``count()`` until it stays the same for ``quiet_s`` (in-flight batches landed)."""
    seen = {"n": -1, "since": 0.0}

    def quiet() -> bool:
        n, now = count(), time.monotonic()
        if n != seen["n"]:
            seen["n"], seen["since"] = n, now
        return now - seen["since"] >= quiet_s

    wait_for(quiet, 30, what, every_s=0.25)
    return seen["n"]


def all_running(settings: Settings, conns: set[str]) -> dict[str, dict[str, Any]] | None:
    p = placement(settings)
    if conns <= p.keys() and all(p[c]["state"] == "connected" for c in conns):
        return p
    return None


def workers_serving(settings: Settings, workers: list[Any]) -> bool:
    """Each worker node hosts a connection actor that answers, and the coordinator's last pass
    counted every slot healthy (so connections registered now may be placed on them)."""
    st = cluster_status(settings)
    for w in workers:
        slots = st["nodes"].get(w.node_id, {}).get("actors") or []
        if not slots or any("error" in st["actors"].get(s, {"error": 1}) for s in slots):
            return False
    last = st.get("last_pass")
    return bool(last) and last["healthy_slots"] == last["slots"]


def every_tag_streaming(dsn: str, tags: int) -> None:
    """Wait until each of ``tags`` tags has a reading stored."""
    wait_for(
        lambda: len(db_fetch(dsn, "SELECT DISTINCT tag_id FROM scada_readings")) == tags,
        60,
        "every tag streaming",
    )


def accounted(dsn: str, conns: dict[str, dict[str, int]], sim: SimProcess) -> dict[str, Any]:
    """Stop the simulator, wait until every value it published is stored or inside a recorded
    gap, and return the counting check (``counting_check_with_gaps``)."""
    summary = sim.stop()
    tag_ids = {n: t for m in conns.values() for n, t in m.items()}
    wait_for(
        lambda: counting_check_with_gaps(dsn, tag_ids, summary["per_node"])["unaccounted"] == 0,
        60,
        "every value stored or inside a recorded gap",
    )
    return counting_check_with_gaps(dsn, tag_ids, summary["per_node"])


@pytest.fixture
def sim() -> Any:
    s = SimProcess(wells=6, tags=3, interval_ms=50)
    yield s
    s.kill()


def test_node_loss_moves_only_the_lost_nodes_connections_and_nothing_is_lost_silently(
    ray_cluster: Any, stack: Settings, tenant: TenantHandle, sim: SimProcess
) -> None:
    workers = [ray_cluster.add_node(num_cpus=1, resources={"worker": 1}) for _ in range(2)]
    ray_cluster.wait_for_nodes()
    try:
        # The connections are registered once both new nodes host a connection actor: placed
        # earlier, some would move to them as their slots appear, and such a move (not the node
        # loss under test) starts a session afresh with a session-start gap check. Two CI runs
        # failed on exactly that: 3 markers right after the paused simulator's first value.
        # Healthy, and counted healthy by a reconcile pass: a slot listed but still starting
        # gets no connections (a CI run failed so, every connection placed on the head node).
        wait_for(lambda: workers_serving(stack, workers), 90, "a healthy connection actor on each new node")
        conns = register_wells(tenant, sim, 6)
        dsn = stack.dsn(tenant.db)
        before = wait_for(lambda: all_running(stack, set(conns)), 60, "connections running")
        sim.resume()
        # The node dies mid-stream: once every tag has readings stored.
        every_tag_streaming(dsn, sum(len(m) for m in conns.values()))
        # The worker hosting the most connections dies without warning.
        by_node: dict[str, int] = {}
        for c in conns:
            by_node[before[c]["node"]] = by_node.get(before[c]["node"], 0) + 1
        victim = max((w for w in workers if w.node_id in by_node), key=lambda w: by_node[w.node_id], default=None)
        assert victim is not None, "no worker node got connections"
        moved = {c for c in conns if before[c]["node"] == victim.node_id}
        kill_node(ray_cluster, victim)
        after = wait_for(
            lambda: (
                (p := all_running(stack, set(conns))) and all(p[c]["node"] != victim.node_id for c in conns) and p
            ),
            60,
            "failover",
        )
        # Connections that were not on the lost node were not restarted.
        for c in set(conns) - moved:
            assert after[c]["started_at"] == before[c]["started_at"]
        # The moved connections stream from their new place before the simulator stops.
        moved_tags = [t for c in moved for t in conns[c].values()]

        def moved_rows() -> int:
            return int(
                db_fetch(
                    dsn, "SELECT count(*) AS n FROM scada_readings WHERE tag_id = ANY($1::int[])", moved_tags
                )[0]["n"]
            )

        n_moved = moved_rows()
        wait_for(lambda: moved_rows() > n_moved, 60, "readings of the moved connections after the failover")
        result = accounted(dsn, conns, sim)
        print(
            f"published {result['published']} stored {result['stored']} "
            f"in recorded gaps {result['gap_values']} duplicates {result['duplicates']}"
        )
        assert result["unaccounted"] == 0 and result["duplicates"] == 0
        # The simulator keeps a session's subscription for its timeout (60 s) and completes
        # TransferSubscriptions: each moved connection carried on its subscription, Republished
        # what the lost actor had not committed, and nothing was lost at all.
        st = cluster_status(stack)
        sessions = {cid: c for a in st["actors"].values() for cid, c in a.get("connections", {}).items()}
        assert all(sessions[c]["transferred"] >= 1 for c in moved), {c: sessions[c] for c in moved}
        # If not, what each session says about why (and the senders, about readings they shed).
        why = {
            c: {
                k: v
                for k, v in sessions[c].items()
                if k.startswith(
                    ("gap", "transfer", "resum", "resubscribed", "lost_messages", "takeover", "floors")
                )
            }
            for c in conns
        } | {slot: a.get("senders") for slot, a in st["actors"].items()}
        assert result["gap_values"] == 0 and result["gap_markers"] == 0, (result, why)
    finally:
        for w in workers:
            if w is not victim:
                ray_cluster.remove_node(w)


def test_node_join_moves_what_rendezvous_requires_without_a_gap_and_coordinator_restart_moves_nothing(
    ray_cluster: Any, stack: Settings, tenant: TenantHandle, sim: SimProcess
) -> None:
    conns = register_wells(tenant, sim, 6)
    dsn = stack.dsn(tenant.db)
    before = wait_for(lambda: all_running(stack, set(conns)), 60, "connections running")
    sim.resume()
    every_tag_streaming(dsn, sum(len(m) for m in conns.values()))
    slots_before = sorted({p["slot"] for p in cluster_status_slots(stack)})
    joined: list[Any] = []

    def moved_set(p: dict[str, dict[str, Any]]) -> set[str]:
        return {c for c in conns if p[c]["slot"] != before[c]["slot"]}

    try:
        # Nodes join (while the simulator publishes) until rendezvous moves at least one
        # connection: one join moves each of the six with a chance of about 1/3.
        moved: set[str] = set()
        while not moved and len(joined) < 3:
            seen = sorted(cluster_status(stack)["actors"])
            joined.append(ray_cluster.add_node(num_cpus=1))
            ray_cluster.wait_for_nodes()
            slots_after = wait_for(
                lambda seen=seen: (x := sorted(cluster_status(stack)["actors"])) != seen and x,  # type: ignore[misc]
                60,
                "a connection actor on the new node",
            )
            new_slots = [s for s in slots_after if s not in slots_before]
            # What rendezvous hashing requires: exactly the connections whose best slot is new.
            required = {c for c in conns if assign_connections({c: 1.0}, slots_after)[c] in new_slots}
            after = wait_for(
                lambda required=required: (p := all_running(stack, set(conns))) and moved_set(p) == required and p,  # type: ignore[misc]
                60,
                "the required moves done",
            )
            moved = moved_set(after)
        print(f"{len(joined)} node(s) joined: {len(moved)} of {len(conns)} connections moved")
        assert moved, "three joins moved nothing"
        assert all(after[c]["slot"] in new_slots for c in moved)
        for c in set(conns) - moved:
            assert after[c]["started_at"] == before[c]["started_at"]
        # Kill the coordinator: Ray restarts it; it resumes without restarting any session.
        ray.kill(coordinator(stack), no_restart=False)
        # A fresh actor counts its passes from zero.
        wait_for(lambda: 2 <= _passes(stack) < 10, 60, "restarted coordinator reconciling")
        resumed = wait_for(lambda: all_running(stack, set(conns)), 60, "still running")
        for c in conns:
            assert resumed[c]["started_at"] == after[c]["started_at"], "a session restarted"
        # Each moved session was passed on: its old slot left the subscription on the server
        # once what it had delivered was committed, and the new one carried it on. Nothing was
        # lost, nothing stored twice, and no gap was recorded.
        actors = list(cluster_status(stack)["actors"].values())
        sessions = {cid: c for a in actors for cid, c in a["connections"].items()}
        result = accounted(dsn, conns, sim)
        why = {c: {k: v for k, v in sessions[c].items() if k.startswith(_WHY)} for c in moved}
        print(f"counting: {result}; moved sessions: {why}")
        assert result["unaccounted"] == 0 and result["duplicates"] == 0
        assert all(sessions[c]["transferred"] >= 1 for c in moved), why
        assert sum(int(a.get("passed_on", 0)) for a in actors) >= len(moved)
        assert result["gap_values"] == 0 and result["gap_markers"] == 0
    finally:
        for node in joined:
            ray_cluster.remove_node(node)


_WHY = ("gap", "transfer", "resum", "resubscribed", "lost", "takeover", "floors", "republished", "duplicates")


def _passes(stack: Settings) -> int:
    try:
        return int(cluster_status(stack)["passes"])
    except Exception:
        return 0


def cluster_status_slots(stack: Settings) -> list[dict[str, Any]]:
    return [{"slot": s} for s in cluster_status(stack)["actors"]]


def test_suspend_resume_and_live_edits(admin: Any, stack: Settings, tenant: TenantHandle, sim: SimProcess) -> None:
    conns = register_wells(tenant, sim, 3)
    wait_for(
        lambda: all_running(stack, set(conns)), 60, "connections running", describe=lambda: cluster_status(stack)
    )
    sim.resume()
    dsn = stack.dsn(tenant.db)

    def rows() -> int:
        return row_count(dsn)

    # Suspend: every session of the tenant stops within seconds, and the count stands still.
    r = admin.put(f"/v1/tenants/{tenant.slug}/status", json={"status": "SUSPENDED"})
    assert r.status_code == 200
    wait_for(lambda: not (set(conns) & placement(stack).keys()), 20, "sessions stopped")
    n = settled(rows, "batches in flight at the suspension landed")
    time.sleep(2)  # a window: nothing may arrive in it
    assert rows() == n
    r = admin.put(f"/v1/tenants/{tenant.slug}/status", json={"status": "ACTIVE"})
    before = wait_for(lambda: all_running(stack, set(conns)), 30, "sessions resumed")
    wait_for(lambda: rows() > n, 30, "readings flowing again")
    # Edit one connection: only its session restarts.
    ids = list(conns)
    r = tenant.client.patch(
        f"/v1/tenants/{tenant.slug}/connections/{ids[0]}", json={"publishing_interval_ms": 200}
    )
    assert r.status_code == 200, r.text
    after = wait_for(
        lambda: (
            (p := all_running(stack, set(conns))) and p[ids[0]]["started_at"] != before[ids[0]]["started_at"] and p
        ),
        30,
        "edit",
    )
    for c in ids[1:]:
        assert after[c]["started_at"] == before[c]["started_at"]
    # Delete a tag of the second connection: it stops being read.
    tag = next(iter(conns[ids[1]].values()))
    assert tenant.client.delete(f"/v1/tenants/{tenant.slug}/tags/{tag}").status_code == 204
    wait_for(
        lambda: (p := all_running(stack, set(conns))) and p[ids[1]]["started_at"] != after[ids[1]]["started_at"],
        30,
        "tag removal applied",
    )
    last = settled(lambda: row_count(dsn, tag), "readings of the removed tag in flight landed")
    time.sleep(2)  # a window: no reading of the removed tag may arrive in it
    assert row_count(dsn, tag) == last
    # Delete the third connection: it stops, the others keep going.
    assert tenant.client.delete(f"/v1/tenants/{tenant.slug}/connections/{ids[2]}").status_code == 204
    wait_for(lambda: ids[2] not in placement(stack), 20, "connection removed")
    assert all_running(stack, set(ids[:2]))


def test_one_tenant_database_down_does_not_stop_the_other(make_tenant: Any, stack: Settings) -> None:
    a, b = make_tenant(), make_tenant()
    sim_a, sim_b = SimProcess(2, 5, 20), SimProcess(2, 5, 20)
    try:
        conns_a = register_wells(a, sim_a, 2)
        conns_b = register_wells(b, sim_b, 2)
        wait_for(lambda: all_running(stack, set(conns_a) | set(conns_b)), 60, "running")
        sim_a.resume()
        sim_b.resume()
        dsn_b = stack.dsn(b.db)
        wait_for(lambda: row_count(dsn_b) > 0, 60, "tenant b streaming")
        # Tenant a's database refuses connections (as if its server were down).
        su = stack.dsn("postgres")
        db_fetch(su, f'ALTER DATABASE "{a.db}" WITH ALLOW_CONNECTIONS false')
        db_fetch(su, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", a.db)
        wait_for(
            lambda: any(
                t["slug"] == a.slug and t["state"] == "DEGRADED" for t in cluster_status(stack)["tenants"]
            ),
            30,
            "a degraded",
        )
        # Tenant b keeps landing readings while a is down (how fast: scale_tests).
        n_b = row_count(dsn_b)
        wait_for(lambda: row_count(dsn_b) > n_b + 100, 30, "tenant b still streaming")
        assert any(t["slug"] == a.slug and t["state"] == "DEGRADED" for t in cluster_status(stack)["tenants"])
        db_fetch(su, f'ALTER DATABASE "{a.db}" WITH ALLOW_CONNECTIONS true')
        wait_for(
            lambda: any(t["slug"] == a.slug and t["state"] == "HEALTHY" for t in cluster_status(stack)["tenants"]),
            60,
            "a recovered",
        )
        s_a = sim_a.stop()
        sim_b.stop()
        tags_a = {n: t for m in conns_a.values() for n, t in m.items()}
        wait_for(
            lambda: counting_check_with_gaps(stack.dsn(a.db), tags_a, s_a["per_node"])["unaccounted"] == 0,
            120,
            "tenant a caught up from its spool",
            describe=lambda: (
                counting_check_with_gaps(stack.dsn(a.db), tags_a, s_a["per_node"]),
                [t for t in cluster_status(stack)["tenants"] if t["slug"] == a.slug],
            ),
        )
    finally:
        sim_a.kill()
        sim_b.kill()
