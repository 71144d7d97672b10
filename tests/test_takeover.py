"""A connection actor lost mid-stream, against four kinds of OPC UA server.

The actor hosting the sessions is killed (its process gone at once, no session closed, batches in
flight lost with it); Ray restarts it and the coordinator hands the connections to it again, so a
new process takes over each session. What each kind of server allows decides what can be
recovered, and the test holds each to it:

- ``takeover``: keeps a dead client's session for 60 s and completes TransferSubscriptions: the
  subscription is taken over and what the lost process never committed is Republished: no gap;
- ``history``: a 1 s session timeout (the subscription is gone by then) but history kept: the new
  subscription reads the interval back with HistoryRead: no gap;
- ``neither``: no TransferSubscriptions, no history: exact gaps (markers), nothing silent;
- ``stock``: asyncua's own TransferSubscriptions, which answers Good and then publishes nothing:
  given up on, re-created, exact gaps.

Every kind: no value lost silently, none stored twice. Timing is ``python -m scale_tests failover``'s.
"""

from __future__ import annotations

from typing import Any

import pytest
import ray

from ingest.core.config import Settings
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, counting_check_with_gaps, wait_for
from tests.test_failover import all_running, cluster_status, every_tag_streaming

KINDS: dict[str, list[str]] = {
    "takeover": [],
    "history": ["--historize", "--session-timeout-ms", "1000"],
    "neither": ["--transfer", "unsupported"],
    "stock": ["--transfer", "stock"],
}


@pytest.fixture
def sims() -> Any:
    made = {kind: SimProcess(wells=1, tags=3, interval_ms=50, extra_args=args) for kind, args in KINDS.items()}
    yield made
    for s in made.values():
        s.kill()


def sessions(settings: Settings) -> dict[str, dict[str, Any]]:
    st = cluster_status(settings)
    return {cid: c for a in st["actors"].values() for cid, c in a.get("connections", {}).items()}


def test_a_lost_actors_sessions_are_taken_over_as_far_as_each_server_allows(
    ray_instance: None, stack: Settings, tenant: TenantHandle, sims: dict[str, SimProcess]
) -> None:
    conns: dict[str, str] = {}  # kind -> connection id
    tag_ids: dict[str, dict[str, int]] = {}  # kind -> node id -> tag id
    for kind, sim in sims.items():
        r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=sim.connection_body(kind))
        assert r.status_code == 201, r.text
        conns[kind] = r.json()["id"]
        tag_ids[kind] = {x["node_id"]: x["tag_id"] for x in r.json()["tags"]}
    dsn = stack.dsn(tenant.db)
    before = wait_for(lambda: all_running(stack, set(conns.values())), 90, "connections running")
    for sim in sims.values():
        sim.resume()
    every_tag_streaming(dsn, sum(len(m) for m in tag_ids.values()))
    # Kill every process hosting one of them, abruptly; Ray restarts each.
    slots = {before[c]["slot"] for c in conns.values()}
    for slot in slots:
        ray.kill(ray.get_actor(slot, namespace=stack.namespace), no_restart=False)
    wait_for(
        lambda: (
            (p := all_running(stack, set(conns.values())))
            and all(p[c]["started_at"] != before[c]["started_at"] for c in conns.values())
        ),
        90,
        "sessions started again in new processes",
    )
    # Streaming again everywhere, and the stock server's silent transfer given up on.
    wait_for(
        lambda: sessions(stack)[conns["stock"]]["transfers_silent"] >= 1,
        60,
        "stock transfer given up",
        describe=lambda: {n: sessions(stack)[conns["stock"]].get(n) for n in _DESCRIBE},
    )
    start = {k: int(sessions(stack)[c]["values_received"]) for k, c in conns.items()}
    wait_for(
        lambda: all(int(sessions(stack)[c]["values_received"]) > start[k] + 20 for k, c in conns.items()),
        60,
        "every session streaming after the takeover",
    )
    summaries = {kind: sim.stop() for kind, sim in sims.items()}
    results: dict[str, dict[str, Any]] = {}
    for kind in KINDS:

        def check(kind: str = kind) -> dict[str, Any]:
            return counting_check_with_gaps(dsn, tag_ids[kind], summaries[kind]["per_node"])

        wait_for(
            lambda check=check: check()["unaccounted"] == 0,  # type: ignore[misc]
            60,
            f"{kind}: every value accounted for",
            # Where the values are missing, and what the session did, if it gives up.
            describe=lambda check=check, kind=kind: (  # type: ignore[misc]
                check(),
                {n: sessions(stack)[conns[kind]].get(n) for n in _STATS},
            ),
        )
        results[kind] = check()
    stats = sessions(stack)
    print({k: {**results[k], "session": {n: stats[conns[k]][n] for n in _STATS}} for k in KINDS})
    for kind, res in results.items():
        assert res["unaccounted"] == 0 and res["duplicates"] == 0, (kind, res)
    s = {kind: stats[c] for kind, c in conns.items()}
    # Taken over: the same subscription, Republished, nothing missing.
    assert s["takeover"]["transferred"] >= 1 and s["takeover"]["takeover_attempts"] >= 1
    assert results["takeover"]["gap_values"] == 0 and results["takeover"]["gap_markers"] == 0
    # History: the subscription was gone; the interval was read back.
    assert s["history"]["transferred"] == 0 and s["history"]["backfilled"] > 0
    assert results["history"]["gap_values"] == 0 and results["history"]["gap_markers"] == 0
    # Neither: exact gaps, counted by cause.
    assert results["neither"]["gap_values"] > 0 and s["neither"]["gaps_subscription_gone"] > 0
    # Stock asyncua: transferred, silent, given up on, re-created; exact gaps.
    assert s["stock"]["transfers_silent"] >= 1 and s["stock"]["gaps_not_publishing"] > 0
    assert results["stock"]["gap_values"] > 0


_STATS = (
    "takeover_attempts",
    "transferred",
    "transfers_silent",
    "republished",
    "backfilled",
    "duplicates_dropped",
    "gaps_subscription_gone",
    "gaps_not_publishing",
)
# What a failed wait reports of a session (floors_ms: how long the floors took; a session
# started without them makes no takeover attempt).
_DESCRIBE = (*_STATS, "floors_ms", "state", "last_error")
