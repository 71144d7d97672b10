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

import asyncio
import hashlib
import logging
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ingest.core.batch import ReadingBatch
from ingest.core.errors import (
    AuthError,
    InvalidRegistration,
    SpoolFull,
    SpoolUnavailable,
    StorageUnavailable,
    TenantNotFound,
)
from ingest.core.models import Tenant, TenantStatus
from ingest.push.audit import list_audit
from ingest.push.body import check_declared_length, read_limited
from ingest.push.errors import (
    InsufficientScope,
    InvalidToken,
    PayloadInvalid,
    PushError,
    PushUnavailable,
)
from ingest.push.idempotency import IdempotencyStore
from ingest.push.limits import PushLimiter, PushSettings
from ingest.push.payload import PushPayload
from ingest.push.service import PushAnswer, PushContext, PushService, Stored
from ingest.push.tags import PushTagCreate, PushTagMap
from ingest.push.units import UnitError
from ingest.store.master import Principal
from serve_app.app import Caller, state, tenant_for

log = logging.getLogger(__name__)

push_router = APIRouter()

_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
_AUTH_CACHE_S = 10.0  # a revoked key keeps pushing for at most this long (one replica)


# -- documented shapes ---------------------------------------------------------------------------
class FieldError(BaseModel):
    field: str
    error: str


class ErrorBody(BaseModel):
    """The API's one error body (seed 002's shape for the push route)."""

    error: str = Field(description="snake_case code", examples=["validation_error"])
    message: str
    details: list[FieldError] = Field(default_factory=list)
    retry_after_seconds: int | None = Field(None, description="on 429 and 503, with Retry-After")


class RejectedPoint(BaseModel):
    index: int = Field(description="position in data_points")
    field: str = Field(examples=["data_points[3].unit"])
    reason: str = Field(examples=["unknown_tag", "unknown_unit", "incompatible_unit",
                                  "timestamp_in_future", "timestamp_out_of_range"])
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
        description="committed to the database, or held in the durable spool until it returns")


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
    400: {"model": ErrorBody, "description": "malformed JSON or not the schema "
                                             "(`validation_error`, details name each field)"},
    401: {"model": ErrorBody, "description": "`invalid_token`"},
    403: {"model": ErrorBody, "description": "`tenant_mismatch` or `insufficient_scope`"},
    409: {"model": ErrorBody, "description": "`idempotency_conflict`: key reused with another "
                                             "body, or its first request still running"},
    413: {"model": ErrorBody, "description": "`payload_too_large`: body or decompressed body "
                                             "over the tenant's limit"},
    415: {"model": ErrorBody, "description": "Content-Encoding other than gzip"},
    429: {"model": ErrorBody, "description": "`rate_limit_exceeded` or `volume_limit_exceeded`"
                                             ", with Retry-After"},
    503: {"model": ErrorBody, "description": "spool full or writer away; with Retry-After"},
}


