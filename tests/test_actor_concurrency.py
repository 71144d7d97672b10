"""The actor concurrency rule (actors/common.py), checked on real actors.

Every remote method of every actor is called on a fresh actor: health-group methods first (before
any data method has built clients on the data loop), then data methods, then health again. Each
call succeeds, and readings still flow afterwards. The tables below must name every remote method,
so a new method cannot be left out.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import ray

from actors.common import COORDINATOR_NAME, writer_name
from actors.connection import ConnectionActor
from actors.coordinator import CoordinatorActor
from actors.writer import WriterActor
from ingest.core.batch import ReadingBatch, TextBatch
from ingest.core.config import Settings
from ingest.core.models import ConnectionSpec, Protocol, TagSpec
from ingest.core.ray_env import BACKGROUND_NICENESS
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, db_fetch, wait_for

Call = Callable[[Any], Any]


def remote_methods(actor_cls: Any) -> dict[str, str]:
    """Public methods of an actor class -> their concurrency group."""
    cls = actor_cls.__ray_actor_class__
    return {
        name: getattr(fn, "__ray_concurrency_group__", "default")
        for name, fn in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def run_in_rule_order(actor_cls: Any, handle: Any, calls: dict[str, Call]) -> None:
    groups = remote_methods(actor_cls)
    assert set(calls) == set(groups), f"methods not covered: {set(groups) ^ set(calls)}"
    assert set(groups.values()) <= {"health", "data"}, groups
    health = [m for m, g in groups.items() if g == "health"]
    data = [m for m, g in groups.items() if g == "data"]
    for name in health + data + health:
        for attempt in range(5):
            try:
                ray.get(calls[name](handle), timeout=60)
                break
            except ray.exceptions.ActorUnavailableError:
                # Ray restarting the actor (not what this test is about): the same call again.
                if attempt == 4:
                    raise
                time.sleep(1.0)
            except Exception as e:
                raise AssertionError(f"{actor_cls.__ray_actor_class__.__name__}.{name}: {e!r}") from e


@pytest.fixture
def sim() -> Any:
    s = SimProcess(1, 3, 50)
    yield s
    s.kill()


def _batch(tag_id: int, n: int, prefix: str) -> ReadingBatch:
    t0 = 1_700_000_000_000_000
    return ReadingBatch(
        f"{prefix}:{uuid.uuid4().hex}",
        np.arange(n, dtype=np.int64) * 1000 + t0,
        np.full(n, tag_id, np.int32),
        np.arange(n, dtype=np.float64) + 1,
        np.zeros(n, np.int32),
    )


def _niceness(actor: Any) -> set[int]:
    """The niceness of every thread of the actor's process."""
    pid = ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()))
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            out.add(os.getpriority(os.PRIO_PROCESS, int(tid)))
    return out


