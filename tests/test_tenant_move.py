"""Moving a tenant's database to another server while an OPC UA simulator streams into it: every
published value is stored exactly once in the new database (lost 0, duplicates 0), readings kept
arriving during the move (the writer spooled them and drained them into the new database), the
old database stopped changing at the hold, the API reads from the new one, and it is audited.

The figures (rows moved, readings that arrived during the move, duration) are printed and written
to ``<test local dir>/move_figures.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from ingest.core.config import Settings
from ingest.localstack.postgres import PostgresParams
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, counting_check, db_fetch, wait_for
from tests.test_db_servers import _register, _servers, cleanup_server, su_dsn

TARGET = "movetarget"


@pytest.fixture
def target(admin: httpx.Client, second_pg: PostgresParams) -> Iterator[PostgresParams]:
    """The second server, registered with little room so new tenants still go to the local one."""
    if TARGET in _servers(admin) or "second" in _servers(admin):
        cleanup_server(admin, TARGET)
        cleanup_server(admin, "second")
    r = _register(admin, second_pg, TARGET, 1)
    assert r.status_code == 201, r.text
    yield second_pg
    cleanup_server(admin, TARGET)


def _count(dsn: str, sql: str = "SELECT count(*) AS n FROM scada_readings") -> int:
    return int(db_fetch(dsn, sql)[0]["n"])


def test_move_under_streaming_loses_and_duplicates_nothing(
    make_tenant: Any, admin: httpx.Client, stack: Settings, target: PostgresParams
) -> None:
    t: TenantHandle = make_tenant()
    assert admin.get(f"/v1/tenants/{t.slug}").json()["server"] == stack.db_server_name
    sim = SimProcess(2, 5, 20)  # 10 tags at 50 Hz
    try:
        r = t.client.post(f"/v1/tenants/{t.slug}/connections", json=sim.connection_body("pad"))
        assert r.status_code == 201, r.text
        tag_ids = {tag["node_id"]: tag["tag_id"] for tag in r.json()["tags"]}
        old_dsn, new_dsn = stack.dsn(t.db), su_dsn(target, t.db)
        wait_for(lambda: _count(old_dsn) >= len(tag_ids), 60, "subscription delivering")
        sim.resume()
        wait_for(lambda: _count(old_dsn) >= 2000, 120, "some history to move")

        # Refusals first: the server it is on already, a server nobody registered.
        r = admin.post(f"/v1/tenants/{t.slug}/move", json={"server": stack.db_server_name})
        assert r.status_code == 409 and r.json()["details"][0]["field"] == "server", r.text
        r = admin.post(f"/v1/tenants/{t.slug}/move", json={"server": "nosuch"})
        assert r.status_code == 422 and r.json()["details"][0]["field"] == "server", r.text
        assert t.client.post(f"/v1/tenants/{t.slug}/move", json={"server": TARGET}).status_code == 403

        started = datetime.now(UTC)
        r = admin.post(f"/v1/tenants/{t.slug}/move", json={"server": TARGET})
        ended = datetime.now(UTC)
        assert r.status_code == 200, r.text
        report = r.json()
        assert (report["source"], report["target"]) == (stack.db_server_name, TARGET)
        assert admin.get(f"/v1/tenants/{t.slug}").json()["server"] == TARGET
        moved = report["rows"]["scada_readings"]
        # The old database stopped at the hold: it holds exactly what was moved, and it is
        # read-only (a registration during the move got a 503 to retry, not a lost write).
        assert _count(old_dsn) == moved
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            db_fetch(old_dsn, "INSERT INTO wells (name) VALUES ('late')")
        # Readings keep landing, now in the new database.
        wait_for(lambda: _count(new_dsn) > moved + 1000, 120, "readings landing in the new database")
        time.sleep(2.0)  # more streaming after the switch (the scenario, not a wait for a condition)
        summary = sim.stop()
        published = summary["per_node"]
        wait_for(
            lambda: counting_check(new_dsn, tag_ids, published)["stored"] >= summary["published"],
            120,
            "every published value stored in the new database",
        )
        check = counting_check(new_dsn, tag_ids, published)
        assert check["bad"] == [], check["bad"][:5]
        lost = check["published"] - check["stored"]
        assert lost == 0
        dups = _count(
            new_dsn,
            "SELECT coalesce(sum(n - 1), 0) AS n FROM (SELECT count(*) AS n FROM scada_readings "
            "WHERE value >= 1 GROUP BY tag_id, time, value) x",
        )
        assert dups == 0
        # Every committed batch is in the new ledger once; its rows add up to the rows stored.
        ledger = _count(new_dsn, "SELECT sum(rows) AS n FROM ingest_ledger")
        assert ledger == _count(new_dsn)
        during = _count(
            new_dsn,
            f"SELECT count(*) AS n FROM scada_readings WHERE time >= '{started.isoformat()}' "
            f"AND time < '{ended.isoformat()}'",
        )
        # The API answers from the new database.
        tag = next(iter(tag_ids.values()))
        wait_for(
            lambda: (
                _api_count(t, tag)
                == _count(new_dsn, f"SELECT count(*) AS n FROM scada_readings WHERE tag_id = {tag}")
            ),
            60,
            "API reading from the new database",
        )
        actions = [
            a["action"]
            for a in db_fetch(stack.master_dsn, "SELECT action FROM audit_log WHERE tenant_id = $1::uuid", t.id)
        ]
        assert "tenant.move_start" in actions and "tenant.move" in actions
        figures = {
            "rows_moved": report["total_rows"],
            "readings_moved": moved,
            "days_verified": report["days_verified"],
            "move_seconds": report["seconds"],
            "writer_held_s": report["held_s"],
            "spooled_rows_drained_after_switch": report["spooled_rows_at_release"],
            "readings_arrived_during_move": during,
            "published": check["published"],
            "stored": check["stored"],
            "lost": lost,
            "duplicates": dups,
        }
        print("\nmove figures:", json.dumps(figures))
        (stack.local_dir / "move_figures.json").write_text(json.dumps(figures, indent=2) + "\n")
        assert during > 0
    finally:
        sim.kill()
        admin.delete(f"/v1/tenants/{t.slug}", params={"purge": "true"})
        db_fetch(stack.dsn("postgres"), f'DROP DATABASE IF EXISTS "{t.db}" WITH (FORCE)')


def _api_count(t: TenantHandle, tag: int) -> int:
    r = t.client.get(
        f"/v1/tenants/{t.slug}/readings", params={"tag_id": tag, "limit": 100_000, "resolution": "raw"}
    )
    if r.status_code != 200:
        return -1
    return len(r.json()["series"][0]["points"]) if r.json()["series"] else 0