# -- what one replica keeps --------------------------------------------------------------------
class PushRuntime:
    """Redis-backed limiter and idempotency store, writer handles, tag maps, an auth cache.
    Built by the first push on the replica's event loop."""

    def __init__(self) -> None:
        import redis.asyncio as aioredis

        settings = state().settings
        self.redis = aioredis.from_url(settings.redis_url, socket_timeout=5,
                                       socket_connect_timeout=5)
        self.limiter = PushLimiter(self.redis)
        self.service = PushService(self.limiter, IdempotencyStore(self.redis))
        self._principals: dict[str, tuple[float, Principal]] = {}
        self._tenants: dict[str, tuple[float, Tenant]] = {}
        self._writers: dict[str, Any] = {}
        self._tags: dict[str, PushTagMap] = {}

    async def principal(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise InvalidToken("missing Authorization: Bearer <api key>")
        key = authorization[7:].strip()
        digest = hashlib.sha256(key.encode()).hexdigest()
        hit = self._principals.get(digest)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            p = await (await state().master()).authenticate(key)
        except AuthError:
            raise InvalidToken("API key invalid or revoked") from None
        if len(self._principals) > 10_000:
            self._principals.clear()
        self._principals[digest] = (now + _AUTH_CACHE_S, p)
        return p

    async def tenant(self, tenant_id: str) -> Tenant:
        hit = self._tenants.get(tenant_id)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        t = await (await state().master()).get_tenant(tenant_id)
        self._tenants[tenant_id] = (now + _AUTH_CACHE_S, t)
        return t

    async def tag_map(self, t: Tenant) -> PushTagMap:
        if t.id not in self._tags:
            self._tags[t.id] = PushTagMap((await state().store(t)).pool)
        return self._tags[t.id]

    async def _writer(self, slug: str) -> Any:
        handle = self._writers.get(slug)
        if handle is not None:
            return handle
        import ray

        from actors.common import writer_name

        name, ns = writer_name(slug), state().settings.namespace
        # A tenant created a moment ago gets its writer at the coordinator's next reconcile.
        for _ in range(20):
            try:
                handle = await asyncio.to_thread(ray.get_actor, name, namespace=ns)
                break
            except ValueError:
                await asyncio.sleep(0.25)
        if handle is None:
            raise PushUnavailable("the tenant's writer is not running", retry_after_s=5)
        self._writers[slug] = handle
        return handle

    async def write(self, slug: str, batch: ReadingBatch) -> Stored:
        import ray.exceptions

        handle = await self._writer(slug)
        try:
            r: dict[str, Any] = await handle.write.remote(batch.to_arrow())
        except SpoolFull:
            # Ray re-raises the actor's exception as a subclass of it: the spool is full.
            raise PushUnavailable("the tenant's database is away and its spool is full; "
                                  "nothing was written", retry_after_s=30) from None
        except (SpoolUnavailable, StorageUnavailable):
            raise PushUnavailable("storage unavailable; nothing was written",
                                  retry_after_s=5) from None
        except ray.exceptions.RayActorError:
            self._writers.pop(slug, None)
            raise PushUnavailable("the tenant's writer restarted; retry", retry_after_s=2) from None
        if r["quarantined"]:
            return "quarantined"  # type: ignore[return-value]
        return "spooled" if r["spooled"] else "committed"


_runtime: PushRuntime | None = None


def runtime() -> PushRuntime:
    global _runtime
    if _runtime is None:
        _runtime = PushRuntime()
    return _runtime


def _answer(a: PushAnswer) -> Response:
    headers = {"Idempotent-Replayed": "true"} if a.replayed else None
    return Response(msgspec.json.encode(a.body), status_code=a.status, headers=headers,
                    media_type="application/json")


def _refusal(e: PushError) -> Response:
    headers: dict[str, str] = {}
    if e.retry_after_s is not None:
        headers["Retry-After"] = str(e.retry_after_s)
    if e.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(msgspec.json.encode(e.body()), status_code=e.status, headers=headers,
                    media_type="application/json")


# -- the push route ----------------------------------------------------------------------------
@push_router.post(
    "/v1/ingest/realtime", tags=["push"], response_model=PushResponse, responses=_ERRORS,
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": _REQUEST_SCHEMA}}}},
)
async def ingest_realtime(
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer <api key>, `ingest` scope")]
    = None,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key",
        description="up to 200 printable ASCII characters; a retry with the same key returns "
                    "the first answer and writes nothing again (kept 24 h)")] = None,
    content_length: Annotated[str | None, Header(include_in_schema=False)] = None,
    content_encoding: Annotated[str | None, Header(description="identity or gzip")] = None,
) -> Response:
    """Push up to 1,000 readings (seed 002). 200 once they are committed or durably spooled;
    points that name no tag, carry an unknown or incompatible unit, or a time too far ahead
    are listed in `rejected` while the rest land. Units are converted to the tag's unit."""
    rt = runtime()
    try:
        caller = await rt.principal(authorization)
        if "ingest" not in caller.scopes:
            raise InsufficientScope("this key lacks the 'ingest' scope",
                                    [{"field": "scope", "error": "ingest required"}])
        if idempotency_key is not None and not _KEY.match(idempotency_key):
            raise PayloadInvalid("Invalid Idempotency-Key", [
                {"field": "Idempotency-Key", "error": "1 to 200 printable ASCII characters"}])
        if caller.tenant_id is None:
            raise InsufficientScope("push needs a tenant's key, not the cluster admin key")
        tenant = await rt.tenant(caller.tenant_id)
        if tenant.status is not TenantStatus.ACTIVE:
            raise PushUnavailable("the tenant is suspended", retry_after_s=60)
        settings = await rt.limiter.admit(tenant.id)
        check_declared_length(content_length, settings.max_body_bytes)
        body, _wire = await read_limited(request.stream(), content_encoding,
                                         settings.max_body_bytes,
                                         settings.max_decompressed_bytes)
        ctx = PushContext(tenant.id, tenant.slug, caller.key_id,
                          request.client.host if request.client else None)
        master = await state().master()

        async def audit(action: str, detail: dict[str, Any]) -> None:
            await master.audit(caller.key_id, tenant.id, action, detail)

        async def write(batch: ReadingBatch) -> Stored:
            return await rt.write(tenant.slug, batch)

        answer = await rt.service.push(ctx, settings, body, idempotency_key,
                                       await rt.tag_map(tenant), write, audit)
    except PushError as e:
        return _refusal(e)
    except (TenantNotFound, StorageUnavailable, OSError) as e:
        log.warning("push refused: %s", type(e).__name__)
        return _refusal(PushUnavailable(f"storage unavailable: {type(e).__name__}",
                                        retry_after_s=5))
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


