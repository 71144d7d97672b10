"""Database servers: where tenant databases are made (cluster admin only). Registered with their
admin credentials, which are stored encrypted and never returned; listed with the room left;
removed only while no tenant database lives there."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from ingest.store.servers import DbServer
from serve_app.deps import Api, ClusterAdmin
from serve_app.errors import error_responses

router = APIRouter(prefix="/v1/servers", tags=["database servers"])

ServerRef = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class ServerRegister(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$", description="how tenants and moves name it")
    host: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:_-]+$")
    port: int = Field(5432, ge=1, le=65535)
    admin_user: str = Field(min_length=1, max_length=63, description="a role with CREATEDB and CREATEROLE")
    admin_password: str = Field(min_length=1, max_length=1000, repr=False, description="stored encrypted")
    tls_mode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    capacity_hint: int = Field(500, gt=0, le=1_000_000, description="tenant databases it should hold")


class ServerOut(BaseModel):
    name: str
    host: str
    port: int
    admin_user: str
    tls_mode: str
    capacity_hint: int
    tenants: int = Field(description="tenant databases on it (soft-deleted ones until purged)")
    room: int = Field(description="capacity_hint minus tenants; placement picks the most")
    timescaledb_edition: str | None = Field(description="apache or timescale, detected at registration")
    timescaledb_version: str | None
    created_at: datetime


def _out(s: DbServer) -> ServerOut:
    return ServerOut(
        name=s.name,
        host=s.host,
        port=s.port,
        admin_user=s.admin_user,
        tls_mode=s.tls_mode,
        capacity_hint=s.capacity_hint,
        tenants=s.tenants,
        room=s.room,
        timescaledb_edition=s.timescaledb_edition,
        timescaledb_version=s.timescaledb_version,
        created_at=s.created_at,
    )


@router.post("", status_code=201, response_model=ServerOut, responses=error_responses(401, 403, 409, 422, 503))
async def register_server(body: ServerRegister, caller: ClusterAdmin, api: Api) -> ServerOut:
    """Register a database server. It is checked first (reachable, TLS as asked, the admin role
    may create databases and roles, TimescaleDB 2.13+ offered) and its edition detected; a 422
    names what is missing."""
    master = await api.master()
    s = await master.register_server(
        body.name, body.host, body.port, body.admin_user, body.admin_password, body.tls_mode, body.capacity_hint
    )
    await master.audit(caller.key_id, None, "server.register", {"name": s.name, "host": s.host, "port": s.port})
    return _out(s)


@router.get("", response_model=list[ServerOut], responses=error_responses(401, 403, 503))
async def list_servers(_: ClusterAdmin, api: Api) -> list[ServerOut]:
    """Every registered server with the room it has left (never a password)."""
    return [_out(s) for s in await (await api.master()).list_servers()]


@router.delete(
    "/{server}", status_code=204, response_model=None, responses=error_responses(401, 403, 404, 409, 503)
)
async def remove_server(server: ServerRef, caller: ClusterAdmin, api: Api) -> Response:
    """Forget a server; 409 while any tenant database (not yet purged) lives on it."""
    master = await api.master()
    s = await master.remove_server(server)
    await master.audit(caller.key_id, None, "server.remove", {"name": s.name})
    return Response(status_code=204)
