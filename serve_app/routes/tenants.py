"""Tenants: created, suspended, changed and deleted by the cluster admin; readable, and their read
settings changeable, by their own admin keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from ingest.core.errors import InsufficientScope, TenantNotFound
from ingest.core.models import Tenant, TenantStatus
from ingest.placement.tenant_keys import drop_tenant_keys_logged
from ingest.read.retention import ReadSettings, check_timezone, load_settings, save_settings
from ingest.store.registration import TenantCreate, TenantStatusUpdate
from serve_app.deps import AdminTenant, Api, Caller, ClusterAdmin, ReadTenant
from serve_app.errors import error_responses
from serve_app.params import TenantRef
from serve_app.routes_read import ReadCaches
from serve_app.schemas import TenantCreated, TenantOut, TenantStatusOut

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


def _out(t: Tenant) -> TenantOut:
    return TenantOut(
        id=t.id,
        slug=t.slug,
        name=t.name,
        status=t.status,
        max_tags=t.max_tags,
        max_connections=t.max_connections,
        server=t.server,
        attached=t.attached,
    )


@router.post("", status_code=201, response_model=TenantCreated, responses=error_responses(401, 403, 409, 422, 503))
async def create_tenant(body: TenantCreate, caller: ClusterAdmin, api: Api) -> TenantCreated:
    """Create a tenant with its own database, on the named `server` or the registered database
    server with the most room; or attach an existing database (`database_url`, `db_user`,
    `db_password`: checked for reachability, TLS, TimescaleDB and grants, then migrated; a 422
    names what is missing). Returns its first admin API key, shown only once."""
    master = await api.master()
    if body.database_url is not None:
        assert body.db_user is not None and body.db_password is not None  # TenantCreate checks it
        tenant, key = await master.attach_tenant(
            body.slug, body.name, body.database_url, body.db_user, body.db_password, body.retention_days
        )
    else:
        tenant, key = await master.create_tenant(body.slug, body.name, body.retention_days, body.server)
    where = {"attached": True} if tenant.attached else {"server": tenant.server}
    await master.audit(caller.key_id, tenant.id, "tenant.create", {"slug": tenant.slug, **where})
    await api.actors.notify_coordinator()
    return TenantCreated(**_out(tenant).model_dump(), api_key=key)


@router.get("", response_model=list[TenantOut], responses=error_responses(401, 503))
async def list_tenants(caller: Caller, api: Api) -> list[TenantOut]:
    """Every tenant for the cluster admin; the caller's own tenant for a tenant key."""
    tenants = await (await api.master()).list_tenants()
    return [_out(t) for t in tenants if caller.is_cluster_admin or t.id == caller.tenant_id]


@router.get("/{tenant}", response_model=TenantOut, responses=error_responses(401, 403, 404, 422, 503))
async def get_tenant(t: ReadTenant) -> TenantOut:
    return _out(t)


@router.put("/{tenant}/status", response_model=TenantStatusOut, responses=error_responses(401, 403, 404, 422, 503))
async def set_tenant_status(
    tenant: TenantRef, body: TenantStatusUpdate, caller: ClusterAdmin, api: Api
) -> TenantStatusOut:
    """Suspend (stop all reading) or resume a tenant."""
    master = await api.master()
    t = await master.get_tenant(tenant)
    await master.set_status(t.id, TenantStatus(body.status))
    await master.audit(caller.key_id, t.id, "tenant.status", {"status": body.status})
    await api.actors.notify_coordinator()
    return TenantStatusOut(id=t.id, slug=t.slug, status=TenantStatus(body.status))


