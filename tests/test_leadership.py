"""One active coordinator per master database (ingest.store.leadership, actors.coordinator).

Two clusters on one set of databases each polled every device and stored every reading twice (a
benchmark's own Ray beside a running ``up`` did: 1.59 million rows for 1 million readings). Here a
second coordinator on the same master stands by, says who holds the lock and polls nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
import ray

from actors.common import COORDINATOR_NAME
from actors.coordinator import CoordinatorActor
from actors.deploy import require_leadership
from ingest.core.config import Settings
from ingest.core.errors import StandingBy
from ingest.store.leadership import Leadership
from tests.conftest import fresh_database
from tests.helpers import wait_for


async def test_one_holder_at_a_time_and_the_next_takes_over_when_it_lets_go(stack: Settings) -> None:
    # A database of its own: the suite's coordinator holds the lock of the suite's master.
    dsn = stack.dsn(await fresh_database(stack, "lead", migrate=False))
    a, b, c = (Leadership(dsn, f"test-holder-{x}") for x in "abc")
    try:
        assert await b.holder() is None  # not connected yet: cannot tell
        assert await a.decide() == "lead"
        assert await a.hold()  # a check while holding keeps holding
        assert await b.decide() == "standby"
        assert not b.held and (b.standby or {})["holder"]["application_name"] == "test-holder-a"
        assert (await b.holder() or {}).get("application_name") == "test-holder-a"
        await a.release()
        assert await b.decide() == "lead" and b.standby is None
        assert not await a.hold()
        # The holder's session ended by the server (a database restart, an operator): the lock
        # goes with it, another takes it, and the old holder learns it on its next check.
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'test-holder-b'"
            )
        finally:
            await admin.close()
        assert await wait_async(c.hold)
        assert not await b.hold()
        assert (await b.holder() or {}).get("application_name") == "test-holder-c"
    finally:
        for lead in (a, b, c):
            await lead.release()


async def test_a_database_out_of_reach_is_no_holder() -> None:
    """Unreachable: not holding, and no holder named. The coordinator then keeps what runs (a
    master outage must not stop ingestion: tests/test_writer_faults.py stops the whole database
    for 30 s mid-stream) and stands down only for a holder it sees."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    lead = Leadership(f"postgresql://nobody:x@127.0.0.1:{port}/none", "test-unreachable")
    assert await lead.decide() == "unknown"
    assert await lead.holder() is None
    assert not lead.held and lead.standby is None


async def wait_async(check: Any, attempts: int = 50) -> bool:
    for _ in range(attempts):
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


def test_a_second_coordinator_on_the_same_master_stands_by_and_polls_nothing(stack: Settings, api: str) -> None:
    main = ray.get_actor(COORDINATOR_NAME, namespace=stack.namespace)
    wait_for(lambda: ray.get(main.leadership.remote())["leader"] is True, 60, "the suite's coordinator leads")
    before = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    second = CoordinatorActor.options(name="coordinator-second", namespace=stack.namespace).remote(stack)  # type: ignore[attr-defined]
    try:
        wait_for(lambda: ray.get(second.leadership.remote())["leader"] is False, 60, "second stands by")
        lead = ray.get(second.leadership.remote())
        assert lead["holder"]["application_name"].startswith("scada-coordinator ray ")
        status = ray.get(second.status.remote())
        assert status["leader"] is False and status["standby"]["holder"] == lead["holder"]
        assert status["actors"] == {} and status["passes"] == 0
        last = ray.get(second.reconcile.remote())
        assert last["lock"] == "standby" and last["standby"]["holder"] == lead["holder"]
        with pytest.raises(StandingBy, match="another scada-ingest coordinator holds"):
            require_leadership(second, timeout_s=10)
        # It created no connection actor and no writer of its own.
        after = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
        assert after - before == {"coordinator-second"}
        assert ray.get(main.status.remote())["leader"] is True
    finally:
        ray.kill(second, no_restart=True)
