"""Moving a tenant's database to another server without losing or duplicating a reading.

1. A database and role are made on the target server and migrated (the source is migrated first,
   so both are at the same version).
2. The tenant's writer is held (``WriterControl.hold``): from then on its batches go to the
   durable spool, still acknowledged to their senders, so readings keep arriving; its rollup and
   retention work stops. Nothing of ours writes to the source any more.
3. Every table of the tenant schema is copied (binary COPY, streamed), parents before the
   tables whose foreign keys point at them, and the sequences set to where they were.
4. Verified: row counts per table, and checksums (the sum of a 64-bit hash of each row's text)
   per day for hypertables and per table for the rest. Any difference stops the move.
5. The master row switches to the new database; the writer is released and drains its spool
   there, in order. The ledger was copied with the rows, so a spooled batch that had been
   committed before the hold is recognised and skipped, not written twice.

While the copy runs, the source database is read-only (set by the server's admin, every open
session ended so none keeps writing): a registration made through the API meanwhile is answered
503 and retried, rather than written where the copy would miss it. It stays read-only after the
move. If anything fails before the switch, the half-made target database is dropped, the source
made writable again and the writer released onto it, where it drains as after an outage. The
source database is kept unless ``drop_source`` asks otherwise (an attached one is never dropped).
"""

from __future__ import annotations

import asyncio
import secrets as pysecrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import asyncpg

from ingest.core.errors import Conflict, StorageError
from ingest.store import migrations
from ingest.store.dbcheck import make_dsn
from ingest.store.servers import AdminDsn, DbServer, drop_database, provision_database

PUBLIC_TABLES = """
    SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
      AND c.relname <> 'schema_migrations' ORDER BY 1"""
FOREIGN_KEYS = """
    SELECT conrelid::regclass::text AS child, confrelid::regclass::text AS parent FROM pg_constraint
    WHERE contype = 'f' AND connamespace = 'public'::regnamespace"""
COLUMNS = """
    SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0
      AND NOT attisdropped AND attgenerated = '' ORDER BY attnum"""
TIME_COLUMNS = """
    SELECT hypertable_name, column_name FROM timescaledb_information.dimensions
    WHERE hypertable_schema = 'public' AND dimension_type = 'Time'"""


class WriterControl(Protocol):
    """The tenant's writer, as the move needs it (the actor, through whoever hosts the call)."""

    async def hold(self) -> dict[str, Any]: ...

    async def release(self) -> dict[str, Any]: ...


@dataclass
class MoveReport:
    source: str
    target: str
    rows: dict[str, int] = field(default_factory=dict)  # per table, verified
    days_verified: int = 0  # per-day checksums compared over the hypertables
    held_s: float = 0.0  # how long the writer spooled
    spooled_rows_at_release: int = 0
    seconds: float = 0.0
    source_dropped: bool = False

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def _ordered(tables: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """Tables with every foreign key's parent before its child."""
    out: list[str] = []
    left = set(tables)
    while left:
        ready = sorted(t for t in left if not any(c == t and p in left and p != t for c, p in edges))
        if not ready:
            raise StorageError(f"foreign keys form a cycle among {sorted(left)}")
        out += ready
        left -= set(ready)
    return out


async def _copy_table(src: asyncpg.Connection, dst: asyncpg.Connection, table: str, cols: list[str]) -> None:
    """Stream one table from source to target in binary COPY, a bounded queue between them."""
    q: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=32)

    async def put(chunk: bytes) -> None:
        await q.put(chunk)

    async def produce() -> None:
        try:
            col_list = ", ".join(f'"{c}"' for c in cols)
            await src.copy_from_query(f'SELECT {col_list} FROM "{table}"', output=put, format="binary")
        finally:
            await q.put(None)

    async def chunks() -> AsyncIterator[bytes]:
        while (chunk := await q.get()) is not None:
            yield chunk

    producer = asyncio.create_task(produce())
    try:
        await dst.copy_to_table(table, source=chunks(), columns=cols, format="binary")
    finally:
        if not producer.done():
            producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
    producer.result()


async def _fingerprint(conn: asyncpg.Connection, table: str, time_col: str | None) -> dict[Any, tuple[int, int]]:
    """Rows and the sum of a 64-bit hash of each row's text: per day for a hypertable, else whole."""
    bucket = f"time_bucket('1 day', x.\"{time_col}\")" if time_col else "0"
    rows = await conn.fetch(
        f"SELECT {bucket} AS k, count(*) AS n, coalesce(sum(hashtextextended(x::text, 0)::numeric), 0) AS h "
        f'FROM "{table}" x GROUP BY 1'
    )
    return {r["k"]: (int(r["n"]), int(r["h"])) for r in rows}


async def set_read_only(admin_dsn: AdminDsn, db: str, read_only: bool) -> None:
    """Make a database read-only for every new session (or writable again) and end the open ones,
    so every pool reconnects under the new default."""
    conn = await asyncpg.connect(admin_dsn("postgres"))
    try:
        action = "SET default_transaction_read_only = on" if read_only else "RESET default_transaction_read_only"
        await conn.execute(f'ALTER DATABASE "{db}" {action}')
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            db,
        )
    finally:
        await conn.close()


