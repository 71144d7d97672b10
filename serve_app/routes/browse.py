"""An OPC UA connection's server: browse its address space, discover its variables as tags."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Query

from ingest.store.discovery import DiscoverRequest, browse_connection, discover_tags
from serve_app.deps import AdminTenant, Api, Caller, ReadTenant
from serve_app.errors import error_responses
from serve_app.params import ConnectionId
from serve_app.schemas import BrowsedNodeOut, BrowseOut, DiscoverOut

router = APIRouter(prefix="/v1/tenants/{tenant}/connections/{connection_id}", tags=["connections"])

# 502: the device did not answer, or answered with an error (`device_unreachable`, `device_error`).
_DEVICE = error_responses(401, 403, 404, 422, 502, 503)
_DISCOVER = error_responses(401, 403, 404, 409, 422, 502, 503)  # 409: the tenant's max_tags


@router.get("/browse", response_model=BrowseOut, responses=_DEVICE)
async def browse(
    t: ReadTenant,
    connection_id: ConnectionId,
    api: Api,
    node: Annotated[str, Query(min_length=1, max_length=500, description="node id; default Objects")] = "i=85",
    limit: Annotated[int, Query(ge=1, le=1000, description="children per page")] = 200,
    page_token: Annotated[str | None, Query(pattern=r"^[0-9]{1,9}$", description="from next_page_token")] = None,
) -> BrowseOut:
    """The children of a node on the connection's OPC UA server (node id, browse name, node
    class, and for variables data type and access level), a page at a time. Connects with the
    connection's own endpoint, security and credentials."""
    offset = int(page_token or 0)
    page = await browse_connection(await api.store(t), t, str(connection_id), node, offset, limit)
    end = offset + len(page.children)
    return BrowseOut(
        node=page.node,
        total=page.total,
        children=[BrowsedNodeOut.model_validate(dataclasses.asdict(c)) for c in page.children],
        next_page_token=str(end) if end < page.total else None,
    )


@router.post("/discover", response_model=DiscoverOut, responses=_DISCOVER)
async def discover(
    t: AdminTenant, connection_id: ConnectionId, body: DiscoverRequest, caller: Caller, api: Api
) -> DiscoverOut:
    """Add as tags every variable below `node` whose browse path matches `pattern`, walking the
    server within its operation limits (MaxNodesPerBrowse, MaxNodesPerRead, continuation
    points). Tags are named by their browse path; `dry_run` lists them and writes nothing."""
    out = await discover_tags(await api.store(t), t, str(connection_id), body)
    if not body.dry_run:
        await (await api.master()).audit(
            caller.key_id,
            t.id,
            "tags.discover",
            {"connection_id": str(connection_id), "pattern": body.pattern, "found": out.found},
        )
        await api.actors.notify_coordinator()
    return DiscoverOut.model_validate(
        {
            **dataclasses.asdict(out),
            "skipped": [{"path": p, "reason": r} for p, r in out.skipped],
        }
    )
