"""Path and query parameters, each bounded to the column it ends up in.

A value the column cannot hold is a 422 here, never an asyncpg error (a 500) later: tag ids are
int4, connection ids UUIDs, tenant references a slug or a UUID, times within what both Python and
PostgreSQL can represent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import Path, Query
from pydantic import AfterValidator

INT4_MAX = 2_147_483_647
_EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def as_utc(d: datetime) -> datetime:
    """Naive times are UTC; every time is bounded so that arithmetic on it cannot overflow."""
    try:
        d = d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range") from None
    if not _EARLIEST <= d < _LATEST:
        raise ValueError("must be between 1900-01-01 and 9999-01-01")
    return d


InstantQuery = Annotated[datetime, AfterValidator(as_utc)]

TenantRef = Annotated[
    str,
    Path(
        min_length=2,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="the tenant's slug (or id)",
    ),
]
ConnectionId = Annotated[UUID, Path(description="the connection's id (a UUID)")]
TagId = Annotated[int, Path(ge=1, le=INT4_MAX, description="tag_id from the tag mapping")]
BatchId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        pattern=r"^[!-~]+$",
        description="id of a quarantined batch (printable ASCII)",
    ),
]

TagIdQuery = Annotated[int, Query(ge=1, le=INT4_MAX, description="tag_id from the tag mapping")]
Limit = Annotated[int, Query(ge=1, le=100_000, description="at most this many rows")]
StartQuery = Annotated[
    datetime | None,
    Query(description="ISO 8601; default end - 1 h"),
    AfterValidator(lambda d: None if d is None else as_utc(d)),
]
EndQuery = Annotated[
    datetime | None,
    Query(description="ISO 8601; default now"),
    AfterValidator(lambda d: None if d is None else as_utc(d)),
]
