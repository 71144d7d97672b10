"""A bulk tag import written in one transaction: inserts in one statement, updates in one, deletes
in one, so 10,000 tags cost three round trips rather than 10,000. What it does is decided by
``tag_bulk.plan_import`` (the checks of single registration), under a lock on the connection so
two imports to one connection cannot interleave.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingest.core.errors import ConnectionNotFound, InvalidRows
from ingest.core.models import Protocol
from ingest.core.translate import translated
from ingest.store import quotas
from ingest.store.registration import TagCreate
from ingest.store.tag_bulk import CSV_COLUMNS, ImportMode, ImportPlan, Row, RowError, plan_import
from ingest.store.tenant_store import TAG_COLS, TenantStore, well_ids

__all__ = ["ImportOutcome", "export_tags", "import_tags"]

MAX_REPORTED_ERRORS = 1000


@dataclass(frozen=True)
class ImportOutcome:
    mode: ImportMode
    dry_run: bool
    rows: int
    created: int
    updated: int
    unchanged: int
    deleted: int
    errors: list[RowError]


@translated
async def import_tags(
    store: TenantStore,
    connection_id: str,
    rows: list[Row],
    mode: ImportMode,
    dry_run: bool,
    read_errors: list[RowError],
    max_tags: int | None = None,
) -> ImportOutcome:
    """Plan the import against the stored tags and, unless ``dry_run``, write it.

    A dry run answers every bad row; a real import with any bad row writes nothing and raises
    ``InvalidRows`` naming each (the API's 422). Past the tenant's ``max_tags`` nothing is
    written (``QuotaExceeded``)."""
    async with store.pool.acquire() as conn, conn.transaction():
        c = await conn.fetchrow(
            "SELECT id, protocol FROM scada_connections WHERE id = $1::uuid AND deleted_at IS NULL FOR UPDATE",
            connection_id,
        )
        if c is None:
            raise ConnectionNotFound(f"connection {connection_id} not found")
        protocol = Protocol(c["protocol"])
        if protocol is Protocol.PUSH:
            raise InvalidRows([("connection_id", "pushed tags are registered on first push")])
        stored = await conn.fetch(
            f"SELECT {TAG_COLS}, (SELECT name FROM wells w WHERE w.id = well_id) AS well "
            "FROM tag_mappings WHERE connection_id = $1 AND deleted_at IS NULL",
            c["id"],
        )
        existing = {r["name"]: dict(r) for r in stored}
        plan = plan_import(protocol, rows, existing, mode)
        plan.errors[:0] = read_errors
        outcome = _outcome(plan, mode, dry_run)
        if plan.errors and not dry_run:
            shown = plan.errors[:MAX_REPORTED_ERRORS]
            raise InvalidRows([(_where(e), e.error) for e in shown])
        if dry_run or plan.errors:
            return outcome
        if plan.create:
            await store.insert_tags(conn, c["id"], plan.create)
        if plan.update:
            await _update(conn, plan.update)
        if plan.delete:
            await conn.execute(
                "UPDATE tag_mappings SET deleted_at = now() WHERE tag_id = ANY($1::int[])", plan.delete
            )
        await quotas.enforce(conn, max_tags=max_tags)
        if plan.create or plan.update or plan.delete:
            await conn.execute("UPDATE scada_connections SET updated_at = now() WHERE id = $1", c["id"])
    return outcome


def _where(e: RowError) -> str:
    return f"rows.{e.row}.{e.field}" if e.row else e.field


def _outcome(plan: ImportPlan, mode: ImportMode, dry_run: bool) -> ImportOutcome:
    return ImportOutcome(
        mode=mode,
        dry_run=dry_run,
        rows=plan.rows,
        created=len(plan.create),
        updated=len(plan.update),
        unchanged=plan.unchanged,
        deleted=len(plan.delete),
        errors=plan.errors[:MAX_REPORTED_ERRORS],
    )


# Column -> the PostgreSQL array type its values are sent as.
_TYPES = {
    "node_id": "text",
    "modbus_unit": "int",
    "modbus_register": "text",
    "modbus_address": "int",
    "modbus_data_type": "text",
    "byte_order": "text",
    "modbus_bit": "int",
    "modbus_length": "int",
    "data_type": "text",
    "unit": "text",
    "scaling_factor": "float8",
    "offset": "float8",
    "valid_min": "float8",
    "valid_max": "float8",
    "deadband": "float8",
    "out_of_range": "text",
    "zscore_threshold": "float8",
    "sampling_interval_ms": "float8",
    "queue_size": "int",
    "discard_oldest": "bool",
    "deadband_type": "text",
    "deadband_value": "float8",
}
assert set(_TYPES) | {"name", "well"} == set(CSV_COLUMNS)


async def _update(conn: Any, updates: list[tuple[int, TagCreate]]) -> None:
    """Every updated tag in one UPDATE ... FROM unnest(...): each keeps its tag_id."""
    wells = await well_ids(conn, {t.well for _, t in updates if t.well})
    columns = list(_TYPES)
    arrays: list[list[Any]] = [[tag_id for tag_id, _ in updates]]
    arrays += [[getattr(t, col) for _, t in updates] for col in columns]
    arrays.append([wells[t.well] if t.well else None for _, t in updates])
    unnest = ", ".join(
        ["$1::int[]"]
        + [f"${i + 2}::{_TYPES[col]}[]" for i, col in enumerate(columns)]
        + [f"${len(columns) + 2}::uuid[]"]
    )
    names = ", ".join(["tag_id"] + [f'"{c}"' for c in columns] + ["well_id"])
    sets = ", ".join([f'"{c}" = u."{c}"' for c in columns] + ["well_id = u.well_id", "updated_at = now()"])
    await conn.execute(
        f"UPDATE tag_mappings m SET {sets} FROM unnest({unnest}) AS u({names}) WHERE m.tag_id = u.tag_id",
        *arrays,
    )


@translated
async def export_tags(store: TenantStore, connection_id: str) -> list[dict[str, Any]]:
    """The connection's live tags, ordered by tag_id (``tag_bulk.export_csv`` writes them)."""
    await store.connection_protocol(connection_id)
    return await store.list_tags(connection_id)
