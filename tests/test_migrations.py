"""Migrations: fresh apply, repeat is a no-op, an edited applied file is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg
import pytest

from ingest.core.config import Settings
from ingest.core.errors import MigrationError
from ingest.store import migrations
from tests.conftest import fresh_database


async def _fresh_db(settings: Settings) -> str:
    return await fresh_database(settings, "mig", migrate=False)


async def test_tenant_migrations_fresh_then_repeat(stack: Settings) -> None:
    db = await _fresh_db(stack)
    conn = await asyncpg.connect(stack.dsn(db))
    try:
        first = await migrations.apply(conn, "tenant")
        assert first == [m.name for m in migrations.load("tenant")]
        assert await migrations.apply(conn, "tenant") == []
        # The narrow readings table is a hypertable with the (tag_id, time DESC) index.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'scada_readings'"
            )
            == 1
        )
        cols = await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'scada_readings' ORDER BY ordinal_position"
        )
        assert [(c["column_name"], c["data_type"]) for c in cols] == [
            ("time", "timestamp with time zone"),
            ("tag_id", "integer"),
            ("value", "double precision"),
            ("quality", "integer"),
        ]
        idx = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'scada_readings_tag_time'")
        assert '(tag_id, "time" DESC)' in idx
        assert await conn.fetchval("SELECT value FROM tenant_meta WHERE key = 'timescaledb_edition'") == "apache"
    finally:
        await conn.close()


async def test_changed_checksum_is_an_error(stack: Settings, tmp_path: Path) -> None:
    root = tmp_path / "migrations"
    shutil.copytree(migrations.migrations_root(), root)
    db = await _fresh_db(stack)
    conn = await asyncpg.connect(stack.dsn(db))
    try:
        await migrations.apply(conn, "tenant", root)
        f = sorted((root / "tenant").glob("*.sql"))[0]
        f.write_text(f.read_text() + "\n-- edited after the fact\n")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrations.apply(conn, "tenant", root)
        # A new file is still applied after the old ones.
        f.write_text(f.read_text().replace("\n-- edited after the fact\n", ""))
        (root / "tenant" / "999_extra.sql").write_text("CREATE TABLE extra (x int);")
        assert await migrations.apply(conn, "tenant", root) == ["999_extra.sql"]
    finally:
        await conn.close()


async def test_master_is_migrated_and_edition_recorded(stack: Settings) -> None:
    conn = await asyncpg.connect(stack.master_dsn)
    try:
        assert await conn.fetchval("SELECT value FROM cluster_info WHERE key = 'timescaledb_edition'") == "apache"
        versions = await conn.fetch("SELECT version FROM schema_migrations")
        assert len(versions) == len(migrations.load("master"))
    finally:
        await conn.close()


def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tenant").mkdir()
    (tmp_path / "tenant" / "first.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="NNN_description"):
        migrations.load("tenant", tmp_path)