def test_every_remote_method_on_fresh_actors(
    stack: Settings, api: str, tenant: TenantHandle, sim: SimProcess
) -> None:
    # A disabled connection: the coordinator leaves it alone; the fresh connection actor below
    # runs it, so its readings come from that actor only.
    body = sim.connection_body("fresh", publishing_interval_ms=50) | {"enabled": False}
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=body)
    assert r.status_code == 201, r.text
    conn = r.json()
    tags = tuple(TagSpec(t["tag_id"], t["name"], t["node_id"]) for t in conn["tags"])
    tag = tags[0].tag_id
    dsn = stack.dsn(tenant.db)

    # The writer: a fresh actor for the tenant beside the coordinator's (same ledger: safe).
    writer = WriterActor.remote(stack, tenant.id, tenant.slug)  # type: ignore[attr-defined]
    text = TextBatch(
        f"fresh-text:{uuid.uuid4().hex}",
        np.array([1_700_000_000_000_000]),
        np.array([tag], np.int32),
        ["hello"],
        np.zeros(1, np.int32),
    )
    run_in_rule_order(
        WriterActor,
        writer,
        {
            "health": lambda w: w.health.remote(),
            "stats": lambda w: w.stats.remote(),
            "stats_now": lambda w: w.stats_now.remote(),
            "start": lambda w: w.start.remote(),
            "write": lambda w: w.write.remote(_batch(tag, 100, "fresh").to_arrow()),
            "last_times": lambda w: w.last_times.remote([tag], [2_000_000_000_000_000]),
            "quarantined": lambda w: w.quarantined.remote(),
            "replay_quarantined": lambda w: w.replay_quarantined.remote("no-such-batch"),
            "latency_histogram": lambda w: w.latency_histogram.remote(),
            # A move's hold and release (data methods run in name order: held from "hold" to
            # "release", so the calls between them meet a held writer).
            "hold": lambda w: w.hold.remote(),
            "release": lambda w: w.release.remote(),
        },
    )
    ray.get(writer.write.remote(text.to_arrow()))
    assert ray.get(writer.stats_now.remote())["rows_committed"] == 101  # 100 numbers, 1 text
    writer_nice = _niceness(writer)
    ray.kill(writer)

    # A connection actor, fresh: status before anything built, then a real session.
    slot = f"conn-fresh-{uuid.uuid4().hex[:6]}"
    host = ConnectionActor.remote(stack, slot)  # type: ignore[attr-defined]
    spec = ConnectionSpec(tenant.id, tenant.slug, conn["id"], Protocol.OPCUA, sim.endpoint, 50, tags=tags)
    run_in_rule_order(
        ConnectionActor,
        host,
        {
            "health": lambda h: h.health.remote(),
            "status": lambda h: h.status.remote(),
            "apply": lambda h: h.apply.remote([spec]),
            "drain": lambda h: h.drain.remote(5.0),
        },
    )
    sim.resume()
    # Priorities (ingest.core.ray_env): the writer stays where Ray started its workers, as the
    # coordinator does and the API's replicas (a push's answer waits on the writer); the
    # connection actor moved every thread below them.
    started = _niceness(ray.get_actor(COORDINATOR_NAME, namespace=stack.namespace))
    if max(started) < BACKGROUND_NICENESS:
        assert max(writer_nice) < BACKGROUND_NICENESS <= min(_niceness(host)), (writer_nice, started)

    def stored() -> int:
        return int(
            db_fetch(
                dsn,
                "SELECT count(*) AS n FROM scada_readings WHERE tag_id = "
                "ANY($1::int[]) AND time > now() - interval '1 hour'",
                [t.tag_id for t in tags],
            )[0]["n"]
        )

    # Readings flow after every method ran, through the tenant's own writer.
    wait_for(
        lambda: stored() > 30,
        60,
        "readings from the fresh connection actor",
        describe=lambda: ray.get(host.status.remote()),
    )
    ray.get(host.apply.remote([]))
    ray.kill(host)

    # The coordinator: restarted by Ray (a fresh instance), health methods first.
    coord = ray.get_actor(COORDINATOR_NAME, namespace=stack.namespace)
    ray.kill(coord, no_restart=False)

    def back() -> bool:
        try:
            return bool(ray.get(coord.health.remote(), timeout=10))
        except ray.exceptions.RayError:
            return False

    wait_for(back, 60, "coordinator restarted")
    run_in_rule_order(
        CoordinatorActor,
        coord,
        {
            "health": lambda c: c.health.remote(),
            "leadership": lambda c: c.leadership.remote(),
            "assignment": lambda c: c.assignment.remote(),
            "connections_live": lambda c: c.connections_live.remote(tenant.slug),
            "notify": lambda c: c.notify.remote(),
            "start": lambda c: c.start.remote(),
            "reconcile": lambda c: c.reconcile.remote(),
            "status": lambda c: c.status.remote(),
        },
    )
    # The restarted coordinator still runs the tenant's writer.
    wait_for(
        lambda: any(t["slug"] == tenant.slug for t in ray.get(coord.status.remote())["tenants"]),
        60,
        "coordinator status",
    )
    assert ray.get_actor(writer_name(tenant.slug), namespace=stack.namespace)
