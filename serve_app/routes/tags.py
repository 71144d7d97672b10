"""Tag mappings of a tenant, across its connections."""

from __future__ import annotations

from fastapi import APIRouter

from ingest.store.registration import TagUpdate
from serve_app.deps import AdminTenant, Api, Caller, ReadTenant
from serve_app.errors import error_responses
from serve_app.params import TagId
from serve_app.schemas import TagOut

router = APIRouter(prefix="/v1/tenants/{tenant}/tags", tags=["connections"])

_ONE = error_responses(401, 403, 404, 422, 503)


@router.get("", response_model=list[TagOut], responses=_ONE)
async def list_tags(t: ReadTenant, api: Api) -> list[TagOut]:
    return [TagOut.model_validate(r) for r in await (await api.store(t)).list_tags()]


@router.patch("/{tag_id}", response_model=TagOut, responses=error_responses(401, 403, 404, 409, 422, 503))
async def update_tag(t: AdminTenant, tag_id: TagId, body: TagUpdate, caller: Caller, api: Api) -> TagOut:
    """Change a tag in place: its tag_id stays (also for a new well, address or data type), so
    its readings before and after the edit are one series; its session restarts within seconds."""
    out = await (await api.store(t)).update_tag(tag_id, body)
    await (await api.master()).audit(
        caller.key_id, t.id, "tag.update", {"tag_id": tag_id, "fields": sorted(body.model_fields_set)}
    )
    await api.actors.notify_coordinator()
    return TagOut.model_validate(out)


@router.delete("/{tag_id}", status_code=204, response_model=None, responses=_ONE)
async def delete_tag(t: AdminTenant, tag_id: TagId, caller: Caller, api: Api) -> None:
    await (await api.store(t)).delete_tag(tag_id)
    await (await api.master()).audit(caller.key_id, t.id, "tag.delete", {"tag_id": tag_id})
    await api.actors.notify_coordinator()
