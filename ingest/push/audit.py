"""A tenant's audit log, paged newest first and filtered by action and time.

Pages are keyed by the row id (``before_id``), not by an offset, so a page stays correct while
new rows arrive; ``next_before_id`` is None on the last page.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from ingest.core.translate import translated


@translated
async def list_audit(
    pool: asyncpg.Pool,
    tenant_id: str,
    *,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """``action`` matches exactly, or as a prefix when it ends with ``.*`` (``push.*``)."""
    prefix = action[:-1] if action is not None and action.endswith(".*") else None
    rows = await pool.fetch(
        """SELECT id, at, actor, action, detail FROM audit_log
           WHERE tenant_id = $1::uuid
             AND ($2::text IS NULL OR action = $2)
             AND ($3::text IS NULL OR starts_with(action, $3))
             AND ($4::timestamptz IS NULL OR at >= $4)
             AND ($5::timestamptz IS NULL OR at < $5)
             AND ($6::int8 IS NULL OR id < $6)
           ORDER BY id DESC LIMIT $7""",
        tenant_id,
        None if prefix is not None else action,
        prefix,
        since,
        until,
        before_id,
        limit + 1,
    )
    more = len(rows) > limit
    out = [
        {
            "id": r["id"],
            "at": r["at"].isoformat(),
            "key_id": r["actor"],
            "action": r["action"],
            "detail": json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"],
        }
        for r in rows[:limit]
    ]
    return out, (out[-1]["id"] if more else None)
