"""The master database: tenants, where their databases live, API credentials, audit log.

Creating a tenant provisions a database of its own with a login role of its own (the only role,
besides the cluster superuser, allowed to connect to it), installs TimescaleDB there and migrates it.
"""

from __future__ import annotations

import json
import logging
import secrets as pysecrets
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from ingest.core.config import Settings
from ingest.core.errors import (
    Conflict,
    DatabaseRefused,
    InvalidRegistration,
    MigrationError,
    ServerNotFound,
    StorageUnavailable,
    TenantExists,
    TenantNotFound,
)
from ingest.core.models import Tenant, TenantStatus
from ingest.core.translate import translated, translated_methods
from ingest.store import migrations
from ingest.store.attach import check_and_normalise
from ingest.store.credentials import ALL_TENANT_SCOPES, Credentials
from ingest.store.dbcheck import make_dsn
from ingest.store.secrets import SecretBox
from ingest.store.servers import DbServers, drop_database, provision_database

log = logging.getLogger(__name__)


def _tenant(r: asyncpg.Record) -> Tenant:
    return Tenant(
        str(r["id"]),
        r["slug"],
        r["name"],
        TenantStatus(r["status"]),
        r["database_url"],
        r["max_tags"],
        r["max_connections"],
        r.get("server_name"),
        bool(r.get("attached", False)),
    )


_SERVER_NAME = "(SELECT name FROM db_servers WHERE id = server_id) AS server_name"
_WITH_SERVER = "SELECT t.*, s.name AS server_name FROM tenants t LEFT JOIN db_servers s ON s.id = t.server_id"


async def _ensure_database(settings: Settings, name: str) -> None:
    conn = await asyncpg.connect(settings.dsn("postgres"))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _migrate_new(dsn: str, retention_days: int | None) -> str | None:
    """Apply the tenant migrations as the tenant's role; the database's TimescaleDB edition."""
    tconn = await asyncpg.connect(dsn)
    try:
        await migrations.apply(tconn, "tenant")
        if retention_days is not None:  # the tenant database holds its read settings
            await tconn.execute(
                "UPDATE tenant_meta SET value = CASE key WHEN 'raw_retention_days' THEN $1 "
                "ELSE greatest(value::int, $1::int)::text END "
                "WHERE key IN ('raw_retention_days', 'rollup_retention_days')",
                str(retention_days),
            )
        edition = await tconn.fetchval("SELECT value FROM tenant_meta WHERE key = 'timescaledb_edition'")
        return str(edition) if edition else None
    finally:
        await tconn.close()


@translated
async def migrate_master(settings: Settings) -> list[str]:
    """Create the master database if needed and apply its migrations."""
    await _ensure_database(settings, settings.master_db)
    conn = await asyncpg.connect(settings.master_dsn)
    try:
        done = await migrations.apply(conn, "master")
        # The license setting is readable once the extension is installed in the database.
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        edition = await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
        await conn.execute(
            "INSERT INTO cluster_info (key, value) VALUES ('timescaledb_edition', $1) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            edition or "none",
        )
        return done
    finally:
        await conn.close()


