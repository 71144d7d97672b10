"""Read-side routes: readings at any resolution, latest values, wells, read settings.

Handlers stay thin: parse, authorise, call one ingest.read function, shape the answer.

The hot routes (readings, latest) are built to cost one database round trip, or one Redis
round trip, per request: the caller's key and the tenant are remembered for a few seconds
(``AUTH_TTL_S``: a revoked key or a suspended tenant is refused by this replica within that
time), the tenant's tags and time zone come from a per-tenant catalog cache (``ingest.read.
catalog``), queries run on a read pool of the replica's own (more connections than the
registration pool; no reset query on release, since read handlers leave no session state), and
answers are encoded by orjson straight from rows, past pydantic (the models below still
document them in OpenAPI). These caches are the replica's (``ReadCaches``, held by the ingress'
``ApiState``), not module globals.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ingest.core.errors import InvalidQuery, StorageUnavailable, TenantUnavailable
from ingest.core.models import Tenant
from ingest.core.translate import connection
from ingest.read.catalog import Catalog, CatalogCache, TagInfo, list_wells
from ingest.read.latest import latest_values
from ingest.read.one_statement import CacheSlot
from ingest.read.pool import ReadPool, open_read_pool
from ingest.read.query import read, stream_rows
from ingest.read.request import ReadAnswer, ReadRequest, quality_code, quality_name
from ingest.read.rollup_cache import RollupCache
from ingest.store.credentials import Principal
from serve_app.deps import Api, ReadTenant, authorize, principal
from serve_app.errors import error_responses
from serve_app.params import INT4_MAX, EndQuery, StartQuery, TenantRef
from serve_app.state import ApiState

MAX_QUERY_TAGS = 100
MAX_LATEST_TAGS = 1000
# The readings route's bounds and defaults, named once: serve_app.hot_reads takes the same.
NAME_MAX = 200  # characters of a well name, and of a tag name; tag names per request
CURSOR_MAX = 500
COUNT_MAX = 100_000  # max_points, limit
MAX_POINTS_DEFAULT = 2000
LIMIT_DEFAULT = 10_000
Resolution = Literal["auto", "raw", "1m", "1h", "1d"]
Days = Literal["local", "utc"]

router = APIRouter(tags=["queries"], responses=error_responses(401, 403, 404, 422, 503))

from serve_app.auth_cache import AUTH_TTL_S, PrincipalCache  # noqa: E402

READ_POOL_SIZE = 10


class ReadCaches:
    """One replica's read-side caches: keys and tenants for ``AUTH_TTL_S``, a read pool per
    tenant, tenant catalogs. Built once per ``ApiState`` (``api.part(ReadCaches)``)."""

    def __init__(self, api: ApiState) -> None:
        self.api = api
        self.principals = PrincipalCache()
        self.tenants: dict[str, tuple[float, Tenant]] = {}
        self.read_pools: dict[str, ReadPool] = {}
        self.read_urls: dict[str, str] = {}  # the database each read pool was opened on
        self.pool_lock = asyncio.Lock()
        self.catalogs = CatalogCache(ttl_s=AUTH_TTL_S)
        self.rollups = RollupCache()  # keyed by tenant id: dropped with the tenant's read pool

    async def forget(self, tenant_id: str) -> None:
        self.tenants = {k: v for k, v in self.tenants.items() if v[1].id != tenant_id}
        self.catalogs.invalidate(tenant_id)
        self.rollups.forget(tenant_id)
        pool = self.read_pools.pop(tenant_id, None)
        if pool is not None:
            await pool.close()

    async def tenant(self, ref: str) -> Tenant:
        hit = self.tenants.get(ref)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        t = await (await self.api.master()).get_tenant(ref)
        if len(self.tenants) > 10_000:
            self.tenants.clear()
        self.tenants[ref] = (now + AUTH_TTL_S, t)
        return t

    async def read_pool(self, t: Tenant) -> ReadPool:
        pool = self.read_pools.get(t.id)
        if pool is not None and self.read_urls.get(t.id) != t.database_url:  # moved since
            self.read_pools.pop(t.id, None)
            self.rollups.forget(t.id)
            await pool.close()
            pool = None
        if pool is not None:
            return pool
        async with self.pool_lock:
            if t.id not in self.read_pools:
                dsn = await (await self.api.master()).tenant_dsn(t.id)
                try:
                    self.read_pools[t.id] = await open_read_pool(dsn, READ_POOL_SIZE)
                    self.read_urls[t.id] = t.database_url
                except StorageUnavailable as e:
                    raise TenantUnavailable(f"tenant database unreachable: {e}") from e
            return self.read_pools[t.id]


async def cached_principal(
    api: Api,
    authorization: Annotated[str | None, Header(description="Bearer <api key>")] = None,
) -> Principal:
    """``principal``, remembered for ``AUTH_TTL_S`` per key (refusals are not remembered)."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return await principal(api, authorization)  # the refusal, worded once
    master = await api.master()
    return await api.part(ReadCaches).principals.get(authorization[7:].strip(), master.authenticate)


