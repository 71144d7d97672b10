"""Push ingest over HTTP: ``POST /v1/ingest/realtime`` (seed 002), its per-tenant settings and
pushed-tag registration, and a tenant's audit log.

The push route answers in seed 002's shapes itself (``{"error", "message", "details"}``, 400 for
schema errors) rather than through the app's exception handlers, so its contract does not move
when they do. The tenant routes below it reuse the app's caller and tenant checks.

Order of a push: key (401) -> scope (403) -> request limit (429, before the body is read) ->
declared length (413) -> body read within the size caps while it streams (413) -> the rest in
ingest.push.service (400, 403 tenant_mismatch, 409, 429 volume, 503).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ingest.core.batch import ReadingBatch
from ingest.core.errors import InsufficientScope as NeedsClusterAdmin
from ingest.core.errors import InvalidRegistration, StorageUnavailable, TenantNotFound
from ingest.core.models import Tenant, TenantStatus
from ingest.push.audit import list_audit
from ingest.push.body import check_declared_length, read_limited
from ingest.push.errors import (
    InsufficientScope,
    PayloadInvalid,
    PushError,
    PushUnavailable,
)
from ingest.push.limits import PushSettings
from ingest.push.payload import PushPayload
from ingest.push.service import PushAnswer, PushContext, Stored
from ingest.push.tags import PushTagCreate
from ingest.push.units import UnitError
from serve_app.deps import AdminTenant, Api, Caller
from serve_app.errors import ErrorBody, error_responses
from serve_app.params import InstantQuery
from serve_app.push_runtime import PushRuntime

log = logging.getLogger(__name__)

push_router = APIRouter()
_TENANT_ROUTE = error_responses(401, 403, 404, 422, 503)

_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


# -- documented shapes ---------------------------------------------------------------------------
class RejectedPoint(BaseModel):
    index: int = Field(description="position in data_points")
    field: str = Field(examples=["data_points[3].unit"])
    reason: str = Field(
        examples=[
            "unknown_tag",
            "unknown_unit",
            "incompatible_unit",
            "timestamp_in_future",
            "timestamp_out_of_range",
        ]
    )
    message: str


class PushResponse(BaseModel):
    status: Literal["success", "partial", "rejected"]
    message: str
    tenant_id: str
    ingestion_id: str = Field(description="the Idempotency-Key or ingestion_id when given")
    accepted_count: int
    rejected_count: int
    processing_time_ms: float
    rejected: list[RejectedPoint] = Field(description="the first 100 rejected points")
    stored: Literal["committed", "spooled", "quarantined", "none"] = Field(
        description="committed to the database, or held in the durable spool until it returns"
    )


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """msgspec's JSON schema with its $defs inlined (the OpenAPI document has no $defs)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out: dict[str, Any] = walk(schema)
    return out


_REQUEST_SCHEMA = _inline(msgspec.json.schema(PushPayload))
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "malformed JSON or not the schema (`validation_error`, details name each field)",
    },
    401: {"model": ErrorBody, "description": "`invalid_token`"},
    403: {"model": ErrorBody, "description": "`tenant_mismatch` or `insufficient_scope`"},
    409: {
        "model": ErrorBody,
        "description": "`idempotency_conflict`: key reused with another body, or its first request still running;"
        " `quota_exceeded`: auto-registering its new tags would pass the tenant's `max_tags`",
    },
    413: {
        "model": ErrorBody,
        "description": "`payload_too_large`: body or decompressed body over the tenant's limit",
    },
    415: {"model": ErrorBody, "description": "Content-Encoding other than gzip"},
    429: {"model": ErrorBody, "description": "`rate_limit_exceeded` or `volume_limit_exceeded`, with Retry-After"},
    503: {"model": ErrorBody, "description": "spool full or writer away; with Retry-After"},
}


def _answer(a: PushAnswer) -> Response:
    headers = {"Idempotent-Replayed": "true"} if a.replayed else None
    return Response(
        msgspec.json.encode(a.body), status_code=a.status, headers=headers, media_type="application/json"
    )


