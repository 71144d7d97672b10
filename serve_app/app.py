"""HTTP API: tenants, credentials, connections and tags, raw queries. OpenAPI at /docs.

Every tenant route checks that the caller's key belongs to that tenant (or is the cluster admin
key) and carries the scope the route needs. Another tenant's resources answer 403.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ingest.core.config import Settings
from ingest.core.errors import (
    AuthError,
    ConnectionNotFound,
    Forbidden,
    IngestError,
    InvalidRegistration,
    StorageUnavailable,
    TagNotFound,
    TenantExists,
    TenantNotFound,
    TenantUnavailable,
)
from ingest.core.models import Tenant, TenantStatus
from ingest.store.master import MasterStore, Principal
from ingest.store.registration import (
    ApiKeyCreate,
    ConnectionCreate,
    ConnectionUpdate,
    TagsCreate,
    TagUpdate,
    TenantCreate,
    TenantStatusUpdate,
)
from ingest.store.tenant_store import TenantStore

log = logging.getLogger(__name__)

app = FastAPI(
    title="scada-ingest",
    version="0.1.0",
    description="Multi-tenant SCADA ingestion: register OPC UA / Modbus devices and tags, query "
    "their readings. Authenticate with `Authorization: Bearer <api key>`.",
)


class ApiState:
    """What the handlers share inside one replica: settings, master store, tenant pools."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._master: MasterStore | None = None
        self._stores: dict[str, TenantStore] = {}
        self._lock = asyncio.Lock()

    async def master(self) -> MasterStore:
        if self._master is None:
            async with self._lock:
                if self._master is None:
                    self._master = await MasterStore.connect(self.settings)
        return self._master

    async def store(self, tenant: Tenant) -> TenantStore:
        if tenant.id not in self._stores:
            master = await self.master()
            try:
                dsn = await master.tenant_dsn(tenant.id)
                self._stores[tenant.id] = await TenantStore.connect(dsn, master.box)
            except OSError as e:
                raise TenantUnavailable(f"tenant database unreachable: {type(e).__name__}") from e
        return self._stores[tenant.id]

    def notify_coordinator(self) -> None:
        try:
            import ray

            from actors.common import COORDINATOR_NAME

            ray.get_actor(COORDINATOR_NAME, namespace=self.settings.namespace).notify.remote()
        except Exception:  # the periodic reconcile picks the change up anyway
            log.warning("coordinator not reachable for notify", exc_info=True)


_state: ApiState | None = None


def configure(settings: Settings) -> None:
    global _state
    _state = ApiState(settings)


def state() -> ApiState:
    if _state is None:
        raise RuntimeError("serve_app.app.configure() was not called")
    return _state