ReadCaller = Annotated[Principal, Depends(cached_principal)]


async def _cached_read_tenant(tenant: TenantRef, caller: ReadCaller, api: Api) -> Tenant:
    """``ReadTenant`` with the tenant row remembered for ``AUTH_TTL_S``: the same checks in the
    same order, so a foreign key learns nothing about other tenants."""
    return await authorize(api, caller, tenant, "read", lookup=api.part(ReadCaches).tenant)


HotReadTenant = Annotated[Tenant, Depends(_cached_read_tenant)]


async def _catalog_and_tags(
    api: ApiState,
    t: Tenant,
    pool: ReadPool,
    tag_id: list[int] | None,
    well: str | None,
    tag: list[str] | None,
    max_tags: int,
) -> tuple[Catalog, list[TagInfo]]:
    return await api.part(ReadCaches).catalogs.resolve(
        t.id, lambda: Catalog.load(pool), pool, tag_id, well, tag, max_tags
    )


def _encode(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)


def _json_bytes(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _tag_dict(t: TagInfo) -> dict[str, Any]:
    return {"tag_id": t.tag_id, "name": t.name, "well": t.well, "unit": t.unit, "data_type": t.data_type}


class TagBrief(BaseModel):
    tag_id: int
    name: str
    well: str | None
    unit: str | None
    data_type: str


def _tag(t: TagInfo) -> TagBrief:
    return TagBrief(tag_id=t.tag_id, name=t.name, well=t.well, unit=t.unit, data_type=t.data_type)


# -- readings ------------------------------------------------------------------------------------
class SeriesOut(TagBrief):
    points: list[list[Any]] = Field(description="one row per reading or bucket, in `fields` order")


class ReadingsOut(BaseModel):
    start: datetime
    end: datetime
    requested: str = Field(description="the resolution asked for")
    resolution: str = Field(description="the level that answers: raw, 1m, 1h or 1d")
    timezone: str = Field(description="time zone of 1-day buckets (UTC for other levels)")
    fields: list[str]
    series: list[SeriesOut]
    next: str | None = Field(None, description="cursor: repeat the query with it for the rest")
    raw_dropped_before: datetime | None = Field(
        None, description="raw readings before this were dropped by retention"
    )
    notices: list[str] = []


TagIds = Annotated[list[Annotated[int, Field(ge=1, le=INT4_MAX)]] | None, Query(description="tag ids; repeatable")]
TagNames = Annotated[
    list[str] | None, Query(description="tag names within `well`; repeatable", max_length=NAME_MAX)
]


@router.get(
    "/v1/tenants/{tenant}/readings",
    response_model=ReadingsOut,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with `Accept: text/csv`"}},
)
async def readings(
    t: HotReadTenant,
    api: Api,
    tag_id: TagIds = None,
    well: Annotated[str | None, Query(max_length=NAME_MAX)] = None,
    tag: TagNames = None,
    start: StartQuery = None,
    end: EndQuery = None,
    resolution: Resolution = "auto",
    max_points: Annotated[int, Query(ge=1, le=COUNT_MAX, description="per tag, for auto")] = MAX_POINTS_DEFAULT,
    limit: Annotated[int, Query(ge=1, le=COUNT_MAX, description="rows per answer")] = LIMIT_DEFAULT,
    days: Annotated[Days, Query(description="1-day buckets from the tenant's local midnight, or UTC")] = "local",
    cursor: Annotated[str | None, Query(max_length=CURSOR_MAX)] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    """Readings of one or more tags in [start, end) at a resolution. `auto`: up to 1 day raw, up
    to 7 days 1-minute, up to 30 days 1-hour, beyond that 1-day; coarser while a tag would exceed
    `max_points`. Aggregate rows: bucket start, count, avg, min, max, sum, first and last with
    their times, count of Bad readings (Bad readings and gap markers are never in the numbers).
    Past `limit` rows the answer carries `next`."""
    req, pool, tz = await readings_request(
        api, t, tag_id, well, tag, start, end, resolution, max_points, limit, days, cursor
    )
    if accept and "text/csv" in accept:
        await read(pool, replace(req, limit=1), tz)  # errors before 200
        return StreamingResponse(_csv(pool, req, tz), media_type="text/csv")
    return _json_bytes(await readings_json(api, t, req, pool, tz))


async def readings_request(
    api: ApiState,
    t: Tenant,
    tag_id: list[int] | None,
    well: str | None,
    tag: list[str] | None,
    start: datetime | None,
    end: datetime | None,
    resolution: str,
    max_points: int,
    limit: int,
    days: str,
    cursor: str | None,
) -> tuple[ReadRequest, ReadPool, str]:
    """The request a readings call means, with the tenant's read pool and read time zone (the
    route and ``serve_app.hot_reads`` both start here)."""
    end = end or datetime.now(UTC)
    start = start or end - timedelta(hours=1)
    if start >= end:
        raise InvalidQuery("start", "must be before end")
    pool = await api.part(ReadCaches).read_pool(t)
    cat, tags = await _catalog_and_tags(api, t, pool, tag_id, well, tag, MAX_QUERY_TAGS)
    req = ReadRequest(tags, start, end, resolution, max_points, limit, days == "local", cursor)
    return req, pool, cat.timezone


async def readings_json(api: ApiState, t: Tenant, req: ReadRequest, pool: ReadPool, tz: str) -> bytes:
    cache = CacheSlot(api.part(ReadCaches).rollups, t.id)
    return _encode(_shape(await read(pool, req, tz, cache=cache), req, req.resolution))


def _shape(a: ReadAnswer, req: ReadRequest, requested: str) -> dict[str, Any]:
    """``ReadingsOut`` as plain data (encoded by orjson: rows go out as they came)."""
    return {
        "start": req.start,
        "end": req.end,
        "requested": requested,
        "resolution": a.level.value,
        "timezone": a.timezone,
        "fields": a.fields,
        "series": [{**_tag_dict(s.tag), "points": s.points} for s in a.series],
        "next": a.next,
        "raw_dropped_before": a.raw_dropped_before,
        "notices": a.notices,
    }


async def _csv(pool: ReadPool, req: ReadRequest, tz: str) -> AsyncIterator[str]:
    buf = io.StringIO()
    out = csv.writer(buf)
    header = False
    async with connection(pool) as conn:
        async for answer, t, row in stream_rows(conn, req, tz):
            if not header:
                out.writerow(["tag_id", "well", "tag", "unit", "resolution", *answer.fields])
                header = True
            out.writerow(
                [
                    t.tag_id,
                    t.well or "",
                    t.name,
                    t.unit or "",
                    answer.level.value,
                    *("" if v is None else v.isoformat() if isinstance(v, datetime) else v for v in row),
                ]
            )
            if buf.tell() > 64_000:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
    if not header:
        out.writerow(["tag_id", "well", "tag", "unit", "resolution"])
    yield buf.getvalue()


# -- latest values ------------------------------------------------------------------------------
class LatestOut(TagBrief):
    time: datetime | None
    value: float | str | None
    quality: int | None = Field(description="OPC UA StatusCode")
    quality_name: str | None
    age_s: float | None = Field(description="seconds since the reading's source time")
    source: Literal["redis", "database", "none"]


@router.get("/v1/tenants/{tenant}/latest", response_model=list[LatestOut])
async def latest(
    t: HotReadTenant,
    api: Api,
    tag_id: TagIds = None,
    well: Annotated[
        str | None, Query(max_length=NAME_MAX, description="every tag of the well, or those named in `tag`")
    ] = None,
    tag: TagNames = None,
) -> Any:
    """Newest value of each tag: from Redis, or from the database for tags Redis does not hold."""
    return _json_bytes(await latest_json(api, t, tag_id, well, tag))


async def latest_json(
    api: ApiState, t: Tenant, tag_id: list[int] | None, well: str | None, tag: list[str] | None
) -> bytes:
    pool = await api.part(ReadCaches).read_pool(t)
    _, tags = await _catalog_and_tags(api, t, pool, tag_id, well, tag, MAX_LATEST_TAGS)
    values = await latest_values(api.redis(), pool, t.slug, tags)
    now = datetime.now(UTC)
    return _encode(
        [
            {
                **_tag_dict(v.tag),
                "time": v.time,
                "value": v.value,
                "quality": None if v.quality is None else quality_code(v.quality),
                "quality_name": None if v.quality is None else quality_name(v.quality),
                "age_s": None if v.time is None else (now - v.time).total_seconds(),
                "source": v.source,
            }
            for v in values
        ]
    )


# -- wells -------------------------------------------------------------------------------------
class WellOut(BaseModel):
    id: str
    name: str
    external_id: str | None
    created_at: datetime
    tag_count: int


@router.get("/v1/tenants/{tenant}/wells", response_model=list[WellOut], tags=["connections"])
async def wells(t: ReadTenant, api: Api) -> list[WellOut]:
    store = await api.store(t)
    return [WellOut(**w) for w in await list_wells(store.pool)]
