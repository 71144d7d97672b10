"""A tenant's read pool: the connections the query routes read through."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg

from ingest.core.translate import translated

ReadPool: TypeAlias = asyncpg.Pool


async def _no_reset(conn: asyncpg.Connection) -> None:
    # Read handlers set no session state; only a request cancelled inside a transaction (CSV
    # streaming) leaves something behind.
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


@translated
async def open_read_pool(dsn: str, max_size: int) -> ReadPool:
    """Connections recycled after a minute idle, so a replica does not hold them forever."""
    pool: ReadPool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=max_size, reset=_no_reset, max_inactive_connection_lifetime=60
    )
    return pool
