"""Liveness of what the API depends on: master database, Redis, coordinator."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.deps import Api
from serve_app.errors import RETRY_AFTER_S, ErrorDetail
from serve_app.schemas import Health, HealthDown

router = APIRouter(tags=["health"])


@router.get(
    "/healthz", response_model=Health, responses={503: {"model": HealthDown, "description": "a component is down"}}
)
async def healthz(api: Api) -> Health | JSONResponse:
    """Each component with ok / error; 503 naming those that are down."""
    checks = await api.checks()
    down = [ErrorDetail(field=name, error=c.error or "down") for name, c in checks if not c.ok]
    if not down:
        return Health(ok=True, checks=checks)
    body = HealthDown(
        error="unavailable", message="down: " + ", ".join(d.field for d in down), details=down, checks=checks
    )
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