@translated_methods
class MasterStore(Credentials, DbServers):
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.box = SecretBox(settings.master_key)

    @classmethod
    async def connect(cls, settings: Settings) -> MasterStore:
        try:
            pool = await asyncpg.create_pool(settings.master_dsn, min_size=1, max_size=8)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise StorageUnavailable(f"master database unreachable: {type(e).__name__}") from e
        return cls(pool, settings)

    async def close(self) -> None:
        await self.pool.close()

    # -- tenants ---------------------------------------------------------------------------
    async def list_tenants(self, status: TenantStatus | None = None) -> list[Tenant]:
        rows = await self.pool.fetch(
            f"{_WITH_SERVER} WHERE t.deleted_at IS NULL AND ($1::text IS NULL OR t.status = $1) ORDER BY t.slug",
            status.value if status else None,
        )
        return [_tenant(r) for r in rows]

    async def get_tenant(self, ref: str) -> Tenant:
        """By id or slug."""
        r = await self.pool.fetchrow(
            f"{_WITH_SERVER} WHERE t.deleted_at IS NULL AND (t.slug = $1 OR t.id::text = $1)", ref
        )
        if r is None:
            raise TenantNotFound(f"tenant {ref!r} not found")
        return _tenant(r)

    async def get_deleted_tenant(self, ref: str) -> Tenant:
        """A tenant deleted and not purged yet, by id or slug (its database is still there)."""
        r = await self.pool.fetchrow(
            f"{_WITH_SERVER} WHERE t.deleted_at IS NOT NULL AND t.purged_at IS NULL "
            "AND (t.slug = $1 OR t.id::text = $1)",
            ref,
        )
        if r is None:
            raise TenantNotFound(f"tenant {ref!r} not found")
        return _tenant(r)

    async def tenant_dsn(self, tenant_id: str) -> str:
        """The tenant database's URL with its decrypted password (kept in memory only)."""
        r = await self.pool.fetchrow(
            "SELECT database_url, db_user, db_password_enc FROM tenants WHERE id = $1::uuid",
            tenant_id,
        )
        if r is None:
            raise TenantNotFound(f"tenant {tenant_id!r} not found")
        parts = urlsplit(str(r["database_url"]))
        host = parts.hostname or ""
        netloc = f"{quote(r['db_user'])}:{quote(self.box.decrypt(r['db_password_enc']))}@{host}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    async def set_status(self, tenant_id: str, status: TenantStatus) -> None:
        done = await self.pool.execute(
            "UPDATE tenants SET status = $2 WHERE id = $1::uuid AND deleted_at IS NULL",
            tenant_id,
            status.value,
        )
        if done.endswith(" 0"):
            raise TenantNotFound(f"tenant {tenant_id!r} not found")

    async def create_tenant(
        self, slug: str, name: str, retention_days: int | None = None, server: str | None = None
    ) -> tuple[Tenant, str]:
        """Provision database, role and schema on the named server or the one with the most room
        (ingest.store.servers); return the tenant and its first admin API key."""
        await self._slug_free(slug)
        try:
            place = await self.place(server)
        except ServerNotFound as e:
            if server is None:
                raise
            raise InvalidRegistration("server", str(e)) from e
        db, role = f"scada_t_{slug}", f"scada_t_{slug}"
        password = pysecrets.token_urlsafe(24)
        admin_dsn = await self.server_admin_dsn(place)
        await provision_database(admin_dsn, db, role, password)
        tdsn = make_dsn(place.host, place.port, db, role, password, place.tls_mode)
        edition = await _migrate_new(tdsn, retention_days)
        return await self._insert_tenant(
            slug, name, place.tenant_url(db), role, password, edition, retention_days, place.id, attached=False
        )

    async def attach_tenant(
        self, slug: str, name: str, database_url: str, user: str, password: str, retention_days: int | None = None
    ) -> tuple[Tenant, str]:
        """A tenant in a database its owner gives (ingest.store.attach checks it first)."""
        await self._slug_free(slug)
        url = await check_and_normalise(database_url, user, password)
        taken = await self.pool.fetchval(
            "SELECT slug FROM tenants WHERE database_url = $1 AND purged_at IS NULL", url.stored
        )
        if taken is not None:
            raise Conflict("database_url", "another tenant uses that database already")
        try:
            edition = await _migrate_new(url.dsn, retention_days)
        except MigrationError as e:
            raise DatabaseRefused("migration_failed", "database_url", str(e)) from e
        return await self._insert_tenant(
            slug, name, url.stored, user, password, edition, retention_days, None, attached=True
        )

    async def _slug_free(self, slug: str) -> None:
        deleted = await self.pool.fetchval("SELECT deleted_at IS NOT NULL FROM tenants WHERE slug = $1", slug)
        if deleted is not None:
            held = " (a deleted tenant keeps its slug)" if deleted else ""
            raise TenantExists(f"slug: tenant {slug!r} exists already{held}")

    async def _insert_tenant(
        self,
        slug: str,
        name: str,
        url: str,
        role: str,
        password: str,
        edition: str | None,
        retention_days: int | None,
        server_id: str | None,
        *,
        attached: bool,
    ) -> tuple[Tenant, str]:
        async with self.pool.acquire() as conn, conn.transaction():
            r = await conn.fetchrow(
                f"""INSERT INTO tenants (slug, name, database_url, db_user, db_password_enc,
                                        timescaledb_edition, retention_days, server_id, attached)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8::uuid, $9) RETURNING *, {_SERVER_NAME}""",
                slug,
                name,
                url,
                role,
                self.box.encrypt(password),
                edition,
                retention_days,
                server_id,
                attached,
            )
            tenant = _tenant(r)
            key = await self._insert_key(conn, tenant.id, "initial admin key", ALL_TENANT_SCOPES)
        return tenant, key

    async def migrate_tenant(self, tenant_id: str) -> list[str]:
        conn = await asyncpg.connect(await self.tenant_dsn(tenant_id))
        try:
            return await migrations.apply(conn, "tenant")
        finally:
            await conn.close()

    async def update_tenant(
        self, tenant_id: str, *, name: str | None, max_tags: int | None, max_connections: int | None
    ) -> Tenant:
        """Change what is given (None keeps it)."""
        r = await self.pool.fetchrow(
            "UPDATE tenants SET name = coalesce($2, name), max_tags = coalesce($3, max_tags), "
            "max_connections = coalesce($4, max_connections) "
            f"WHERE id = $1::uuid AND deleted_at IS NULL RETURNING *, {_SERVER_NAME}",
            tenant_id,
            name,
            max_tags,
            max_connections,
        )
        if r is None:
            raise TenantNotFound(f"tenant {tenant_id!r} not found")
        return _tenant(r)

    async def delete_tenant(self, tenant_id: str) -> None:
        """Soft delete: the tenant is gone for every route and for the coordinator at once (its
        keys stop working); its database stays until ``purge_tenant``."""
        done = await self.pool.execute(
            "UPDATE tenants SET deleted_at = now() WHERE id = $1::uuid AND deleted_at IS NULL", tenant_id
        )
        if done.endswith(" 0"):
            raise TenantNotFound(f"tenant {tenant_id!r} not found")

    async def purge_tenant(self, tenant_id: str) -> str | None:
        """Drop a deleted tenant's database and role on its server (the master row stays, for the
        audit log); an attached database is only detached, never dropped. The tenant's slug (its
        Redis keys' name: ``ingest.placement.tenant_keys``), or None when it was purged already."""
        r = await self.pool.fetchrow(
            "SELECT slug, database_url, db_user, deleted_at, purged_at, server_id, attached "
            "FROM tenants WHERE id = $1::uuid",
            tenant_id,
        )
        if r is None or r["deleted_at"] is None:
            raise TenantNotFound(f"no deleted tenant {tenant_id!r}")
        if r["purged_at"] is not None:
            return None
        if not r["attached"] and r["server_id"] is not None:
            db = urlsplit(str(r["database_url"])).path.lstrip("/")
            admin_dsn = await self.server_admin_dsn(await self.get_server(str(r["server_id"])))
            await drop_database(admin_dsn, db, r["db_user"])
        await self.pool.execute("UPDATE tenants SET purged_at = now() WHERE id = $1::uuid", tenant_id)
        return str(r["slug"])

    async def deleted_among(self, tenant_ids: list[str]) -> list[str]:
        """Which of these tenants are deleted (their writers are retired)."""
        rows = await self.pool.fetch(
            "SELECT id FROM tenants WHERE deleted_at IS NOT NULL AND id = ANY($1::uuid[])", tenant_ids
        )
        return [str(r["id"]) for r in rows]

    async def purge_due(self, grace_days: float) -> list[tuple[str, str]]:
        """Purge every tenant deleted more than ``grace_days`` ago; their ids and slugs."""
        ids = [
            str(x["id"])
            for x in await self.pool.fetch(
                "SELECT id FROM tenants WHERE purged_at IS NULL "
                "AND deleted_at < now() - make_interval(secs => $1)",
                grace_days * 86_400,
            )
        ]
        purged = [(i, await self.purge_tenant(i)) for i in ids]
        return [(i, slug) for i, slug in purged if slug is not None]

    async def set_retention_days(self, tenant_id: str, days: int) -> None:
        """The raw retention the master row reports (the tenant database holds the one applied)."""
        await self.pool.execute("UPDATE tenants SET retention_days = $2 WHERE id = $1::uuid", tenant_id, days)

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    async def audit(self, actor: str, tenant_id: str | None, action: str, detail: dict[str, Any]) -> None:
        await self.audit_many([(actor, tenant_id, action, detail)])

    async def audit_many(self, rows: list[tuple[str, str | None, str, dict[str, Any]]]) -> None:
        """(actor, tenant_id, action, detail) rows in one statement, in order (one commit)."""
        await self.pool.execute(
            "INSERT INTO audit_log (actor, tenant_id, action, detail) "
            "SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::jsonb[])",
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [json.dumps(r[3]) for r in rows],
        )

    # -- coordinator state -------------------------------------------------------------------
    async def load_assignments(self) -> dict[str, tuple[str, str]]:
        rows = await self.pool.fetch("SELECT connection_id, slot, fingerprint FROM coordinator_assignments")
        return {str(r["connection_id"]): (r["slot"], r["fingerprint"]) for r in rows}

    async def save_assignments(self, rows: dict[str, tuple[str, str, str]]) -> None:
        """Replace the persisted assignment: connection_id -> (tenant_id, slot, fingerprint)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM coordinator_assignments")
            await conn.executemany(
                "INSERT INTO coordinator_assignments (connection_id, tenant_id, slot, fingerprint) "
                "VALUES ($1::uuid, $2::uuid, $3, $4)",
                [(cid, t, s, f) for cid, (t, s, f) in rows.items()],
            )


async def migrate_all(settings: Settings) -> dict[str, Any]:
    """Master migrations, then every tenant's; the admin key's hash ensured; the cluster's own
    database server registered (idempotent: re-registered in place at every start)."""
    applied_master = await migrate_master(settings)
    master = await MasterStore.connect(settings)
    try:
        local = await master.register_server(
            settings.db_server_name,
            settings.pg_host,
            settings.pg_port,
            settings.pg_superuser,
            settings.pg_password,
            "disable" if settings.pg_host in ("127.0.0.1", "localhost", "::1") else "prefer",
            settings.db_capacity_hint,
            update=True,
        )
        # Tenants made before servers were a resource live on the cluster's own server.
        await master.pool.execute(
            "UPDATE tenants SET server_id = $1::uuid "
            "WHERE server_id IS NULL AND NOT attached AND purged_at IS NULL",
            local.id,
        )
        tenants: dict[str, list[str] | str] = {}
        for t in await master.list_tenants():
            try:
                tenants[t.slug] = await master.migrate_tenant(t.id)
            except StorageUnavailable as e:
                # One tenant's database away (an attached server down) must not keep the cluster
                # from starting; its writer applies the migrations when it reaches it.
                log.warning("tenant %s not migrated now (its writer will): %s", t.slug, e)
                tenants[t.slug] = f"not reached: {e}"
        await master.ensure_admin_key(settings.admin_key)
    finally:
        await master.close()
    return {"master": applied_master, "tenants": tenants}
