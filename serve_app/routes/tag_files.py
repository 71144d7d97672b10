"""Tags of a connection in bulk: import from CSV or JSON (create / merge / replace, dry run) and
export to CSV in the same format (ingest.store.tag_bulk documents the columns)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from ingest.core.errors import InvalidRegistration
from ingest.store.tag_bulk import export_csv, read_csv, read_json
from ingest.store.tag_import import export_tags, import_tags
from serve_app.deps import AdminTenant, Api, Caller, ReadTenant
from serve_app.errors import error_responses
from serve_app.params import ConnectionId
from serve_app.schemas import ImportResult

router = APIRouter(prefix="/v1/tenants/{tenant}/connections/{connection_id}/tags", tags=["connections"])

MAX_IMPORT_BYTES = 32 * 1024 * 1024  # 100,000 tags of a wide CSV fit comfortably
_BODY = {
    "required": True,
    "content": {
        "text/csv": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/TagCreate"}}},
    },
}


@router.post(
    "/import",
    response_model=ImportResult,
    responses=error_responses(401, 403, 404, 409, 422, 503),  # 409: the tenant's max_tags
    openapi_extra={"requestBody": _BODY},
)
async def import_tag_file(
    t: AdminTenant,
    connection_id: ConnectionId,
    request: Request,
    caller: Caller,
    api: Api,
    mode: Annotated[
        Literal["create", "merge", "replace"],
        Query(
            description="create: only new tags; merge: update named tags, add new; replace: also delete the rest"
        ),
    ] = "create",
    dry_run: Annotated[bool, Query(description="check every row and report; write nothing")] = False,
    content_type: Annotated[str | None, Header(description="text/csv or application/json")] = None,
) -> ImportResult:
    """Import tags from a CSV file (header row; `Content-Type: text/csv`) or a JSON list. Each
    row is checked as single registration checks a tag. A dry run reports every bad row by its
    row number (CSV: the header is row 1); an import with a bad row writes nothing (422, each
    row in `details` as `rows.<n>.<field>`). Updated tags keep their tag_id."""
    body = await request.body()
    if len(body) > MAX_IMPORT_BYTES:
        raise InvalidRegistration("body", f"larger than {MAX_IMPORT_BYTES} bytes; split the file")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRegistration("body", "not UTF-8 text") from None
    if "\x00" in text:
        raise InvalidRegistration("body", "must not contain NUL characters")
    if content_type and "json" in content_type.lower():
        try:
            data: Any = json.loads(text)
        except ValueError as e:
            raise InvalidRegistration("body", f"not JSON: {e}") from None
        rows, read_errors = read_json(data)
    else:
        rows, read_errors = await asyncio.to_thread(read_csv, text)
    out = await import_tags(await api.store(t), str(connection_id), rows, mode, dry_run, read_errors, t.max_tags)
    if not dry_run:
        await (await api.master()).audit(
            caller.key_id,
            t.id,
            "tags.import",
            {
                "connection_id": str(connection_id),
                "mode": mode,
                "created": out.created,
                "updated": out.updated,
                "deleted": out.deleted,
            },
        )
        await api.actors.notify_coordinator()
    return ImportResult.model_validate(out, from_attributes=True)


@router.get(
    "/export",
    response_model=str,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "the tags as CSV"},
        **error_responses(401, 403, 404, 422, 503),
    },
)
async def export_tag_file(t: ReadTenant, connection_id: ConnectionId, api: Api) -> Response:
    """The connection's tags as CSV in the import format; importing it back changes nothing."""
    tags = await export_tags(await api.store(t), str(connection_id))
    return Response(export_csv(tags), media_type="text/csv")
