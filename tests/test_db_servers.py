"""Database servers as a resource, and attached databases, against two real PostgreSQL +
TimescaleDB clusters: the test stack's and a second project-owned one (``second_pg``).

A provider registers the second server (its password never comes back), a new tenant lands on the
server with the most room or on the one it names, its writer stores readings there, a server with
tenants cannot be removed, and a purge drops the database on the server it lives on. A customer's
own database is attached once it has TimescaleDB and the grants README names; each thing missing
is refused with a 422 naming it; a purge detaches it and never drops it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.core.config import Settings
from ingest.localstack.postgres import PostgresParams
from tests.conftest import TenantHandle
from tests.helpers import db_fetch, quiet_ports, wait_for


def su_dsn(pg: PostgresParams, db: str = "postgres") -> str:
    return f"postgresql://{pg.superuser}:{pg.password}@{pg.host}:{pg.port}/{db}"


def _exec(dsn: str, *statements: str) -> None:
    for s in statements:
        db_fetch(dsn, s)


def _register(admin: httpx.Client, pg: PostgresParams, name: str, capacity: int) -> httpx.Response:
    return admin.post("/v1/servers", json={**_register_body(pg, name), "capacity_hint": capacity})


def _servers(admin: httpx.Client) -> dict[str, dict[str, Any]]:
    r = admin.get("/v1/servers")
    assert r.status_code == 200, r.text
    return {s["name"]: s for s in r.json()}


def _push_one(api: str, created: dict[str, Any]) -> None:
    """One pushed reading through the tenant's writer; 200 once committed or spooled."""
    t = TenantHandle(api, created)
    with t.client:
        assert (
            t.client.patch(f"/v1/tenants/{t.slug}/push/settings", json={"auto_register": True}).status_code == 200
        )
        point = {
            "well_id": "W1",
            "timestamp": datetime.now(UTC).isoformat(),
            "parameter_name": "p",
            "value": 7.5,
            "unit": "psi",
        }
        body = {"tenant_id": t.slug, "data_points": [point]}
        r = t.client.post("/v1/ingest/realtime", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 200, r.text


def _has_db(dsn: str, name: str) -> bool:
    return bool(db_fetch(dsn, "SELECT count(*) AS n FROM pg_database WHERE datname = $1", name)[0]["n"])


def test_servers_are_registered_listed_and_tenants_placed_on_the_most_room(
    admin: httpx.Client, api: str, stack: Settings, second_pg: PostgresParams
) -> None:
    if "second" in _servers(admin):  # left by an interrupted run
        cleanup_server(admin, "second")
    servers = _servers(admin)
    # `up` (here: the stack fixture, through migrate_all) registered the cluster's own server.
    local = servers[stack.db_server_name]
    assert (local["host"], local["port"], local["timescaledb_edition"]) == (stack.pg_host, stack.pg_port, "apache")
    assert stack.pg_password not in admin.get("/v1/servers").text

    # Wrong password, nothing listening: a 422 naming it.
    bad = {**_register_body(second_pg, "second"), "admin_password": "not-it"}
    r = admin.post("/v1/servers", json=bad)
    assert r.status_code == 422 and r.json()["error"] == "authentication_failed", r.text
    assert r.json()["details"][0]["field"] == "admin_password"
    r = admin.post("/v1/servers", json={**_register_body(second_pg, "second"), "port": quiet_ports(1)[0]})
    assert r.status_code == 422 and r.json()["error"] == "database_unreachable", r.text

    # More room than the local server by one: the next tenant goes there.
    r = _register(admin, second_pg, "second", local["room"] + 1)
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["timescaledb_edition"] == "apache" and second["timescaledb_version"], second
    assert "admin_password" not in second and second_pg.password not in admin.get("/v1/servers").text
    assert _register(admin, second_pg, "again", 5).status_code == 409  # same host and port
    try:
        slug = f"p{uuid.uuid4().hex[:10]}"
        r = admin.post("/v1/tenants", json={"slug": slug, "name": "placed"})
        assert r.status_code == 201, r.text
        placed = r.json()
        assert placed["server"] == "second" and placed["attached"] is False
        assert _has_db(su_dsn(second_pg), f"scada_t_{slug}") and not _has_db(
            stack.dsn("postgres"), f"scada_t_{slug}"
        )
        assert _servers(admin)["second"]["tenants"] == 1
        # Its writer writes to the second server.
        _push_one(api, placed)
        rows = "SELECT count(*) AS n FROM scada_readings WHERE value = 7.5"
        wait_for(lambda: db_fetch(su_dsn(second_pg, f"scada_t_{slug}"), rows)[0]["n"] == 1, 60, "reading landed")

        # Named: the local server, though the second has as much room now.
        named = f"n{uuid.uuid4().hex[:10]}"
        r = admin.post("/v1/tenants", json={"slug": named, "name": "named", "server": stack.db_server_name})
        assert r.status_code == 201 and r.json()["server"] == stack.db_server_name, r.text
        assert _has_db(stack.dsn("postgres"), f"scada_t_{named}")
        r = admin.post("/v1/tenants", json={"slug": f"x{uuid.uuid4().hex[:10]}", "name": "x", "server": "nosuch"})
        assert r.status_code == 422 and r.json()["details"][0]["field"] == "server", r.text
        admin.delete(f"/v1/tenants/{named}")

        # A server holding a tenant database is not removed; after the purge it is.
        r = admin.delete("/v1/servers/second")
        assert r.status_code == 409 and r.json()["details"][0]["field"] == "server", r.text
        assert admin.delete(f"/v1/tenants/{slug}", params={"purge": "true"}).status_code == 204
        assert not _has_db(su_dsn(second_pg), f"scada_t_{slug}")
    finally:
        cleanup_server(admin, "second")
    assert "second" not in _servers(admin)
    actions = [
        r["action"] for r in db_fetch(stack.master_dsn, "SELECT action FROM audit_log WHERE tenant_id IS NULL")
    ]
    assert {"server.register", "server.remove"} <= set(actions)


def _register_body(pg: PostgresParams, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "host": pg.host,
        "port": pg.port,
        "admin_user": pg.superuser,
        "admin_password": pg.password,
        "tls_mode": "disable",
    }


def cleanup_server(admin: httpx.Client, name: str) -> None:
    """Purge what still lives on the server (a failed run), then remove it."""
    for t in admin.get("/v1/tenants").json():
        if t["server"] == name:
            admin.delete(f"/v1/tenants/{t['slug']}", params={"purge": "true"})
    admin.delete(f"/v1/servers/{name}")


# -- attach -------------------------------------------------------------------------------------
@pytest.fixture
def customer(second_pg: PostgresParams) -> dict[str, Any]:
    """A customer's database on the second server, made the way its owner would: TimescaleDB
    installed by a superuser, a login role without CREATE on it yet."""
    db = f"cust_{uuid.uuid4().hex[:8]}"
    role, password = f"{db}_app", uuid.uuid4().hex
    _exec(
        su_dsn(second_pg),
        f"CREATE DATABASE {db}",
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}'",
    )
    _exec(su_dsn(second_pg, db), "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    url = f"postgresql://{second_pg.host}:{second_pg.port}/{db}"
    return {"db": db, "role": role, "password": password, "url": url}


def _attach(admin: httpx.Client, url: str, user: str, password: str) -> httpx.Response:
    slug = f"a{uuid.uuid4().hex[:10]}"
    return admin.post(
        "/v1/tenants",
        json={"slug": slug, "name": "attached", "database_url": url, "db_user": user, "db_password": password},
    )


def _refused(r: httpx.Response, code: str, field: str) -> str:
    assert r.status_code == 422, r.text
    body = r.json()
    assert (body["error"], body["details"][0]["field"]) == (code, field), body
    return str(body["message"])


def test_attach_refuses_what_is_missing_then_attaches(
    admin: httpx.Client, api: str, second_pg: PostgresParams, customer: dict[str, Any]
) -> None:
    c = customer
    # Nothing listening at that address.
    closed = f"postgresql://127.0.0.1:{quiet_ports(1)[0]}/{c['db']}"
    _refused(_attach(admin, closed, c["role"], c["password"]), "database_unreachable", "database_url")
    # The wrong password; a database that does not exist.
    _refused(_attach(admin, c["url"], c["role"], "wrong"), "authentication_failed", "db_password")
    _refused(_attach(admin, c["url"] + "x", c["role"], c["password"]), "database_not_found", "database_url")
    # The server asks for TLS from this role (as pg_hba.conf says: hostnossl ... reject).
    _require_tls_for(second_pg, c["role"])
    msg = _refused(_attach(admin, c["url"], c["role"], c["password"]), "tls_required", "database_url")
    assert "TLS" in msg
    # Asking for TLS from a server that offers none.
    r = _attach(admin, c["url"] + "?sslmode=require", c["role"], c["password"])
    _refused(r, "tls_unavailable", "database_url")
    _allow_plain_for(second_pg, c["role"])
    # No TimescaleDB in the database.
    msg = _refused(_attach(admin, c["url"], c["role"], c["password"]), "extension_missing", "database_url")
    assert "CREATE EXTENSION timescaledb" in msg
    _exec(su_dsn(second_pg, c["db"]), "CREATE EXTENSION timescaledb")
    # The role may not create the tenant schema in public.
    msg = _refused(_attach(admin, c["url"], c["role"], c["password"]), "grant_missing", "db_user")
    assert "CREATE ON SCHEMA public" in msg, msg
    # Nothing was made in the database by the refusals.
    tables = "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'"
    assert db_fetch(su_dsn(second_pg, c["db"]), tables)[0]["n"] == 0

    # The grants README names, and nothing more.
    _exec(su_dsn(second_pg, c["db"]), f"GRANT USAGE, CREATE ON SCHEMA public TO {c['role']}")
    r = _attach(admin, c["url"], c["role"], c["password"])
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["attached"] is True and created["server"] is None
    assert c["password"] not in admin.get(f"/v1/tenants/{created['slug']}").text
    # Its writer writes there.
    _push_one(api, created)
    rows = "SELECT count(*) AS n FROM scada_readings WHERE value = 7.5"
    wait_for(lambda: db_fetch(su_dsn(second_pg, c["db"]), rows)[0]["n"] == 1, 60, "reading landed in attached db")
    # The same database cannot be attached twice.
    r = _attach(admin, c["url"], c["role"], c["password"])
    assert r.status_code == 409 and r.json()["details"][0]["field"] == "database_url", r.text
    # A purge detaches: the customer's database and its data stay.
    assert admin.delete(f"/v1/tenants/{created['slug']}", params={"purge": "true"}).status_code == 204
    assert _has_db(su_dsn(second_pg), c["db"])
    assert db_fetch(su_dsn(second_pg, c["db"]), rows)[0]["n"] == 1


def _hba(pg: PostgresParams) -> Path:
    return pg.data_dir / "pg_hba.conf"


def _require_tls_for(pg: PostgresParams, role: str) -> None:
    path = _hba(pg)
    path.write_text(f"hostnossl all {role} 0.0.0.0/0 reject\n" + path.read_text())
    db_fetch(su_dsn(pg), "SELECT pg_reload_conf()")


def _allow_plain_for(pg: PostgresParams, role: str) -> None:
    path = _hba(pg)
    path.write_text("".join(ln for ln in path.read_text().splitlines(True) if f" {role} " not in ln))
    db_fetch(su_dsn(pg), "SELECT pg_reload_conf()")


def test_too_old_timescaledb_is_named() -> None:
    """Only one TimescaleDB version is installed here, so the version rule is checked on its own."""
    from ingest.core.errors import DatabaseRefused
    from ingest.store.dbcheck import check_version

    check_version("2.19.3", "database_url", "db")
    check_version("2.13.0-dev", "database_url", "db")
    with pytest.raises(DatabaseRefused) as e:
        check_version("2.12.2", "database_url", "db")
    assert (e.value.code, e.value.field) == ("extension_too_old", "database_url")
    assert "2.13 or newer" in e.value.message


def test_a_tenant_database_away_does_not_stop_the_cluster_starting(
    admin: httpx.Client, stack: Settings, second_pg: PostgresParams
) -> None:
    """``migrate_all`` runs at every start (`up`, the API's start): one tenant's server down is
    reported for that tenant, and every other tenant is still brought up to date."""
    import asyncio

    from ingest.localstack.postgres import ensure_postgres, stop_postgres
    from ingest.store.master import migrate_all

    if "away" in _servers(admin):
        cleanup_server(admin, "away")
    assert _register(admin, second_pg, "away", 1).status_code == 201
    # A tenant on the server that stays up: it must still be migrated (tenants of other tests
    # are deleted by now, and a deleted tenant's database is not migrated any more).
    other = f"o{uuid.uuid4().hex[:10]}"
    r = admin.post("/v1/tenants", json={"slug": other, "name": "stays", "server": stack.db_server_name})
    assert r.status_code == 201, r.text
    try:
        slug = f"w{uuid.uuid4().hex[:10]}"
        r = admin.post("/v1/tenants", json={"slug": slug, "name": "away", "server": "away"})
        assert r.status_code == 201, r.text
        stop_postgres(second_pg)
        try:
            result = asyncio.run(migrate_all(stack))
        finally:
            ensure_postgres(second_pg)
        assert str(result["tenants"][slug]).startswith("not reached"), result["tenants"][slug]
        others = [v for k, v in result["tenants"].items() if k != slug]
        assert other in result["tenants"] and all(isinstance(v, list) for v in others), result
        # Back: the next start migrates it like the rest.
        assert isinstance(asyncio.run(migrate_all(stack))["tenants"][slug], list)
    finally:
        cleanup_server(admin, "away")
        admin.delete(f"/v1/tenants/{other}")
