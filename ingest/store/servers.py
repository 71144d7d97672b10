"""Database servers as a resource: where tenant databases are made, and how one is made or dropped.

The cluster admin registers servers (host, port, an admin role that makes databases and roles, its
password stored encrypted like tenants' database passwords, TLS mode, capacity hint); ``scada-ingest
up`` registers the cluster's own server (``migrate_all``). Each server's TimescaleDB version and
edition are detected at registration, in a scratch database made and dropped for it, because the
edition setting is readable only where the extension is installed.

Placement: a new tenant goes to the server named in the request, or else to the one with the most
room, room being ``capacity_hint`` minus the tenant databases on it that are not purged (a soft
deleted tenant still holds its database). Ties go to the server registered first. The hint is a
hint: when every server is full, the least overfull one is still chosen.
"""

from __future__ import annotations

import secrets as pysecrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ingest.core.errors import ServerInUse, ServerNotFound, TenantNotFound
from ingest.core.translate import translated_methods
from ingest.store.dbcheck import check_server_admin, connect_checked, make_dsn
from ingest.store.secrets import SecretBox

_SERVER_COLS = (
    "s.id, s.name, s.host, s.port, s.admin_user, s.tls_mode, s.capacity_hint, s.timescaledb_edition, "
    "s.timescaledb_version, s.created_at, "
    "(SELECT count(*) FROM tenants t WHERE t.server_id = s.id AND t.purged_at IS NULL) AS tenants"
)


@dataclass(frozen=True)
class DbServer:
    """A registered database server (never with its password)."""

    id: str
    name: str
    host: str
    port: int
    admin_user: str
    tls_mode: str
    capacity_hint: int
    timescaledb_edition: str | None
    timescaledb_version: str | None
    created_at: datetime
    tenants: int

    @property
    def room(self) -> int:
        return self.capacity_hint - self.tenants

    def tenant_url(self, database: str) -> str:
        """A tenant database's URL on this server, without credentials."""
        query = "" if self.tls_mode == "prefer" else f"?sslmode={self.tls_mode}"
        return f"postgresql://{self.host}:{self.port}/{database}{query}"


def _server(r: asyncpg.Record) -> DbServer:
    d = dict(r)
    d["id"] = str(d["id"])
    return DbServer(**d)


AdminDsn = Callable[[str], str]  # database name -> the admin role's DSN for it on one server


async def _detect_edition(admin_dsn: AdminDsn) -> str | None:
    """The server's TimescaleDB license (apache / timescale), read in a scratch database."""
    scratch = f"scada_probe_{pysecrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_dsn("postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{scratch}"')
        try:
            probe = await asyncpg.connect(admin_dsn(scratch))
            try:
                await probe.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                edition = await probe.fetchval("SELECT current_setting('timescaledb.license', true)")
            finally:
                await probe.close()
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    finally:
        await conn.close()
    return str(edition) if edition else None


async def provision_database(admin_dsn: AdminDsn, db: str, role: str, password: str) -> None:
    """Make (or take over) the role and the database it owns, with TimescaleDB installed; only
    the role (and the server's superusers) may connect."""
    admin = await asyncpg.connect(admin_dsn("postgres"))
    try:
        # DDL takes no parameters; format() quotes the identifier and the literal server-side.
        exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        verb = "ALTER" if exists else "CREATE"
        stmt = await admin.fetchval(
            f"SELECT format('{verb} ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)", role, password
        )
        await admin.execute(stmt)
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db):
            await admin.execute(f'CREATE DATABASE "{db}" OWNER "{role}"')
        await admin.execute(f'REVOKE ALL ON DATABASE "{db}" FROM PUBLIC')
    finally:
        await admin.close()
    # TimescaleDB is not a trusted extension: the admin installs it, the tenant role owns the rest.
    su = await asyncpg.connect(admin_dsn(db))
    try:
        await su.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    finally:
        await su.close()


async def drop_database(admin_dsn: AdminDsn, db: str, role: str | None) -> None:
    admin = await asyncpg.connect(admin_dsn("postgres"))
    try:
        # DDL takes no parameters; format() quotes the identifiers server-side.
        await admin.execute(
            await admin.fetchval("SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)", db)
        )
        if role is not None:
            await admin.execute(await admin.fetchval("SELECT format('DROP ROLE IF EXISTS %I', $1::text)", role))
    finally:
        await admin.close()


