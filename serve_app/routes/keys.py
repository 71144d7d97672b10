"""API keys of a tenant, each with its scopes (read, ingest, admin)."""

from __future__ import annotations

from fastapi import APIRouter

from ingest.store.registration import ApiKeyCreate
from serve_app.deps import AdminTenant, Api, Caller
from serve_app.errors import error_responses
from serve_app.schemas import KeyCreated

router = APIRouter(prefix="/v1/tenants/{tenant}", tags=["tenants"])


@router.post(
    "/keys", status_code=201, response_model=KeyCreated, responses=error_responses(401, 403, 404, 422, 503)
)
async def create_key(t: AdminTenant, body: ApiKeyCreate, caller: Caller, api: Api) -> KeyCreated:
    """Create an API key for the tenant with the given scopes; the key is shown only once."""
    master = await api.master()
    key = await master.create_api_key(t.id, body.name, tuple(body.scopes))
    await master.audit(caller.key_id, t.id, "key.create", {"name": body.name, "scopes": body.scopes})
    return KeyCreated(api_key=key, scopes=body.scopes)
