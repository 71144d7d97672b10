"""Tenants: created and suspended by the cluster admin, readable by their own keys."""

from __future__ import annotations

from fastapi import APIRouter

from ingest.core.models import TenantStatus
from ingest.store.registration import TenantCreate, TenantStatusUpdate
from serve_app.deps import Api, Caller, ClusterAdmin, ReadTenant
from serve_app.errors import error_responses
from serve_app.params import TenantRef
from serve_app.schemas import TenantCreated, TenantOut, TenantStatusOut

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


@router.post("", status_code=201, response_model=TenantCreated, responses=error_responses(401, 403, 409, 422, 503))
async def create_tenant(body: TenantCreate, caller: ClusterAdmin, api: Api) -> TenantCreated:
    """Create a tenant with its own database. Returns its first admin API key, shown only once."""
    master = await api.master()
    tenant, key = await master.create_tenant(body.slug, body.name, body.retention_days)
    await master.audit(caller.key_id, tenant.id, "tenant.create", {"slug": tenant.slug})
    await api.actors.notify_coordinator()
    return TenantCreated(id=tenant.id, slug=tenant.slug, name=tenant.name, status=tenant.status, api_key=key)


@router.get("", response_model=list[TenantOut], responses=error_responses(401, 503))
async def list_tenants(caller: Caller, api: Api) -> list[TenantOut]:
    """Every tenant for the cluster admin; the caller's own tenant for a tenant key."""
    tenants = await (await api.master()).list_tenants()
    return [
        TenantOut(id=t.id, slug=t.slug, name=t.name, status=t.status)
        for t in tenants
        if caller.is_cluster_admin or t.id == caller.tenant_id
    ]


@router.get("/{tenant}", response_model=TenantOut, responses=error_responses(401, 403, 404, 422, 503))
async def get_tenant(t: ReadTenant) -> TenantOut:
    return TenantOut(id=t.id, slug=t.slug, name=t.name, status=t.status)


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