@router.delete(
    "/{tenant}", status_code=204, response_model=None, responses=error_responses(401, 403, 404, 422, 503)
)
async def delete_tenant(
    tenant: TenantRef,
    caller: ClusterAdmin,
    api: Api,
    purge: Annotated[bool, Query(description="drop the database now rather than after the grace period")] = False,
) -> Response:
    """Delete a tenant: ingest stops at once, its keys stop working, and it is gone from every
    route. Its database is dropped after `tenant_purge_grace_days` (default 30), or now with
    `purge=true`, which also purges a tenant deleted earlier whose grace period still runs
    (404 once it is purged). The slug stays taken."""
    master = await api.master()
    try:
        t = await master.get_tenant(tenant)
    except TenantNotFound:
        if not purge:
            raise
        t = await master.get_deleted_tenant(tenant)  # deleted before: only the purge is left
    else:
        await master.delete_tenant(t.id)
        await api.forget_tenant(t.id)
        await api.actors.notify_coordinator()
        await master.audit(caller.key_id, t.id, "tenant.delete", {"slug": t.slug, "purge": purge})
    if purge:
        await master.purge_tenant(t.id)
        keys = await drop_tenant_keys_logged(api.redis(), t.slug, t.id)
        await master.audit(caller.key_id, t.id, "tenant.purge", {"slug": t.slug, "redis_keys": keys})
    return Response(status_code=204)


# -- changes and read settings -------------------------------------------------------------------
class TenantUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    timezone: str | None = Field(None, max_length=64, description="IANA zone of 1-day buckets")
    raw_retention_days: int | None = Field(None, gt=0, le=36500, description="default 90")
    rollup_retention_days: int | None = Field(None, gt=0, le=36500, description="default 730")
    max_tags: int | None = Field(None, gt=0, le=100_000_000, description="quota (cluster admin only)")
    max_connections: int | None = Field(None, gt=0, le=1_000_000, description="quota (cluster admin only)")


class TenantSettingsOut(BaseModel):
    id: str
    slug: str
    name: str
    timezone: str
    raw_retention_days: int
    rollup_retention_days: int
    max_tags: int | None
    max_connections: int | None


def _settings_out(t: Tenant, s: ReadSettings) -> TenantSettingsOut:
    return TenantSettingsOut(
        id=t.id,
        slug=t.slug,
        name=t.name,
        timezone=s.timezone,
        raw_retention_days=s.raw_retention_days,
        rollup_retention_days=s.rollup_retention_days,
        max_tags=t.max_tags,
        max_connections=t.max_connections,
    )


@router.patch("/{tenant}", response_model=TenantSettingsOut, responses=error_responses(401, 403, 404, 422, 503))
async def update_tenant(t: AdminTenant, body: TenantUpdate, caller: Caller, api: Api) -> TenantSettingsOut:
    """Change the tenant's name, time zone (1-day rollups are rebuilt for it), retention of raw
    readings and of rollups (the retention job applies them at its next run), and, with the
    cluster admin key, its quotas."""
    if (body.max_tags is not None or body.max_connections is not None) and not caller.is_cluster_admin:
        raise InsufficientScope("quotas are changed with the cluster admin key")
    store = await api.store(t)
    if body.timezone is not None:
        check_timezone(body.timezone)
    s = await save_settings(
        store.pool,
        timezone=body.timezone,
        raw_retention_days=body.raw_retention_days,
        rollup_retention_days=body.rollup_retention_days,
    )
    api.part(ReadCaches).catalogs.invalidate(t.id)
    master = await api.master()
    if body.raw_retention_days is not None:
        await master.set_retention_days(t.id, body.raw_retention_days)
    if body.name is not None or body.max_tags is not None or body.max_connections is not None:
        t = await master.update_tenant(
            t.id, name=body.name, max_tags=body.max_tags, max_connections=body.max_connections
        )
    await master.audit(caller.key_id, t.id, "tenant.update", {"fields": sorted(body.model_fields_set)})
    return _settings_out(t, s)


@router.get(
    "/{tenant}/settings", response_model=TenantSettingsOut, responses=error_responses(401, 403, 404, 422, 503)
)
async def tenant_settings(t: ReadTenant, api: Api) -> TenantSettingsOut:
    store = await api.store(t)
    return _settings_out(t, await load_settings(store.pool))
