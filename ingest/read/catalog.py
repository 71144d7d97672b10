"""Which tags a read request means: by id, or by well and tag name; and the wells themselves.

``Catalog`` is one tenant's tags and read time zone, loaded in one statement; ``CatalogCache``
keeps it for a few seconds per tenant, so a read request resolves its tags without a query.
A tag the cached catalog does not know reloads it at once (a tag registered a moment ago is
found); a deleted, renamed or moved tag, or a new time zone set through another replica, shows
within the time to live.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ingest.core.errors import InvalidQuery
from ingest.core.translate import translated

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


_CATALOG = """
SELECT t.tag_id, t.name, w.name AS well, t.unit, t.data_type,
       (t.data_type = 'String' OR t.modbus_data_type ILIKE 'string%') AS is_text,
       w.deleted_at IS NULL AS well_live, tz.value AS timezone
FROM (SELECT (SELECT value FROM tenant_meta WHERE key = 'timezone') AS value) tz
LEFT JOIN (tag_mappings t LEFT JOIN wells w ON w.id = t.well_id) ON t.deleted_at IS NULL
ORDER BY t.tag_id"""


@dataclass
class Catalog:
    """A tenant's live tags (by id, and by well name in tag id order) and its read time zone."""

    tags: dict[int, TagInfo] = field(default_factory=dict)
    by_well: dict[str, list[TagInfo]] = field(default_factory=dict)
    timezone: str = "UTC"
    loaded_at: float = 0.0

    @classmethod
    @translated
    async def load(cls, db: asyncpg.Pool | asyncpg.Connection) -> Catalog:
        rows = await db.fetch(_CATALOG)
        c = cls(timezone=str(rows[0]["timezone"] or "UTC") if rows else "UTC", loaded_at=time.monotonic())
        for r in rows:
            if r["tag_id"] is None:
                continue
            t = _info(r)
            c.tags[t.tag_id] = t
            if t.well is not None and r["well_live"]:
                c.by_well.setdefault(t.well, []).append(t)
        return c

    def resolve(
        self, tag_ids: list[int] | None, well: str | None, names: list[str] | None, max_tags: int
    ) -> list[TagInfo]:
        """As ``resolve_tags``, from memory. Raises ``InvalidQuery`` (see there)."""
        _check_shape(tag_ids, well, names, max_tags)
        return self._resolve(tag_ids, well, names, max_tags)

    def _resolve(
        self, tag_ids: list[int] | None, well: str | None, names: list[str] | None, max_tags: int
    ) -> list[TagInfo]:
        if tag_ids:
            missing = [t for t in tag_ids if t not in self.tags]
            if missing:
                raise InvalidQuery("tag_id", f"no such tags in this tenant: {missing}")
            return [self.tags[t] for t in dict.fromkeys(tag_ids)]
        assert well is not None
        if well not in self.by_well:
            # A well without live tags is still a well: only the database can say.
            raise _UnknownWell(well)
        found = list(self.by_well[well])
        return _pick_names(found, well, names, max_tags)


class _UnknownWell(Exception):
    def __init__(self, well: str) -> None:
        self.well = well


Loader = Callable[[], Awaitable[Catalog]]


class CatalogCache:
    """Per-tenant catalogs kept ``ttl_s`` seconds; concurrent loads of one tenant coalesce."""

    def __init__(self, ttl_s: float = 5.0) -> None:
        self.ttl_s = ttl_s
        self._by_tenant: dict[str, Catalog] = {}
        self._loading: dict[str, asyncio.Future[Catalog]] = {}

    def invalidate(self, tenant: str) -> None:
        self._by_tenant.pop(tenant, None)

    async def get(
        self,
        tenant: str,
        load: Loader,
        *,
        fresher_than: float | None = None,
    ) -> Catalog:
        c = self._by_tenant.get(tenant)
        now = time.monotonic()
        if (
            c is not None
            and now - c.loaded_at < self.ttl_s
            and (fresher_than is None or c.loaded_at > fresher_than)
        ):
            return c
        pending = self._loading.get(tenant)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Catalog] = asyncio.get_running_loop().create_future()
        self._loading[tenant] = fut
        try:
            c = await load()
            self._by_tenant[tenant] = c
            fut.set_result(c)
            return c
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._loading[tenant]

    @translated
    async def resolve(
        self,
        tenant: str,
        load: Loader,
        db: asyncpg.Pool | asyncpg.Connection,
        tag_ids: list[int] | None,
        well: str | None,
        names: list[str] | None,
        max_tags: int,
    ) -> tuple[Catalog, list[TagInfo]]:
        """The catalog and the tags a request means; a miss reloads the catalog once (it may
        predate the tag), and a well with no live tags is looked up as ``resolve_tags`` does."""
        _check_shape(tag_ids, well, names, max_tags)
        started = time.monotonic()
        c = await self.get(tenant, load)
        for attempt in (0, 1):
            try:
                return c, c._resolve(tag_ids, well, names, max_tags)
            except (InvalidQuery, _UnknownWell) as e:
                if attempt == 0 and c.loaded_at < started:
                    c = await self.get(tenant, load, fresher_than=started)
                    continue
                if isinstance(e, _UnknownWell):
                    return c, await resolve_tags(db, tag_ids, well, names, max_tags)
                raise
        raise AssertionError("unreachable")


def _check_shape(tag_ids: list[int] | None, well: str | None, names: list[str] | None, max_tags: int) -> None:
    """Errors a catalog cannot change: what was asked for is malformed whatever exists."""
    if tag_ids and (well or names):
        raise InvalidQuery("tag_id", "give tag_id, or well and tag, not both")
    if tag_ids:
        if len(tag_ids) > max_tags:
            raise InvalidQuery("tag_id", f"{len(tag_ids)} tags; at most {max_tags}")
        return
    if not well:
        if names:
            raise InvalidQuery("well", "tag names are looked up within a well: give well")
        raise InvalidQuery("tag_id", "give tag_id (repeatable), or well and tag")


def _pick_names(found: list[TagInfo], well: str, names: list[str] | None, max_tags: int) -> list[TagInfo]:
    if names:
        wanted = set(names)
        found = [t for t in found if t.name in wanted]
        have = {t.name for t in found}
        missing_names = [n for n in names if n not in have]
        if missing_names:
            raise InvalidQuery("tag", f"no tags named {missing_names} at well {well!r}")
        order = {n: i for i, n in enumerate(dict.fromkeys(names))}
        found.sort(key=lambda t: (order[t.name], t.tag_id))
    if len(found) > max_tags:
        raise InvalidQuery("tag", f"{len(found)} tags; at most {max_tags}")
    return found


@translated
async def resolve_tags(
    db: asyncpg.Pool | asyncpg.Connection,
    tag_ids: list[int] | None,
    well: str | None,
    names: list[str] | None,
    max_tags: int,
) -> list[TagInfo]:
    """The tags asked for, in the order asked. Unknown ids, wells or names are an error naming
    the field (and the values), never a silently shorter answer."""
    _check_shape(tag_ids, well, names, max_tags)
    if tag_ids:
        rows = {
            r["tag_id"]: _info(r) for r in await db.fetch(_TAG_SELECT + " AND t.tag_id = ANY($1::int4[])", tag_ids)
        }
        missing = [t for t in tag_ids if t not in rows]
        if missing:
            raise InvalidQuery("tag_id", f"no such tags in this tenant: {missing}")
        return [rows[t] for t in dict.fromkeys(tag_ids)]
    assert well is not None
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
    return _pick_names(found, well, names, max_tags)


@translated
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
