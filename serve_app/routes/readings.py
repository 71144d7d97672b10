"""Raw readings of one tag."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter

from ingest.core.errors import InvalidRegistration
from serve_app.deps import Api, ReadTenant
from serve_app.errors import error_responses
from serve_app.params import EndQuery, Limit, StartQuery, TagIdQuery
from serve_app.schemas import Reading, ReadingsOut

router = APIRouter(prefix="/v1/tenants/{tenant}", tags=["queries"])


@router.get("/readings", response_model=ReadingsOut, responses=error_responses(401, 403, 404, 422, 503))
async def readings(
    t: ReadTenant,
    api: Api,
    tag_id: TagIdQuery,
    start: StartQuery = None,
    end: EndQuery = None,
    limit: Limit = 10_000,
) -> ReadingsOut:
    """Raw readings of one tag in [start, end), oldest first."""
    end = end or datetime.now(UTC)
    start = start or end - timedelta(hours=1)
    if start >= end:
        raise InvalidRegistration("start", "must be before end")
    store = await api.store(t)
    if not await store.tag_exists(tag_id):
        raise InvalidRegistration("tag_id", f"no tag {tag_id} in this tenant")
    rows = await store.query_raw(tag_id, start, end, limit)
    return ReadingsOut(
        tag_id=tag_id,
        start=start,
        end=end,
        resolution="raw",
        count=len(rows),
        readings=[Reading.model_validate(r) for r in rows],
    )
