"""Attach: a tenant whose database its owner gives (a URL and a role), checked before use.

The role needs no superuser and no CREATEDB: TimescaleDB installed in the database by its owner
(2.13 or newer), and USAGE and CREATE on schema ``public`` (or ownership of it), so the tenant
migrations can create their tables and hypertables, which the role then owns. README, "Attaching a
database", gives the statements. Every refusal names the field and what is missing
(ingest.store.dbcheck).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from ingest.core.errors import DatabaseRefused
from ingest.store.dbcheck import check_attachable, connect_checked

TLS_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class AttachUrl:
    stored: str  # what the master keeps: no credentials
    dsn: str  # with the role and password, for connecting now


def parse(database_url: str, user: str, password: str) -> AttachUrl:
    """postgresql://host[:port]/database[?sslmode=...], without credentials in it."""
    field = "database_url"
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise DatabaseRefused("validation_error", field, "must be a postgresql:// URL")
    if parts.password is not None or parts.username is not None:
        raise DatabaseRefused("validation_error", field, "give the role and password in db_user and db_password")
    try:
        port = parts.port or 5432
    except ValueError as e:
        raise DatabaseRefused("validation_error", field, "the port is not a number in 1..65535") from e
    db = parts.path.lstrip("/")
    if not parts.hostname or not db or "/" in db:
        raise DatabaseRefused("validation_error", field, "needs a host and a database name")
    query = dict(parse_qsl(parts.query))
    if set(query) - {"sslmode"} or query.get("sslmode", "prefer") not in TLS_MODES:
        raise DatabaseRefused(
            "validation_error", field, f"the only option taken is sslmode ({', '.join(TLS_MODES)})"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    q = f"?{urlencode(query)}" if query else ""
    stored = f"postgresql://{host}:{port}/{db}{q}"
    dsn = f"postgresql://{quote(user)}:{quote(password)}@{host}:{port}/{db}{q}"
    return AttachUrl(stored, dsn)


async def check_and_normalise(database_url: str, user: str, password: str) -> AttachUrl:
    """Parse, connect as the customer's role, check extension and grants (nothing changed yet)."""
    url = parse(database_url, user, password)
    where = urlsplit(url.stored).netloc + urlsplit(url.stored).path
    conn = await connect_checked(url.dsn, field="database_url", password_field="db_password", where=where)
    try:
        await check_attachable(conn, "database_url", where)
    finally:
        await conn.close()
    return url
