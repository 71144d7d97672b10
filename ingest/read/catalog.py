"""Which tags a read request means: by id, or by well and tag name; and the wells themselves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from ingest.core.errors import InvalidQuery

_TAG_SELECT = """
SELECT t.tag_id, t.name, w.name AS well, t.unit, t.data_type,
       (t.data_type = 'String' OR t.modbus_data_type ILIKE 'string%') AS is_text
FROM tag_mappings t LEFT JOIN wells w ON w.id = t.well_id
WHERE t.deleted_at IS NULL"""


@dataclass(frozen=True)
class TagInfo:
    tag_id: int
    name: str
    well: str | None
    unit: str | None
    data_type: str
    is_text: bool


def _info(r: asyncpg.Record) -> TagInfo:
    return TagInfo(r["tag_id"], r["name"], r["well"], r["unit"], r["data_type"], bool(r["is_text"]))


async def resolve_tags(
    db: asyncpg.Pool | asyncpg.Connection,
    tag_ids: list[int] | None,
    well: str | None,
    names: list[str] | None,
    max_tags: int,
) -> list[TagInfo]:
    """The tags asked for, in the order asked. Unknown ids, wells or names are an error naming
    the field (and the values), never a silently shorter answer."""
    if tag_ids and (well or names):
        raise InvalidQuery("tag_id", "give tag_id, or well and tag, not both")
    if tag_ids:
        if len(tag_ids) > max_tags:
            raise InvalidQuery("tag_id", f"{len(tag_ids)} tags; at most {max_tags}")
        rows = {
            r["tag_id"]: _info(r) for r in await db.fetch(_TAG_SELECT + " AND t.tag_id = ANY($1::int4[])", tag_ids)
        }
        missing = [t for t in tag_ids if t not in rows]
        if missing:
            raise InvalidQuery("tag_id", f"no such tags in this tenant: {missing}")
        return [rows[t] for t in dict.fromkeys(tag_ids)]
    if not well:
        if names:
            raise InvalidQuery("well", "tag names are looked up within a well: give well")
        raise InvalidQuery("tag_id", "give tag_id (repeatable), or well and tag")
    if not await db.fetchval("SELECT 1 FROM wells WHERE name = $1 AND deleted_at IS NULL", well):
        raise InvalidQuery("well", f"no well named {well!r}")
    found = [
        _info(r)
        for r in await db.fetch(
            _TAG_SELECT + " AND w.name = $1 AND w.deleted_at IS NULL "
            "AND ($2::text[] IS NULL OR t.name = ANY($2::text[])) ORDER BY t.tag_id",
            well,
            names,
        )
    ]
    if names:
        have = {t.name for t in found}
        missing_names = [n for n in names if n not in have]
        if missing_names:
            raise InvalidQuery("tag", f"no tags named {missing_names} at well {well!r}")
        order = {n: i for i, n in enumerate(dict.fromkeys(names))}
        found.sort(key=lambda t: (order[t.name], t.tag_id))
    if len(found) > max_tags:
        raise InvalidQuery("tag", f"{len(found)} tags; at most {max_tags}")
    return found


async def list_wells(db: asyncpg.Pool | asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT w.id, w.name, w.external_id, w.created_at, count(t.tag_id) AS tag_count "
        "FROM wells w LEFT JOIN tag_mappings t ON t.well_id = w.id AND t.deleted_at IS NULL "
        "WHERE w.deleted_at IS NULL GROUP BY w.id ORDER BY w.name"
    )
    return [
        {
            "id": str(r["id"]),
            "name": r["name"],
            "external_id": r["external_id"],
            "created_at": r["created_at"],
            "tag_count": r["tag_count"],
        }
        for r in rows
    ]
