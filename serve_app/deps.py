"""Dependencies every route uses: the replica's state, the caller, and the tenant it may act on.

A route on a tenant's resources takes ``ReadTenant`` / ``IngestTenant`` / ``AdminTenant``: the
tenant is resolved only after the caller's key was checked to belong to it (or to be the cluster
admin key) and to carry the scope. FastAPI resolves these before it validates the body, so a
foreign key gets 403 whatever it sends, and learns nothing about another tenant.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request

from ingest.core.errors import AuthError, InsufficientScope, TenantMismatch, TenantNotFound
from ingest.core.models import Tenant
from ingest.store.credentials import Principal
from ingest.store.registration import Scope
from serve_app.params import TenantRef
from serve_app.state import ApiState


async def api_state(request: Request) -> ApiState:
    # async: FastAPI runs a plain ``def`` dependency on a thread pool, a thread hop per request.
    api = getattr(request.app.state, "api", None)
    if not isinstance(api, ApiState):
        raise RuntimeError(
            "app.state.api is not set: the Serve ingress (serve_app.deployment) or a test must set it"
        )
    return api


Api = Annotated[ApiState, Depends(api_state)]


async def principal(
    api: Api,
    authorization: Annotated[str | None, Header(description="Bearer <api key>")] = None,
) -> Principal:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise AuthError("missing Authorization: Bearer <api key>")
    return await (await api.master()).authenticate(authorization[7:].strip())


Caller = Annotated[Principal, Depends(principal)]


async def cluster_admin(caller: Caller) -> Principal:
    if not caller.is_cluster_admin:
        raise InsufficientScope("needs the cluster admin key")
    return caller


ClusterAdmin = Annotated[Principal, Depends(cluster_admin)]


async def authorize(
    api: ApiState,
    caller: Principal,
    ref: str,
    scope: Scope,
    lookup: Callable[[str], Awaitable[Tenant]] | None = None,
) -> Tenant:
    """The tenant ``ref`` names, if ``caller`` may act on it with ``scope``. ``lookup`` finds
    a tenant by reference (default: the master database; the read routes pass a cache)."""
    get_tenant = lookup or (await api.master()).get_tenant
    if caller.is_cluster_admin:
        return await get_tenant(ref)
    # A tenant that does not exist answers exactly like another tenant's: 403.
    if caller.tenant_id is None:
        raise TenantMismatch("this key belongs to no tenant")
    try:
        tenant = await get_tenant(ref)
    except TenantNotFound as e:
        raise TenantMismatch(f"no access to tenant {ref!r}") from e
    if tenant.id != caller.tenant_id:
        raise TenantMismatch(f"no access to tenant {ref!r}")
    if scope not in caller.scopes and "admin" not in caller.scopes:
        raise InsufficientScope(f"this key lacks the {scope!r} scope")
    return tenant


def tenant_with(scope: Scope) -> Callable[..., Awaitable[Tenant]]:
    async def dependency(tenant: TenantRef, caller: Caller, api: Api) -> Tenant:
        return await authorize(api, caller, tenant, scope)

    dependency.__name__ = f"tenant_with_{scope}"
    return dependency


ReadTenant = Annotated[Tenant, Depends(tenant_with("read"))]
IngestTenant = Annotated[Tenant, Depends(tenant_with("ingest"))]
AdminTenant = Annotated[Tenant, Depends(tenant_with("admin"))]
