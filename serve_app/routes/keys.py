"""API keys of a tenant, each with its scopes (read, ingest, admin): created (shown once, with an
optional expiry), listed (never the secret), revoked. A revoked or expired key is refused by
every replica within its auth cache's few seconds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from ingest.store.registration import ApiKeyCreate, Scope
from serve_app.deps import AdminTenant, Api, Caller
from serve_app.errors import error_responses
from serve_app.schemas import KeyCreated

router = APIRouter(prefix="/v1/tenants/{tenant}", tags=["tenants"])

KeyId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class KeyOut(BaseModel):
    key_id: str = Field(description="the public part of the key (before the dot); never the secret")
    name: str
    scopes: list[Scope]
    state: Literal["active", "revoked", "expired"]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="to the minute")


def _key(r: dict[str, Any], now: datetime) -> KeyOut:
    state: Literal["active", "revoked", "expired"] = "active"
    if r["revoked_at"] is not None:
        state = "revoked"
    elif r["expires_at"] is not None and r["expires_at"] <= now:
        state = "expired"
    return KeyOut(state=state, **r)


@router.post(
    "/keys", status_code=201, response_model=KeyCreated, responses=error_responses(401, 403, 404, 422, 503)
)
async def create_key(t: AdminTenant, body: ApiKeyCreate, caller: Caller, api: Api) -> KeyCreated:
    """Create an API key for the tenant with the given scopes; the key is shown only once."""
    master = await api.master()
    key = await master.create_api_key(t.id, body.name, tuple(body.scopes), body.expires_at)
    detail: dict[str, Any] = {"name": body.name, "scopes": body.scopes}
    if body.expires_at is not None:
        detail["expires_at"] = body.expires_at.isoformat()
    await master.audit(caller.key_id, t.id, "key.create", detail)
    return KeyCreated(api_key=key, scopes=body.scopes, expires_at=body.expires_at)


@router.get("/keys", response_model=list[KeyOut], responses=error_responses(401, 403, 404, 422, 503))
async def list_keys(t: AdminTenant, api: Api) -> list[KeyOut]:
    """The tenant's keys, revoked and expired ones included, oldest first."""
    now = datetime.now(UTC)
    return [_key(r, now) for r in await (await api.master()).list_keys(t.id)]


@router.delete("/keys/{key_id}", response_model=KeyOut, responses=error_responses(401, 403, 404, 422, 503))
async def revoke_key(t: AdminTenant, key_id: KeyId, caller: Caller, api: Api) -> KeyOut:
    """Revoke a key of the tenant at once (revoking it again changes nothing)."""
    master = await api.master()
    r = await master.revoke_key(t.id, key_id)
    await master.audit(caller.key_id, t.id, "key.revoke", {"key_id": key_id})
    return _key(r, datetime.now(UTC))
