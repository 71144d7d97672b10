"""Names and options shared by the actors."""

from __future__ import annotations

COORDINATOR_NAME = "coordinator"


def writer_name(tenant_slug: str) -> str:
    return f"writer-{tenant_slug}"


# Health checks get their own concurrency group so a busy actor still answers them.
CONCURRENCY_GROUPS = {"health": 2, "data": 64}
