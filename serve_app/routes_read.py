"""Read-side routes: readings at any resolution, latest values, wells, read settings.

Handlers stay thin: parse, authorise, call one ingest.read function, shape the answer.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import redis.asyncio as aioredis
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ingest.core.errors import InvalidQuery
from ingest.core.models import Tenant
from ingest.read.catalog import TagInfo, list_wells, resolve_tags
from ingest.read.latest import age_s, latest_values
from ingest.read.query import ReadAnswer, ReadRequest, quality_code, quality_name, read, stream_rows
from ingest.read.retention import ReadSettings, check_timezone, load_settings, save_settings
from ingest.store.tenant_store import TenantStore
from serve_app.app import Caller, state, tenant_for

MAX_QUERY_TAGS = 100
MAX_LATEST_TAGS = 1000
INT4_MAX = 2**31 - 1


class ErrorDetail(BaseModel):
    field: str
    error: str


class ErrorBody(BaseModel):
    error: str = Field(description="snake_case code")
    message: str
    details: list[ErrorDetail] = []


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "invalid_token"},
    403: {"model": ErrorBody, "description": "another tenant's resource, or a missing scope"},
    404: {"model": ErrorBody, "description": "no such tenant"},
    422: {"model": ErrorBody, "description": "a parameter is invalid; details name it"},
    503: {"model": ErrorBody, "description": "the tenant database is unavailable"},
}

router = APIRouter(tags=["queries"], responses=_ERRORS)
_redis: dict[str, aioredis.Redis] = {}


def _redis_client() -> aioredis.Redis:
    url = state().settings.redis_url
    if url not in _redis:
        _redis[url] = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    return _redis[url]


async def _store(tenant: str, caller: Caller, scope: str = "read") -> tuple[Tenant, TenantStore]:
    t = await tenant_for(tenant, caller, scope)
    return t, await state().store(t)


def _aware(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=UTC)


class TagOut(BaseModel):
    tag_id: int
    name: str
    well: str | None
    unit: str | None
    data_type: str


def _tag(t: TagInfo) -> TagOut:
    return TagOut(tag_id=t.tag_id, name=t.name, well=t.well, unit=t.unit, data_type=t.data_type)


# -- readings ------------------------------------------------------------------------------------
class SeriesOut(TagOut):
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
        None, description="raw readings before this were dropped by retention")
    notices: list[str] = []


TagIds = Annotated[list[Annotated[int, Field(ge=1, le=INT4_MAX)]] | None,
                   Query(description="tag ids; repeatable")]
TagNames = Annotated[list[str] | None, Query(description="tag names within `well`; repeatable",
                                             max_length=200)]


@router.get("/v1/tenants/{tenant}/readings", response_model=ReadingsOut,
            responses={200: {"content": {"text/csv": {}},
                             "description": "JSON, or CSV with `Accept: text/csv`"}})
async def readings(
    tenant: str,
    caller: Caller,
    tag_id: TagIds = None,
    well: Annotated[str | None, Query(max_length=200)] = None,
    tag: TagNames = None,
    start: Annotated[datetime | None, Query(description="ISO 8601; default end - 1 h")] = None,
    end: Annotated[datetime | None, Query(description="ISO 8601; default now")] = None,
    resolution: Literal["auto", "raw", "1m", "1h", "1d"] = "auto",
    max_points: Annotated[int, Query(ge=1, le=100_000, description="per tag, for auto")] = 2000,
    limit: Annotated[int, Query(ge=1, le=100_000, description="rows per answer")] = 10_000,
    days: Annotated[Literal["local", "utc"], Query(
        description="1-day buckets from the tenant's local midnight, or UTC")] = "local",
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    """Readings of one or more tags in [start, end) at a resolution. `auto`: up to 1 day raw, up
    to 7 days 1-minute, up to 30 days 1-hour, beyond that 1-day; coarser while a tag would exceed
    `max_points`. Aggregate rows: bucket start, count, avg, min, max, sum, first and last with
    their times, count of Bad readings (Bad readings and gap markers are never in the numbers).
    Past `limit` rows the answer carries `next`."""
    _, store = await _store(tenant, caller)
    end = _aware(end) if end else datetime.now(UTC)
    start = _aware(start) if start else end - timedelta(hours=1)
    if start >= end:
        raise InvalidQuery("start", "must be before end")
    async with store.pool.acquire() as conn:
        tags = await resolve_tags(conn, tag_id, well, tag, MAX_QUERY_TAGS)
        tz = (await load_settings(conn)).timezone
        req = ReadRequest(tags, start, end, resolution, max_points, limit, days == "local",
                          cursor)
        if accept and "text/csv" in accept:
            await read(conn, ReadRequest(tags, start, end, resolution, max_points, 1,
                                         days == "local", cursor), tz)  # errors before 200
            return StreamingResponse(_csv(store, req, tz), media_type="text/csv")
        answer = await read(conn, req, tz)
    return _shape(answer, req, resolution)


def _shape(a: ReadAnswer, req: ReadRequest, requested: str) -> ReadingsOut:
    return ReadingsOut(
        start=req.start, end=req.end, requested=requested, resolution=a.level.value,
        timezone=a.timezone, fields=a.fields, next=a.next,
        raw_dropped_before=a.raw_dropped_before, notices=a.notices,
        series=[SeriesOut(**_tag(s.tag).model_dump(), points=s.points) for s in a.series])


async def _csv(store: TenantStore, req: ReadRequest, tz: str) -> AsyncIterator[str]:
    buf = io.StringIO()
    out = csv.writer(buf)
    header = False
    async with store.pool.acquire() as conn:
        async for answer, t, row in stream_rows(conn, req, tz):
            if not header:
                out.writerow(["tag_id", "well", "tag", "unit", "resolution", *answer.fields])
                header = True
            out.writerow([t.tag_id, t.well or "", t.name, t.unit or "", answer.level.value,
                          *("" if v is None else v.isoformat() if isinstance(v, datetime) else v
                            for v in row)])
            if buf.tell() > 64_000:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
    if not header:
        out.writerow(["tag_id", "well", "tag", "unit", "resolution"])
    yield buf.getvalue()


# -- latest values ------------------------------------------------------------------------------
class LatestOut(TagOut):
    time: datetime | None
    value: float | str | None
    quality: int | None = Field(description="OPC UA StatusCode")
    quality_name: str | None
    age_s: float | None = Field(description="seconds since the reading's source time")
    source: Literal["redis", "database", "none"]


@router.get("/v1/tenants/{tenant}/latest", response_model=list[LatestOut])
async def latest(
    tenant: str,
    caller: Caller,
    tag_id: TagIds = None,
    well: Annotated[str | None, Query(max_length=200, description="every tag of the well, or "
                                      "those named in `tag`")] = None,
    tag: TagNames = None,
) -> list[LatestOut]:
    """Newest value of each tag: from Redis, or from the database for tags Redis does not hold."""
    t, store = await _store(tenant, caller)
    async with store.pool.acquire() as conn:
        tags = await resolve_tags(conn, tag_id, well, tag, MAX_LATEST_TAGS)
        values = await latest_values(_redis_client(), conn, t.slug, tags)
    now = datetime.now(UTC)
    return [LatestOut(**_tag(v.tag).model_dump(), time=v.time, value=v.value,
                      quality=None if v.quality is None else quality_code(v.quality),
                      quality_name=None if v.quality is None else quality_name(v.quality),
                      age_s=age_s(v, now), source=v.source) for v in values]  # type: ignore[arg-type]


# -- wells -------------------------------------------------------------------------------------
class WellOut(BaseModel):
    id: str
    name: str
    external_id: str | None
    created_at: datetime
    tag_count: int


@router.get("/v1/tenants/{tenant}/wells", response_model=list[WellOut], tags=["connections"])
async def wells(tenant: str, caller: Caller) -> list[WellOut]:
    _, store = await _store(tenant, caller)
    return [WellOut(**w) for w in await list_wells(store.pool)]


# -- read settings -----------------------------------------------------------------------------
class TenantSettingsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timezone: str | None = Field(None, max_length=64, description="IANA zone of 1-day buckets")
    raw_retention_days: int | None = Field(None, gt=0, le=36500, description="default 90")
    rollup_retention_days: int | None = Field(None, gt=0, le=36500, description="default 730")


class TenantSettingsOut(BaseModel):
    id: str
    slug: str
    timezone: str
    raw_retention_days: int
    rollup_retention_days: int


def _settings_out(t: Tenant, s: ReadSettings) -> TenantSettingsOut:
    return TenantSettingsOut(id=t.id, slug=t.slug, timezone=s.timezone,
                             raw_retention_days=s.raw_retention_days,
                             rollup_retention_days=s.rollup_retention_days)


@router.patch("/v1/tenants/{tenant}", response_model=TenantSettingsOut, tags=["tenants"])
async def update_tenant(tenant: str, body: TenantSettingsUpdate,
                        caller: Caller) -> TenantSettingsOut:
    """Change the tenant's time zone (1-day rollups are rebuilt for it) and retention of raw
    readings and of rollups; the retention job applies them at its next run."""
    t, store = await _store(tenant, caller, "admin")
    if body.timezone is not None:
        check_timezone(body.timezone)
    async with store.pool.acquire() as conn:
        s = await save_settings(conn, timezone=body.timezone,
                                raw_retention_days=body.raw_retention_days,
                                rollup_retention_days=body.rollup_retention_days)
    master = await state().master()
    if body.raw_retention_days is not None:
        await master.pool.execute("UPDATE tenants SET retention_days = $2 WHERE id = $1::uuid",
                                  t.id, body.raw_retention_days)
    await master.audit(caller.key_id, t.id, "tenant.update",
                       {"fields": sorted(body.model_fields_set)})
    return _settings_out(t, s)


@router.get("/v1/tenants/{tenant}/settings", response_model=TenantSettingsOut, tags=["tenants"])
async def tenant_settings(tenant: str, caller: Caller) -> TenantSettingsOut:
    t, store = await _store(tenant, caller)
    return _settings_out(t, await load_settings(store.pool))