def _refusal(e: PushError) -> Response:
    headers: dict[str, str] = {}
    if e.retry_after_s is not None:
        headers["Retry-After"] = str(e.retry_after_s)
    if e.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(
        msgspec.json.encode(e.body()), status_code=e.status, headers=headers, media_type="application/json"
    )


# -- the push route ----------------------------------------------------------------------------
@push_router.post(
    "/v1/ingest/realtime",
    tags=["push"],
    response_model=PushResponse,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST_SCHEMA}}}
    },
)
async def ingest_realtime(
    request: Request,
    api: Api,
    authorization: Annotated[str | None, Header(description="Bearer <api key>, `ingest` scope")] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="up to 200 printable ASCII characters; a retry with the same key returns "
            "the first answer and writes nothing again (kept 24 h)",
        ),
    ] = None,
    content_length: Annotated[str | None, Header(include_in_schema=False)] = None,
    content_encoding: Annotated[str | None, Header(description="identity or gzip")] = None,
) -> Response:
    """Push up to 1,000 readings (seed 002). 200 once they are committed or durably spooled;
    points that name no tag, carry an unknown or incompatible unit, or a time too far ahead
    are listed in `rejected` while the rest land. Units are converted to the tag's unit."""
    rt = api.part(PushRuntime)
    try:
        caller = await rt.principal(authorization)
        if "ingest" not in caller.scopes:
            raise InsufficientScope(
                "this key lacks the 'ingest' scope", [{"field": "scope", "error": "ingest required"}]
            )
        if idempotency_key is not None and not _KEY.match(idempotency_key):
            raise PayloadInvalid(
                "Invalid Idempotency-Key",
                [{"field": "Idempotency-Key", "error": "1 to 200 printable ASCII characters"}],
            )
        if caller.tenant_id is None:
            raise InsufficientScope("push needs a tenant's key, not the cluster admin key")
        tenant = await rt.tenant(caller.tenant_id)
        if tenant.status is not TenantStatus.ACTIVE:
            raise PushUnavailable("the tenant is suspended", retry_after_s=60)
        settings = await rt.limiter.admit(tenant.id)
        check_declared_length(content_length, settings.max_body_bytes)
        body, _wire = await read_limited(
            request.stream(), content_encoding, settings.max_body_bytes, settings.max_decompressed_bytes
        )
        ctx = PushContext(tenant.id, tenant.slug, caller.key_id, request.client.host if request.client else None)

        async def audit(action: str, detail: dict[str, Any]) -> None:
            await rt.audit.write(caller.key_id, tenant.id, action, detail)

        async def write(batch: ReadingBatch) -> Stored:
            return await rt.write(tenant.slug, batch)

        answer = await rt.service.push(
            ctx, settings, body, idempotency_key, await rt.tag_map(tenant), write, audit
        )
    except PushError as e:
        return _refusal(e)
    except (TenantNotFound, StorageUnavailable) as e:
        log.warning("push refused: %s", type(e).__name__)
        return _refusal(PushUnavailable(f"storage unavailable: {type(e).__name__}", retry_after_s=5))
    return _answer(answer)


# -- per-tenant settings, pushed tags, audit -------------------------------------------------------
class PushSettingsBody(BaseModel):
    requests_per_minute: int
    max_body_bytes: int
    max_decompressed_bytes: int
    bytes_per_day: int
    max_points: int
    max_future_s: int
    auto_register: bool
    bytes_today: int = Field(description="volume pushed since 00:00 UTC")


class PushSettingsUpdate(BaseModel):
    """Limits are raised or lowered by the cluster admin; a tenant admin sets auto_register."""

    model_config = ConfigDict(extra="forbid")
    requests_per_minute: int | None = Field(None, ge=1, le=1_000_000)
    max_body_bytes: int | None = Field(None, ge=1024, le=1 << 30)
    max_decompressed_bytes: int | None = Field(None, ge=1024, le=1 << 31)
    bytes_per_day: int | None = Field(None, ge=1024, le=1 << 50)
    max_points: int | None = Field(None, ge=1, le=1_000_000)
    max_future_s: int | None = Field(None, ge=0, le=366 * 86_400)
    auto_register: bool | None = None


async def _settings_body(rt: PushRuntime, t: Tenant, s: PushSettings) -> PushSettingsBody:
    used = await rt.limiter.volume_today(t.id)
    return PushSettingsBody(**s.to_redis() | {"auto_register": s.auto_register}, bytes_today=used)