async def _settings_body(t: Tenant, s: PushSettings) -> PushSettingsBody:
    used = await runtime().limiter.volume_today(t.id)
    return PushSettingsBody(**s.to_redis() | {"auto_register": s.auto_register},
                            bytes_today=used)


@push_router.get("/v1/tenants/{tenant}/push/settings", tags=["push"],
                 response_model=PushSettingsBody)
async def get_push_settings(tenant: str, caller: Caller) -> PushSettingsBody:
    t = await tenant_for(tenant, caller, "admin")
    return await _settings_body(t, await runtime().limiter.settings(t.id))


@push_router.patch("/v1/tenants/{tenant}/push/settings", tags=["push"],
                   response_model=PushSettingsBody)
async def update_push_settings(tenant: str, body: PushSettingsUpdate,
                               caller: Caller) -> PushSettingsBody:
    """Change a tenant's push limits (cluster admin) or auto_register (tenant admin)."""
    t = await tenant_for(tenant, caller, "admin")
    changes = body.model_dump(exclude_none=True)
    limits = sorted(set(changes) - {"auto_register"})
    if limits and not caller.is_cluster_admin:
        from ingest.core.errors import Forbidden

        raise Forbidden(f"only the cluster admin changes limits ({', '.join(limits)})")
    s = await runtime().limiter.update(t.id, changes)
    await (await state().master()).audit(caller.key_id, t.id, "push.settings", changes)
    return await _settings_body(t, s)


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


@push_router.post("/v1/tenants/{tenant}/push/tags", status_code=201, tags=["push"],
                  response_model=list[PushTagOut])
async def register_push_tags(tenant: str, body: PushTagsIn, caller: Caller) -> list[PushTagOut]:
    """Register pushed tags by (well_id, parameter_name) with their unit; existing ones are
    returned as they are (`created: false`)."""
    t = await tenant_for(tenant, caller, "admin")
    tags = [PushTagCreate(x.well_id, x.parameter_name, x.unit, x.valid_min, x.valid_max,
                          x.out_of_range) for x in body.tags]
    try:
        out = await (await runtime().tag_map(t)).register(tags)
    except UnitError as e:
        raise InvalidRegistration("tags.unit", str(e)) from None
    new = [c for c in out if c["created"]]
    if new:
        await (await state().master()).audit(caller.key_id, t.id, "tag.create", {
            "by": "push/tags", "count": len(new),
            "tags": [{k: c[k] for k in ("tag_id", "well", "parameter", "unit")}
                     for c in new[:100]]})
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


@push_router.get("/v1/tenants/{tenant}/audit", tags=["operations"], response_model=AuditPage)
async def tenant_audit(
    tenant: str, caller: Caller,
    action: Annotated[str | None, Query(max_length=100, description="exact, or a prefix "
                                        "ending in .* (push.*)")] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=(1 << 63) - 1)] = None,
) -> AuditPage:
    """The tenant's audit log, newest first (admin scope)."""
    t = await tenant_for(tenant, caller, "admin")
    since = since.replace(tzinfo=UTC) if since and since.tzinfo is None else since
    until = until.replace(tzinfo=UTC) if until and until.tzinfo is None else until
    rows, nxt = await list_audit((await state().master()).pool, t.id, action=action,
                                 since=since, until=until, limit=limit, before_id=before_id)
    return AuditPage(items=[AuditRow(**r) for r in rows], next_before_id=nxt)