async def copy_and_verify(source_dsn: str, target_dsn: str, report: MoveReport) -> None:
    src = await asyncpg.connect(source_dsn)
    dst = await asyncpg.connect(target_dsn)
    try:
        for c in (src, dst):  # row text (timestamps) must not depend on the session's zone
            await c.execute("SET TimeZone = 'UTC'")
        tables = [r["relname"] for r in await src.fetch(PUBLIC_TABLES)]
        target_tables = {r["relname"] for r in await dst.fetch(PUBLIC_TABLES)}
        if set(tables) - target_tables:
            raise StorageError(f"target lacks tables {sorted(set(tables) - target_tables)}")
        edges = [(r["child"], r["parent"]) for r in await src.fetch(FOREIGN_KEYS)]
        order = _ordered(tables, edges)
        time_cols = {r["hypertable_name"]: r["column_name"] for r in await src.fetch(TIME_COLUMNS)}
        async with dst.transaction():
            # The migrations' seed rows (tenant_meta...) give way to the source's.
            await dst.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in order))
            for t in order:
                cols = [r["attname"] for r in await src.fetch(COLUMNS, f'public."{t}"')]
                await _copy_table(src, dst, t, cols)
            for r in await src.fetch(
                "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' "
                "AND last_value IS NOT NULL"
            ):
                await dst.execute(
                    "SELECT setval($1::regclass, $2)", f'public."{r["sequencename"]}"', r["last_value"]
                )
            # The target's own edition, not the source's.
            await dst.execute(
                "UPDATE tenant_meta SET value = coalesce(current_setting('timescaledb.license', true), value) "
                "WHERE key = 'timescaledb_edition'"
            )
        for t in order:
            col = time_cols.get(t)
            a, b = await _fingerprint(src, t, col), await _fingerprint(dst, t, col)
            if t == "tenant_meta":  # its edition row was set to the target's
                a, b = {k: (v[0], 0) for k, v in a.items()}, {k: (v[0], 0) for k, v in b.items()}
            if a != b:
                diff = sorted(str(k) for k in set(a) | set(b) if a.get(k) != b.get(k))[:5]
                raise StorageError(f"copy of {t} differs from its source (first differing parts: {diff})")
            report.rows[t] = sum(n for n, _ in a.values())
            if col:
                report.days_verified += len(a)
    finally:
        await src.close()
        await dst.close()


class MoveSteps(Protocol):
    """What the move needs of the master store (ingest.store.master.MasterStore)."""

    async def tenant_dsn(self, tenant_id: str) -> str: ...

    async def migrate_tenant(self, tenant_id: str) -> list[str]: ...

    async def server_admin_dsn(self, server: DbServer) -> Any: ...

    async def get_server(self, ref: str) -> DbServer: ...

    async def switch_database(
        self, tenant_id: str, server: DbServer, url: str, role: str, password: str
    ) -> None: ...


async def move_database(
    master: MoveSteps,
    tenant: dict[str, Any],
    target: DbServer,
    writer: WriterControl | None,
    *,
    drop_source: bool = False,
) -> MoveReport:
    """Steps 1-5 of the module docstring. ``tenant``: its master row (id, slug, server_id,
    attached, database_url, db_user); ``writer`` None when no writer runs (a suspended tenant)."""
    t0 = time.monotonic()
    source = await master.get_server(str(tenant["server_id"])) if tenant["server_id"] else None
    if source is not None and source.id == target.id:
        raise Conflict("server", f"the tenant lives on {target.name!r} already")
    report = MoveReport(source.name if source else "attached", target.name)
    db, role = f"scada_t_{tenant['slug']}", f"scada_t_{tenant['slug']}"
    target_admin = await master.server_admin_dsn(target)
    probe = await asyncpg.connect(target_admin("postgres"))
    try:
        if await probe.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db):
            raise Conflict("server", f"{target.name!r} has a database named {db} already")
    finally:
        await probe.close()
    await master.migrate_tenant(str(tenant["id"]))
    password = pysecrets.token_urlsafe(24)
    target_dsn = make_dsn(target.host, target.port, db, role, password, target.tls_mode)
    held, held_at = False, 0.0
    old_db = urlsplit(str(tenant["database_url"])).path.lstrip("/")
    # The source is frozen only where we administer it (not in a customer's attached database).
    source_admin = await master.server_admin_dsn(source) if source is not None and not tenant["attached"] else None
    frozen = False
    try:
        await provision_database(target_admin, db, role, password)
        conn = await asyncpg.connect(target_dsn)
        try:
            await migrations.apply(conn, "tenant")
        finally:
            await conn.close()
        if writer is not None:
            await writer.hold()
            held, held_at = True, time.monotonic()
        if source_admin is not None:
            frozen = True  # before the call: a half-done freeze is undone too
            await set_read_only(source_admin, old_db, True)
        await copy_and_verify(await master.tenant_dsn(str(tenant["id"])), target_dsn, report)
        await master.switch_database(str(tenant["id"]), target, target.tenant_url(db), role, password)
    except BaseException:
        await drop_database(target_admin, db, role)
        if frozen and source_admin is not None:
            await set_read_only(source_admin, old_db, False)
        if held and writer is not None:
            await writer.release()  # back onto the source, which still holds everything
        raise
    if writer is not None:
        report.held_s = round(time.monotonic() - held_at, 3)
        stats = await writer.release()
        report.spooled_rows_at_release = int(stats.get("spool_rows", 0))
    if drop_source and source_admin is not None:
        await drop_database(source_admin, old_db, str(tenant["db_user"]))
        report.source_dropped = True
    report.seconds = round(time.monotonic() - t0, 3)
    return report
