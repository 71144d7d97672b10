"""Moving a tenant's database to another registered server, without losing or duplicating a
reading (ingest.store.move): the cluster admin's."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ingest.core.errors import ClusterUnavailable, InvalidRegistration, ServerNotFound, TenantUnavailable
from ingest.core.models import Tenant, TenantStatus
from ingest.store.move import move_database
from ingest.store.registration import ServerName
from serve_app.deps import Api, ClusterAdmin
from serve_app.errors import error_responses
from serve_app.handles import ActorHandles
from serve_app.params import TenantRef

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: ServerName
    drop_source: bool = Field(False, description="drop the old database once the move is verified and switched")


class MoveOut(BaseModel):
    tenant: str
    source: str = Field(description="the server it came from (`attached` for an attached database)")
    target: str
    rows: dict[str, int] = Field(description="rows copied and verified, per table")
    total_rows: int
    days_verified: int = Field(description="per-day checksums compared over the hypertables")
    held_s: float = Field(description="how long new readings waited in the spool")
    spooled_rows_at_release: int = Field(description="rows the writer then drained into the new database")
    seconds: float
    source_dropped: bool


class _Writer:
    """The tenant's writer actor, as ingest.store.move drives it."""

    def __init__(self, actors: ActorHandles, tenant: Tenant) -> None:
        self.actors, self.tenant = actors, tenant

    async def hold(self) -> dict[str, Any]:
        out: dict[str, Any] = await self.actors.writer(self.tenant, "hold")
        return out

    async def release(self) -> dict[str, Any]:
        out: dict[str, Any] = await self.actors.writer(self.tenant, "release")
        return out


@router.post("/{tenant}/move", response_model=MoveOut, responses=error_responses(401, 403, 404, 409, 422, 503))
async def move_tenant(tenant: TenantRef, body: MoveRequest, caller: ClusterAdmin, api: Api) -> MoveOut:
    """Move the tenant's database to another registered server. Readings keep arriving: its
    writer spools them while the data is copied and verified (row counts, per-day checksums),
    then the tenant switches to the new database and the spool drains there. Answers when done."""
    master = await api.master()
    t = await master.get_tenant(tenant)
    try:
        target = await master.get_server(body.server)
    except ServerNotFound as e:
        raise InvalidRegistration("server", str(e)) from e
    where = await master.tenant_location(t.id)
    writer = _Writer(api.actors, t) if t.status is TenantStatus.ACTIVE else None
    if writer is not None:
        try:
            await api.actors.writer(t, "start")
        except (ClusterUnavailable, TenantUnavailable) as e:
            raise TenantUnavailable(f"the tenant's writer must run for a move: {e}") from e
    await master.audit(caller.key_id, t.id, "tenant.move_start", {"from": t.server, "to": target.name})
    try:
        report = await move_database(master, where, target, writer, drop_source=body.drop_source)
    except Exception as e:
        await master.audit(
            caller.key_id, t.id, "tenant.move_failed", {"to": target.name, "error": type(e).__name__}
        )
        raise
    await api.forget_tenant(t.id)
    await api.actors.notify_coordinator()
    out = MoveOut(tenant=t.slug, total_rows=report.total_rows, **vars(report))
    await master.audit(caller.key_id, t.id, "tenant.move", out.model_dump(exclude={"rows"}))
    return out
