"""Operator actions: the quarantine of each tenant, and the cluster's status."""

from __future__ import annotations

from fastapi import APIRouter

from ingest.core.errors import QuarantinedBatchNotFound
from serve_app.deps import AdminTenant, Api, Caller, ClusterAdmin
from serve_app.errors import error_responses
from serve_app.params import BatchId
from serve_app.schemas import ClusterStatus, QuarantinedBatch, ReplayOut

router = APIRouter(tags=["operations"])


@router.get(
    "/v1/tenants/{tenant}/quarantine",
    response_model=list[QuarantinedBatch],
    responses=error_responses(401, 403, 404, 422, 503),
)
async def list_quarantine(t: AdminTenant, api: Api) -> list[QuarantinedBatch]:
    """Batches the database refused for good, with the reason, kept for inspection and replay."""
    rows = await api.actors.writer(t, "quarantined")
    return [QuarantinedBatch.model_validate(r) for r in rows]


@router.post(
    "/v1/tenants/{tenant}/quarantine/{batch_id}/replay",
    response_model=ReplayOut,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def replay_quarantine(t: AdminTenant, batch_id: BatchId, caller: Caller, api: Api) -> ReplayOut:
    """Try a quarantined batch again (after its cause was fixed)."""
    result = await api.actors.writer(t, "replay_quarantined", batch_id)
    if not result.get("found"):
        raise QuarantinedBatchNotFound(f"no quarantined batch {batch_id!r}")
    await (await api.master()).audit(caller.key_id, t.id, "quarantine.replay", {"batch_id": batch_id})
    return ReplayOut.model_validate(result)


@router.get("/v1/status", response_model=ClusterStatus, responses=error_responses(401, 403, 503))
async def cluster_status(_: ClusterAdmin, api: Api) -> ClusterStatus:
    """Tenants, connections per actor and node, spool depth (cluster admin)."""
    return ClusterStatus.model_validate(await api.actors.coordinator("status"))
