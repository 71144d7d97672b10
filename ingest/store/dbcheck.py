"""Checks a PostgreSQL server or database before the project puts a tenant there, and says exactly
what is missing when it cannot: ``DatabaseRefused`` with a code (``database_unreachable``,
``tls_required``, ``tls_unavailable``, ``authentication_failed``, ``database_not_found``,
``extension_missing``, ``extension_too_old``, ``grant_missing``) and the request field it concerns.

Used for registered database servers (an admin role that makes databases and roles) and for
attached databases (a customer's role that must be able to create the tenant schema in
``public``). Nothing here puts a password into a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode

import asyncpg

from ingest.core.errors import DatabaseRefused

# The tenant migrations use by_range() dimension builders (TimescaleDB 2.13).
MIN_TIMESCALEDB = (2, 13)
CONNECT_TIMEOUT_S = 10.0


def version_tuple(v: str) -> tuple[int, ...]:
    """'2.19.3' -> (2, 19, 3); a suffix such as '-dev' is ignored."""
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def make_dsn(host: str, port: int, database: str, user: str, password: str, tls_mode: str) -> str:
    query = urlencode({"sslmode": tls_mode}) if tls_mode else ""
    return f"postgresql://{quote(user)}:{quote(password)}@{host}:{port}/{quote(database)}" + (
        f"?{query}" if query else ""
    )


async def connect_checked(dsn: str, *, field: str, password_field: str, where: str) -> asyncpg.Connection:
    """Connect, or refuse naming what stopped the connection. ``where`` is host:port/db for the
    message (never the DSN: it holds the password)."""
    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except asyncpg.InvalidAuthorizationSpecificationError as e:
        text = str(e)
        if "no encryption" in text or "SSL off" in text:
            raise DatabaseRefused(
                "tls_required",
                field,
                f"{where} accepts only TLS connections: set sslmode=require (or verify-full)",
            ) from e
        raise DatabaseRefused("authentication_failed", password_field, f"{where} refused the role: {text}") from e
    except asyncpg.InvalidPasswordError as e:
        raise DatabaseRefused("authentication_failed", password_field, f"{where}: wrong user or password") from e
    except asyncpg.InvalidCatalogNameError as e:
        raise DatabaseRefused("database_not_found", field, f"{where}: no such database") from e
    except ConnectionError as e:
        if "SSL" in str(e):
            raise DatabaseRefused(
                "tls_unavailable", field, f"{where} does not offer TLS, which sslmode asks for"
            ) from e
        raise DatabaseRefused(
            "database_unreachable", field, f"{where} is not reachable: {type(e).__name__}"
        ) from e
    except (TimeoutError, OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as e:
        raise DatabaseRefused(
            "database_unreachable", field, f"{where} is not reachable: {type(e).__name__}"
        ) from e


@dataclass(frozen=True)
class Extension:
    installed: str | None  # version installed in this database
    available: str | None  # default version the server offers


async def timescaledb(conn: asyncpg.Connection) -> Extension:
    r = await conn.fetchrow(
        "SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    return Extension(r["installed_version"] if r else None, r["default_version"] if r else None)


def check_version(version: str, field: str, where: str) -> None:
    if version_tuple(version) < MIN_TIMESCALEDB:
        need = ".".join(map(str, MIN_TIMESCALEDB))
        raise DatabaseRefused(
            "extension_too_old",
            field,
            f"{where}: TimescaleDB {version} is installed; {need} or newer is needed "
            "(ALTER EXTENSION timescaledb UPDATE)",
        )


async def check_server_admin(conn: asyncpg.Connection, user_field: str, where: str) -> Extension:
    """A registered server: its admin role makes databases and roles; TimescaleDB is offered."""
    r = await conn.fetchrow(
        "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    )
    if not (r["rolsuper"] or (r["rolcreatedb"] and r["rolcreaterole"])):
        raise DatabaseRefused(
            "grant_missing", user_field, f"{where}: the admin role needs CREATEDB and CREATEROLE (or superuser)"
        )
    ext = await timescaledb(conn)
    if ext.available is None:
        raise DatabaseRefused("extension_missing", "host", f"{where}: the server has no TimescaleDB extension")
    check_version(ext.available, "host", where)
    return ext


async def check_attachable(conn: asyncpg.Connection, field: str, where: str) -> str:
    """An attached database: TimescaleDB installed (new enough) and the role may create the
    tenant schema in ``public``. Returns the extension's version."""
    ext = await timescaledb(conn)
    if ext.installed is None:
        hint = (
            "a superuser runs CREATE EXTENSION timescaledb in it"
            if ext.available
            else "the server does not offer the extension at all"
        )
        raise DatabaseRefused("extension_missing", field, f"{where}: TimescaleDB is not installed ({hint})")
    check_version(ext.installed, field, where)
    missing = [
        what
        for what, ok in (
            ("USAGE ON SCHEMA public", "has_schema_privilege('public', 'USAGE')"),
            ("CREATE ON SCHEMA public", "has_schema_privilege('public', 'CREATE')"),
        )
        if not await conn.fetchval(f"SELECT {ok}")
    ]
    if missing:
        raise DatabaseRefused(
            "grant_missing",
            "db_user",
            f"{where}: the role lacks {', '.join(missing)} (grant it, or make the role the schema's owner)",
        )
    # Tables the project would migrate that exist but belong to another role: the migration
    # could not alter them.
    foreign = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT pg_has_role(c.relowner, 'USAGE') "
        "AND c.relname IN ('schema_migrations', 'scada_readings', 'tag_mappings', 'ingest_ledger') "
        "ORDER BY 1"
    )
    if foreign:
        names = ", ".join(r["relname"] for r in foreign)
        raise DatabaseRefused("grant_missing", "db_user", f"{where}: tables {names} belong to another role")
    return str(ext.installed)