_STATUS = {
    AuthError: 401, Forbidden: 403, TenantNotFound: 404, ConnectionNotFound: 404, TagNotFound: 404,
    TenantExists: 409, InvalidRegistration: 422, TenantUnavailable: 503, StorageUnavailable: 503,
}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@app.exception_handler(IngestError)
async def _ingest_error(_: Request, exc: IngestError) -> JSONResponse:
    code = next((c for t, c in _STATUS.items() if isinstance(exc, t)), 500)
    # DESIGN's one error body; "detail" and "field" stay for clients of the first version.
    body: dict[str, Any] = {"error": _snake(type(exc).__name__), "message": str(exc),
                            "details": [], "detail": str(exc)}
    if isinstance(exc, InvalidRegistration):
        body["field"] = exc.field
        body["details"] = [{"field": exc.field, "error": exc.message}]
    headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
    return JSONResponse(body, status_code=code, headers=headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    def field(loc: tuple[Any, ...]) -> str:
        # A query, path or header parameter by its name (not "tag_id.0"); a body by its path.
        if loc and loc[0] in ("query", "path", "header") and len(loc) > 1:
            return str(loc[1])
        return ".".join(str(p) for p in loc if p != "body")

    details = [{"field": field(tuple(e["loc"])), "error": e["msg"]} for e in exc.errors()]
    names = ", ".join(d["field"] for d in details)
    return JSONResponse({"error": "validation_error", "message": f"invalid: {names}",
                         "details": details, "detail": jsonable_encoder(exc.errors())},
                        status_code=422)


async def principal(
    authorization: Annotated[str | None, Header(description="Bearer <api key>")] = None,
) -> Principal:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise AuthError("missing Authorization: Bearer <api key>")
    return await (await state().master()).authenticate(authorization[7:].strip())


Caller = Annotated[Principal, Depends(principal)]


async def tenant_for(tenant: str, caller: Principal, scope: str) -> Tenant:
    t = await (await state().master()).get_tenant(tenant) if caller.is_cluster_admin else None
    if t is None:
        # Resolve only after the ownership check, so a foreign key learns nothing about others.
        if caller.tenant_id is None:
            raise Forbidden("this key belongs to no tenant")
        try:
            t = await (await state().master()).get_tenant(tenant)
        except TenantNotFound as e:
            raise Forbidden(f"no access to tenant {tenant!r}") from e
        if t.id != caller.tenant_id:
            raise Forbidden(f"no access to tenant {tenant!r}")
        if scope not in caller.scopes and "admin" not in caller.scopes:
            raise Forbidden(f"this key lacks the {scope!r} scope")
    return t


def _require_cluster_admin(caller: Principal) -> None:
    if not caller.is_cluster_admin:
        raise Forbidden("needs the cluster admin key")


# -- health ------------------------------------------------------------------------------------
@app.get("/healthz", tags=["health"])
async def healthz() -> dict[str, Any]:
    master = await state().master()
    await master.pool.fetchval("SELECT 1")
    return {"ok": True}


# -- tenants -----------------------------------------------------------------------------------
@app.post("/v1/tenants", status_code=201, tags=["tenants"])
async def create_tenant(body: TenantCreate, caller: Caller) -> dict[str, Any]:
    """Create a tenant with its own database. Returns its first admin API key, shown only once."""
    _require_cluster_admin(caller)
    master = await state().master()
    tenant, key = await master.create_tenant(body.slug, body.name, body.retention_days)
    await master.audit(caller.key_id, tenant.id, "tenant.create", {"slug": tenant.slug})
    state().notify_coordinator()
    return {"id": tenant.id, "slug": tenant.slug, "name": tenant.name,
            "status": tenant.status.value, "api_key": key}


@app.get("/v1/tenants", tags=["tenants"])
async def list_tenants(caller: Caller) -> list[dict[str, Any]]:
    tenants = await (await state().master()).list_tenants()
    return [
        {"id": t.id, "slug": t.slug, "name": t.name, "status": t.status.value}
        for t in tenants
        if caller.is_cluster_admin or t.id == caller.tenant_id
    ]


@app.get("/v1/tenants/{tenant}", tags=["tenants"])
async def get_tenant(tenant: str, caller: Caller) -> dict[str, Any]:
    t = await tenant_for(tenant, caller, "read")
    return {"id": t.id, "slug": t.slug, "name": t.name, "status": t.status.value}


@app.put("/v1/tenants/{tenant}/status", tags=["tenants"])
async def set_tenant_status(
    tenant: str, body: TenantStatusUpdate, caller: Caller
) -> dict[str, Any]:
    """Suspend (stop all reading) or resume a tenant."""
    _require_cluster_admin(caller)
    master = await state().master()
    t = await master.get_tenant(tenant)
    await master.set_status(t.id, TenantStatus(body.status))
    await master.audit(caller.key_id, t.id, "tenant.status", {"status": body.status})
    state().notify_coordinator()
    return {"id": t.id, "slug": t.slug, "status": body.status}


@app.post("/v1/tenants/{tenant}/keys", status_code=201, tags=["tenants"])
async def create_key(tenant: str, body: ApiKeyCreate, caller: Caller) -> dict[str, Any]:
    """Create an API key for the tenant with the given scopes; the key is shown only once."""
    t = await tenant_for(tenant, caller, "admin")
    master = await state().master()
    key = await master.create_api_key(t.id, body.name, tuple(body.scopes))
    await master.audit(caller.key_id, t.id, "key.create", {"name": body.name,
                                                           "scopes": body.scopes})
    return {"api_key": key, "scopes": body.scopes}


# -- connections and tags -------------------------------------------------------------------------
@app.post("/v1/tenants/{tenant}/connections", status_code=201, tags=["connections"])
async def create_connection(
    tenant: str, body: ConnectionCreate, caller: Caller
) -> dict[str, Any]:
    """Register a device connection with its tags; it starts streaming within seconds."""
    t = await tenant_for(tenant, caller, "admin")
    out = await (await state().store(t)).create_connection(body)
    await (await state().master()).audit(
        caller.key_id, t.id, "connection.create", {"id": out["id"], "tags": len(body.tags)}
    )
    state().notify_coordinator()
    return out


@app.get("/v1/tenants/{tenant}/connections", tags=["connections"])
async def list_connections(tenant: str, caller: Caller) -> list[dict[str, Any]]:
    t = await tenant_for(tenant, caller, "read")
    return await (await state().store(t)).list_connections()


@app.get("/v1/tenants/{tenant}/connections/{connection_id}", tags=["connections"])
async def get_connection(tenant: str, connection_id: str, caller: Caller) -> dict[str, Any]:
    t = await tenant_for(tenant, caller, "read")
    return await (await state().store(t)).get_connection(_uuid(connection_id))


@app.delete("/v1/tenants/{tenant}/connections/{connection_id}", status_code=204,
            tags=["connections"])
async def delete_connection(tenant: str, connection_id: str, caller: Caller) -> None:
    t = await tenant_for(tenant, caller, "admin")
    await (await state().store(t)).delete_connection(_uuid(connection_id))
    await (await state().master()).audit(caller.key_id, t.id, "connection.delete",
                                         {"id": connection_id})
    state().notify_coordinator()


@app.patch("/v1/tenants/{tenant}/connections/{connection_id}", tags=["connections"])
async def update_connection(
    tenant: str, connection_id: str, body: ConnectionUpdate, caller: Caller
) -> dict[str, Any]:
    """Change a connection; only its own session restarts, within seconds."""
    t = await tenant_for(tenant, caller, "admin")
    out = await (await state().store(t)).update_connection(_uuid(connection_id), body)
    await (await state().master()).audit(caller.key_id, t.id, "connection.update",
                                         {"id": connection_id,
                                          "fields": sorted(body.model_fields_set)})
    state().notify_coordinator()
    return out


@app.patch("/v1/tenants/{tenant}/tags/{tag_id}", tags=["connections"])
async def update_tag(tenant: str, tag_id: int, body: TagUpdate, caller: Caller) -> dict[str, Any]:
    t = await tenant_for(tenant, caller, "admin")
    out = await (await state().store(t)).update_tag(tag_id, body)
    state().notify_coordinator()
    return out


@app.delete("/v1/tenants/{tenant}/tags/{tag_id}", status_code=204, tags=["connections"])
async def delete_tag(tenant: str, tag_id: int, caller: Caller) -> None:
    t = await tenant_for(tenant, caller, "admin")
    await (await state().store(t)).delete_tag(tag_id)
    await (await state().master()).audit(caller.key_id, t.id, "tag.delete", {"tag_id": tag_id})
    state().notify_coordinator()


@app.post("/v1/tenants/{tenant}/connections/{connection_id}/tags", status_code=201,
          tags=["connections"])
async def add_tags(
    tenant: str, connection_id: str, body: TagsCreate, caller: Caller
) -> list[dict[str, Any]]:
    t = await tenant_for(tenant, caller, "admin")
    rows = await (await state().store(t)).add_tags(_uuid(connection_id), body.tags)
    state().notify_coordinator()
    return rows


@app.get("/v1/tenants/{tenant}/tags", tags=["connections"])
async def list_tags(tenant: str, caller: Caller) -> list[dict[str, Any]]:
    t = await tenant_for(tenant, caller, "read")
    return await (await state().store(t)).list_tags()


# -- operations ----------------------------------------------------------------------------------
def _writer_actor(t: Tenant) -> Any:
    import ray

    from actors.common import writer_name

    try:
        return ray.get_actor(writer_name(t.slug), namespace=state().settings.namespace)
    except ValueError as e:
        raise TenantUnavailable("the tenant's writer is not running (tenant suspended?)") from e


@app.get("/v1/tenants/{tenant}/quarantine", tags=["operations"])
async def list_quarantine(tenant: str, caller: Caller) -> list[dict[str, Any]]:
    """Batches the database refused for good, with the reason, kept for inspection and replay."""
    t = await tenant_for(tenant, caller, "admin")
    result: list[dict[str, Any]] = await _writer_actor(t).quarantined.remote()
    return result


@app.post("/v1/tenants/{tenant}/quarantine/{batch_id}/replay", tags=["operations"])
async def replay_quarantine(tenant: str, batch_id: str, caller: Caller) -> dict[str, Any]:
    """Try a quarantined batch again (after its cause was fixed)."""
    t = await tenant_for(tenant, caller, "admin")
    result: dict[str, Any] = await _writer_actor(t).replay_quarantined.remote(batch_id)
    if not result.get("found"):
        raise InvalidRegistration("batch_id", f"no quarantined batch {batch_id!r}")
    await (await state().master()).audit(caller.key_id, t.id, "quarantine.replay",
                                         {"batch_id": batch_id})
    return result

@app.get("/v1/status", tags=["operations"])
async def cluster_status(caller: Caller) -> dict[str, Any]:
    _require_cluster_admin(caller)
    import ray

    from actors.common import COORDINATOR_NAME

    coord = ray.get_actor(COORDINATOR_NAME, namespace=state().settings.namespace)
    result: dict[str, Any] = await coord.status.remote()
    return result


def _aware(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _uuid(value: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(value))
    except ValueError as e:
        raise InvalidRegistration("connection_id", "not a UUID") from e


from serve_app.routes_read import router as read_router  # noqa: E402

app.include_router(read_router)

from serve_app.routes_push import push_router  # noqa: E402  (push ingest, audit: its own module)

app.include_router(push_router)
