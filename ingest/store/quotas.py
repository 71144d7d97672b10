"""A tenant's quotas, checked in the transaction that adds tags or connections.

Checked after the rows are in and before the commit, under a lock every adding path takes, so
two registrations side by side cannot both slip under the limit, and a refusal leaves nothing
behind (the transaction rolls back). Every path that adds tags goes through here: registration,
tags added to a connection, bulk import, and push auto-registration.
"""

from __future__ import annotations

import asyncpg

from ingest.core.errors import QuotaExceeded

# Any constant works; it only has to be the same for every path of a tenant database.
_QUOTA_LOCK = 0x5CADA + 9


async def lock_quotas(conn: asyncpg.Connection) -> None:
    """Serialise the adding paths of this database until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _QUOTA_LOCK)


async def enforce(conn: asyncpg.Connection, *, max_tags: int | None, max_connections: int | None = None) -> None:
    """Raise ``QuotaExceeded`` naming the quota when the live tags or connections now exceed it.
    Push connections (one per well, made by the push path) do not count as connections."""
    await lock_quotas(conn)
    if max_tags is not None:
        n = await conn.fetchval("SELECT count(*) FROM tag_mappings WHERE deleted_at IS NULL")
        if n > max_tags:
            raise QuotaExceeded("max_tags", f"the tenant may have {max_tags} tags; this would make {n}")
    if max_connections is not None:
        n = await conn.fetchval(
            "SELECT count(*) FROM scada_connections WHERE deleted_at IS NULL AND protocol <> 'push'"
        )
        if n > max_connections:
            raise QuotaExceeded(
                "max_connections", f"the tenant may have {max_connections} connections; this would make {n}"
            )
