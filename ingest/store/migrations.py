"""Numbered SQL migrations with checksums, applied under an advisory lock.

Files are named ``NNN_description.sql`` in ``migrations/master`` and ``migrations/tenant``. Each file
runs in its own transaction together with its ``schema_migrations`` row, so a failure leaves the
database at the previous version. An applied file whose checksum changed is an error: history is
never rewritten silently.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from ingest.core.errors import MigrationError

_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
# Any constant works; it only has to be the same for every process that migrates.
_LOCK_KEY = 0x5CADA


def migrations_root() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "migrations", here.parent / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("migrations folder not found")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(kind: str, root: Path | None = None) -> list[Migration]:
    folder = (root or migrations_root()) / kind
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNN_description.sql")
        found.append(Migration(int(m.group(1)), path.name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{folder}: two migrations share a version number")
    return found


async def apply(conn: asyncpg.Connection, kind: str, root: Path | None = None) -> list[str]:
    """Apply the pending migrations of ``kind`` ('master' or 'tenant'); return the names applied."""
    migrations = load(kind, root)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {
            r["version"]: (r["name"], r["checksum"])
            for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        }
        done: list[str] = []
        for m in migrations:
            if m.version in applied:
                name, checksum = applied[m.version]
                if checksum != m.checksum:
                    raise MigrationError(
                        f"{kind}/{m.name}: file changed after it was applied as {name} "
                        f"(checksum {checksum[:12]} in the database, {m.checksum[:12]} on disk); "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1,$2,$3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
            except asyncpg.PostgresError as e:
                raise MigrationError(f"{kind}/{m.name}: {e}") from e
            done.append(m.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