@translated_methods
class DbServers:
    """The server half of ``MasterStore`` (which supplies ``pool`` and ``box``)."""

    pool: asyncpg.Pool
    box: SecretBox

    async def list_servers(self) -> list[DbServer]:
        rows = await self.pool.fetch(f"SELECT {_SERVER_COLS} FROM db_servers s ORDER BY s.created_at, s.name")
        return [_server(r) for r in rows]

    async def get_server(self, ref: str) -> DbServer:
        """By name or id."""
        r = await self.pool.fetchrow(
            f"SELECT {_SERVER_COLS} FROM db_servers s WHERE s.name = $1 OR s.id::text = $1", ref
        )
        if r is None:
            raise ServerNotFound(f"database server {ref!r} not registered")
        return _server(r)

    async def server_admin_dsn(self, server: DbServer) -> AdminDsn:
        enc = await self.pool.fetchval("SELECT admin_password_enc FROM db_servers WHERE id = $1::uuid", server.id)
        password = self.box.decrypt(enc)
        return lambda db: make_dsn(server.host, server.port, db, server.admin_user, password, server.tls_mode)

    async def register_server(
        self,
        name: str,
        host: str,
        port: int,
        admin_user: str,
        admin_password: str,
        tls_mode: str = "prefer",
        capacity_hint: int = 500,
        *,
        update: bool = False,
    ) -> DbServer:
        """Check the server (reachable, admin role may make databases and roles, TimescaleDB
        offered), detect its edition, record it. ``update``: a server at the same address is
        re-registered in place (``scada-ingest up`` does this every start)."""
        same = await self.pool.fetchrow("SELECT name FROM db_servers WHERE host = $1 AND port = $2", host, port)
        if same is not None and not update:
            raise ServerInUse("host", f"{host}:{port} is registered already as {same['name']!r}")
        if same is None and await self.pool.fetchval("SELECT 1 FROM db_servers WHERE name = $1", name):
            raise ServerInUse("name", f"a database server named {name!r} exists already")

        def dsn(db: str) -> str:
            return make_dsn(host, port, db, admin_user, admin_password, tls_mode)

        where = f"{host}:{port}"
        conn = await connect_checked(dsn("postgres"), field="host", password_field="admin_password", where=where)
        try:
            ext = await check_server_admin(conn, "admin_user", where)
        finally:
            await conn.close()
        edition = await _detect_edition(dsn)
        await self.pool.execute(
            """INSERT INTO db_servers (name, host, port, admin_user, admin_password_enc, tls_mode,
                                       capacity_hint, timescaledb_edition, timescaledb_version)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (host, port) DO UPDATE SET admin_user = excluded.admin_user,
                   admin_password_enc = excluded.admin_password_enc, tls_mode = excluded.tls_mode,
                   timescaledb_edition = excluded.timescaledb_edition,
                   timescaledb_version = excluded.timescaledb_version""",
            same["name"] if same else name,
            host,
            port,
            admin_user,
            self.box.encrypt(admin_password),
            tls_mode,
            capacity_hint,
            edition,
            ext.available,
        )
        return await self.get_server(same["name"] if same else name)

    async def remove_server(self, ref: str) -> DbServer:
        """Forget a server; refused while any tenant database (not purged) lives there."""
        server = await self.get_server(ref)
        if server.tenants:
            raise ServerInUse(
                "server",
                f"{server.name!r} still holds {server.tenants} tenant databases (move or purge them first)",
            )
        async with self.pool.acquire() as conn, conn.transaction():
            # Purged tenants' rows stay for the audit log; they no longer point at the server.
            await conn.execute("UPDATE tenants SET server_id = NULL WHERE server_id = $1::uuid", server.id)
            await conn.execute("DELETE FROM db_servers WHERE id = $1::uuid", server.id)
        return server

    async def tenant_location(self, tenant_id: str) -> dict[str, Any]:
        """Where a live tenant's database is: id, slug, server_id, attached, database_url, db_user."""
        r = await self.pool.fetchrow(
            "SELECT id, slug, status, server_id, attached, database_url, db_user FROM tenants "
            "WHERE id = $1::uuid AND deleted_at IS NULL",
            tenant_id,
        )
        if r is None:
            raise TenantNotFound(f"tenant {tenant_id!r} not found")
        return dict(r)

    async def switch_database(self, tenant_id: str, server: DbServer, url: str, role: str, password: str) -> None:
        """Point the tenant at its moved database (one statement: readers see old or new)."""
        await self.pool.execute(
            "UPDATE tenants SET database_url = $2, db_user = $3, db_password_enc = $4, server_id = $5::uuid, "
            "attached = false, timescaledb_edition = coalesce($6, timescaledb_edition) WHERE id = $1::uuid",
            tenant_id,
            url,
            role,
            self.box.encrypt(password),
            server.id,
            server.timescaledb_edition,
        )

    async def place(self, ref: str | None) -> DbServer:
        """The server a new tenant database goes to (module docstring)."""
        if ref is not None:
            return await self.get_server(ref)
        servers = await self.list_servers()
        if not servers:
            raise ServerNotFound("no database server is registered (scada-ingest migrate registers the local one)")
        return max(servers, key=lambda s: (s.room, -s.created_at.timestamp()))
