"""Pushed tags: ``(well_id, parameter_name)`` -> a tag of a ``push`` connection, with its unit.

Pushed tags are registered like device tags: a row in ``tag_mappings`` under a connection whose
protocol is ``push``, one such connection per well (named ``push:<well>``), so the tag's name is
the parameter name and the (connection, name) uniqueness every tag has already makes a
(well, parameter) pair name one tag. The coordinator runs no session for them.

The map is cached per tenant and reloaded when a pair is not found (at most once a second) or
after ``refresh_s``, so a tag registered or edited elsewhere is seen within seconds. While the
tenant's database is away the cached map keeps answering (retrying its reload every
``miss_reload_s``): pushes of known tags go on landing in the writer's spool, as they must.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from ingest.core.errors import StorageUnavailable
from ingest.core.translate import translated_methods
from ingest.push.units import check_unit
from ingest.store import quotas

Pair = tuple[str, str]  # (well name, parameter name)

_LOAD = """
    SELECT w.name AS well, t.name AS parameter, t.tag_id, t.unit
    FROM tag_mappings t
    JOIN scada_connections c ON c.id = t.connection_id
    JOIN wells w ON w.id = t.well_id
    WHERE c.protocol = 'push' AND c.deleted_at IS NULL AND t.deleted_at IS NULL
      AND w.deleted_at IS NULL"""
# Registration in one tenant database is serialised by this lock (any constant, same everywhere).
_REGISTER_LOCK = 0x50555348


@dataclass(frozen=True)
class PushTag:
    tag_id: int
    unit: str | None


@dataclass(frozen=True)
class PushTagCreate:
    well: str
    parameter: str
    unit: str | None = None
    valid_min: float | None = None
    valid_max: float | None = None
    out_of_range: str = "flag"


async def register_push_tags(
    conn: asyncpg.Connection, tags: list[PushTagCreate], max_tags: int | None = None
) -> list[dict[str, Any]]:
    """Create the wells, push connections and tags not there yet (existing ones are left as
    they are); return every requested tag as ``{tag_id, well, parameter, unit, created}``.
    Past the tenant's ``max_tags`` nothing is created (``QuotaExceeded``)."""
    for t in tags:
        if t.unit is not None:
            check_unit(t.unit)
    out: list[dict[str, Any]] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _REGISTER_LOCK)
        conns: dict[str, Any] = {}
        for well in sorted({t.well for t in tags}):
            wid = await conn.fetchval(
                "SELECT id FROM wells WHERE name = $1 AND deleted_at IS NULL", well
            ) or await conn.fetchval("INSERT INTO wells (name) VALUES ($1) RETURNING id", well)
            name = f"push:{well}"
            cid = await conn.fetchval(
                "SELECT id FROM scada_connections WHERE name = $1 AND deleted_at IS NULL", name
            )
            if cid is None:
                cid = await conn.fetchval(
                    "INSERT INTO scada_connections (name, protocol, endpoint) "
                    "VALUES ($1, 'push', $2) RETURNING id",
                    name,
                    f"push://{well}",
                )
            conns[well] = (cid, wid)
        for t in tags:
            cid, wid = conns[t.well]
            row = await conn.fetchrow(
                "SELECT tag_id, unit FROM tag_mappings WHERE connection_id = $1 AND name = $2 "
                "AND deleted_at IS NULL",
                cid,
                t.parameter,
            )
            created = row is None
            if row is None:
                row = await conn.fetchrow(
                    "INSERT INTO tag_mappings (connection_id, well_id, name, unit, valid_min, "
                    "valid_max, out_of_range) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                    "RETURNING tag_id, unit",
                    cid,
                    wid,
                    t.parameter,
                    t.unit,
                    t.valid_min,
                    t.valid_max,
                    t.out_of_range,
                )
                await conn.execute("UPDATE scada_connections SET updated_at = now() WHERE id = $1", cid)
            out.append(
                {
                    "tag_id": row["tag_id"],
                    "well": t.well,
                    "parameter": t.parameter,
                    "unit": row["unit"],
                    "created": created,
                }
            )
        await quotas.enforce(conn, max_tags=max_tags)
    return out


@translated_methods
class PushTagMap:
    """One tenant's pushed tags, cached."""

    def __init__(self, pool: asyncpg.Pool, refresh_s: float = 10.0, miss_reload_s: float = 1.0) -> None:
        self.pool = pool
        self.max_tags: int | None = None  # the tenant's quota, kept current by the caller
        self.refresh_s = refresh_s
        self.miss_reload_s = miss_reload_s
        self._tags: dict[Pair, PushTag] = {}
        self._loaded_at = float("-inf")

    async def reload(self) -> None:
        rows = await self.pool.fetch(_LOAD)
        self._tags = {(r["well"], r["parameter"]): PushTag(r["tag_id"], r["unit"]) for r in rows}
        self._loaded_at = time.monotonic()

    async def _refresh(self, missing: bool) -> None:
        """Reload after ``refresh_s``, or (a pair was not found) after ``miss_reload_s``."""
        age = time.monotonic() - self._loaded_at
        if age > self.refresh_s or (missing and age > self.miss_reload_s):
            try:
                await self.reload()
            except StorageUnavailable:
                if self._loaded_at == float("-inf"):
                    raise  # never loaded: nothing to answer from
                # The database is away: answer from the map as last loaded, try again shortly.
                self._loaded_at = time.monotonic() - self.refresh_s + self.miss_reload_s

    async def resolve(self, pairs: set[Pair]) -> dict[Pair, PushTag]:
        """The tags of those pairs that exist (reloading once if some are unknown)."""
        await self._refresh(not pairs <= self._tags.keys())
        return {p: self._tags[p] for p in pairs if p in self._tags}

    async def current(self, missing: bool = False) -> dict[Pair, PushTag]:
        """The whole map (not to be changed by the caller): reloaded as ``resolve`` would when
        ``missing`` says a pair looked up in it was not found."""
        await self._refresh(missing)
        return self._tags

    async def register(self, tags: list[PushTagCreate]) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            out = await register_push_tags(conn, tags, self.max_tags)
        await self.reload()
        return out
