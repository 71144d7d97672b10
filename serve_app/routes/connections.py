"""Device connections of a tenant, and the tags registered on them."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from ingest.core.models import Tenant
from ingest.store.registration import ConnectionCreate, ConnectionUpdate, TagsCreate
from serve_app.deps import AdminTenant, Api, Caller, ReadTenant
from serve_app.errors import error_responses
from serve_app.params import ConnectionId
from serve_app.schemas import ConnectionDetail, ConnectionSummary, TagOut
from serve_app.state import ApiState

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/tenants/{tenant}/connections", tags=["connections"])

_ONE = error_responses(401, 403, 404, 422, 503)
_WRITE = error_responses(401, 403, 404, 409, 422, 503)  # 409: a name that exists already, or a quota


@router.post("", status_code=201, response_model=ConnectionDetail, responses=_WRITE)
async def create_connection(t: AdminTenant, body: ConnectionCreate, caller: Caller, api: Api) -> ConnectionDetail:
    """Register a device connection with its tags; it starts streaming within seconds."""
    store = await api.store(t)
    out = await store.create_connection(body, max_tags=t.max_tags, max_connections=t.max_connections)
    await (await api.master()).audit(
        caller.key_id, t.id, "connection.create", {"id": out["id"], "tags": len(body.tags)}
    )
    await api.actors.notify_coordinator()
    return ConnectionDetail.model_validate(out)


async def _live(api: ApiState, t: Tenant) -> dict[str, dict[str, Any]]:
    """The sessions' health as the coordinator last saw it; empty (fields null) while it cannot
    answer: the stored registration is still worth showing."""
    try:
        live: dict[str, dict[str, Any]] = await api.actors.coordinator("connections_live", t.slug, timeout_s=3.0)
    except Exception as e:
        log.info("connection health unavailable: %s", type(e).__name__)
        return {}
    return live


def _health(row: dict[str, Any], live: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not row["enabled"]:
        return {**row, "health": "DISABLED"}
    c = live.get(str(row["id"]))
    if c is None:
        return row
    at = c.get("last_value_at")
    return {
        **row,
        "health": c.get("health"),
        "last_value_at": datetime.fromtimestamp(at, UTC) if at else None,
        "values_per_s": c.get("values_per_s"),
        "reconnects": c.get("reconnects"),
    }


@router.get("", response_model=list[ConnectionSummary], responses=_ONE)
async def list_connections(t: ReadTenant, api: Api) -> list[ConnectionSummary]:
    """Every connection with its health (state, newest value, values/s, reconnects, last error)."""
    rows = await (await api.store(t)).list_connections()
    live = await _live(api, t)
    return [ConnectionSummary.model_validate(_health(r, live)) for r in rows]


@router.get("/{connection_id}", response_model=ConnectionDetail, responses=_ONE)
async def get_connection(t: ReadTenant, connection_id: ConnectionId, api: Api) -> ConnectionDetail:
    row = await (await api.store(t)).get_connection(str(connection_id))
    return ConnectionDetail.model_validate(_health(row, await _live(api, t)))


@router.patch("/{connection_id}", response_model=ConnectionDetail, responses=_WRITE)
async def update_connection(
    t: AdminTenant, connection_id: ConnectionId, body: ConnectionUpdate, caller: Caller, api: Api
) -> ConnectionDetail:
    """Change a connection; only its own session restarts, within seconds."""
    out = await (await api.store(t)).update_connection(str(connection_id), body)
    await (await api.master()).audit(
        caller.key_id,
        t.id,
        "connection.update",
        {"id": str(connection_id), "fields": sorted(body.model_fields_set)},
    )
    await api.actors.notify_coordinator()
    return ConnectionDetail.model_validate(out)


@router.delete("/{connection_id}", status_code=204, response_model=None, responses=_ONE)
async def delete_connection(t: AdminTenant, connection_id: ConnectionId, caller: Caller, api: Api) -> None:
    await (await api.store(t)).delete_connection(str(connection_id))
    await (await api.master()).audit(caller.key_id, t.id, "connection.delete", {"id": str(connection_id)})
    await api.actors.notify_coordinator()


@router.post("/{connection_id}/tags", status_code=201, response_model=list[TagOut], responses=_WRITE)
async def add_tags(t: AdminTenant, connection_id: ConnectionId, body: TagsCreate, api: Api) -> list[TagOut]:
    rows = await (await api.store(t)).add_tags(str(connection_id), body.tags, max_tags=t.max_tags)
    await api.actors.notify_coordinator()
    return [TagOut.model_validate(r) for r in rows]