@push_router.get(
    "/v1/tenants/{tenant}/push/settings", tags=["push"], response_model=PushSettingsBody, responses=_TENANT_ROUTE
)
async def get_push_settings(t: AdminTenant, api: Api) -> PushSettingsBody:
    rt = api.part(PushRuntime)
    return await _settings_body(rt, t, await rt.limiter.settings(t.id))


@push_router.patch(
    "/v1/tenants/{tenant}/push/settings", tags=["push"], response_model=PushSettingsBody, responses=_TENANT_ROUTE
)
async def update_push_settings(
    t: AdminTenant, body: PushSettingsUpdate, caller: Caller, api: Api
) -> PushSettingsBody:
    """Change a tenant's push limits (cluster admin) or auto_register (tenant admin)."""
    rt = api.part(PushRuntime)
    changes = body.model_dump(exclude_none=True)
    limits = sorted(set(changes) - {"auto_register"})
    if limits and not caller.is_cluster_admin:
        raise NeedsClusterAdmin(f"only the cluster admin changes limits ({', '.join(limits)})")
    s = await rt.limiter.update(t.id, changes)
    await (await api.master()).audit(caller.key_id, t.id, "push.settings", changes)
    return await _settings_body(rt, t, s)


class PushTagIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    well_id: str = Field(min_length=1, max_length=200)
    parameter_name: str = Field(min_length=1, max_length=200)
    unit: str | None = Field(None, max_length=32, description="values are converted to it")
    valid_min: float | None = None
    valid_max: float | None = None
    out_of_range: Literal["flag", "reject"] = "flag"


class PushTagsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: list[PushTagIn] = Field(min_length=1, max_length=10_000)


class PushTagOut(BaseModel):
    tag_id: int
    well: str
    parameter: str
    unit: str | None
    created: bool


@push_router.post(
    "/v1/tenants/{tenant}/push/tags",
    status_code=201,
    tags=["push"],
    response_model=list[PushTagOut],
    responses=_TENANT_ROUTE,
)
async def register_push_tags(t: AdminTenant, body: PushTagsIn, caller: Caller, api: Api) -> list[PushTagOut]:
    """Register pushed tags by (well_id, parameter_name) with their unit; existing ones are
    returned as they are (`created: false`)."""
    tags = [
        PushTagCreate(x.well_id, x.parameter_name, x.unit, x.valid_min, x.valid_max, x.out_of_range)
        for x in body.tags
    ]
    try:
        out = await (await api.part(PushRuntime).tag_map(t)).register(tags)
    except UnitError as e:
        raise InvalidRegistration("tags.unit", str(e)) from None
    new = [c for c in out if c["created"]]
    if new:
        await (await api.master()).audit(
            caller.key_id,
            t.id,
            "tag.create",
            {
                "by": "push/tags",
                "count": len(new),
                "tags": [{k: c[k] for k in ("tag_id", "well", "parameter", "unit")} for c in new[:100]],
            },
        )
    return [PushTagOut(**c) for c in out]


class AuditRow(BaseModel):
    id: int
    at: datetime
    key_id: str
    action: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditRow]
    next_before_id: int | None = Field(description="pass as before_id for the next page")


@push_router.get(
    "/v1/tenants/{tenant}/audit", tags=["operations"], response_model=AuditPage, responses=_TENANT_ROUTE
)
async def tenant_audit(
    t: AdminTenant,
    api: Api,
    action: Annotated[
        str | None, Query(max_length=100, description="exact, or a prefix ending in .* (push.*)")
    ] = None,
    since: Annotated[InstantQuery | None, Query(description="ISO 8601, inclusive")] = None,
    until: Annotated[InstantQuery | None, Query(description="ISO 8601, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=(1 << 63) - 1)] = None,
) -> AuditPage:
    """The tenant's audit log, newest first (admin scope)."""
    rows, nxt = await list_audit(
        (await api.master()).pool, t.id, action=action, since=since, until=until, limit=limit, before_id=before_id
    )
    return AuditPage(items=[AuditRow(**r) for r in rows], next_before_id=nxt)
