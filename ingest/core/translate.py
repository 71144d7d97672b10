"""Where asyncpg's and redis-py's errors become ours: every store, reader, push helper and the
writer go through here.

Two kinds matter above the storage layer: PostgreSQL or Redis is away for now
(``StorageUnavailable``, retriable: spool, back off, answer 503) and a value its column cannot
hold (``UnstorableValue``, answered 422 without echoing the value). Anything else the server says
(a constraint, a bug in our SQL or script) stays the driver's own, so the caller that expects it
can catch it and a surprise is still a loud 500.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

import asyncpg
from redis import exceptions as redis_errors

from ingest.core.errors import Conflict, IngestError, StorageUnavailable, UnstorableValue

# The database went away or refused us for now; the same statement may succeed later.
# (TimeoutError is an OSError: a connect or command timeout is an outage too.)
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    # A database made read-only for now: a tenant's old database during a move (ingest.store.move).
    asyncpg.ReadOnlySQLTransactionError,
)


# Redis is away (or still loading its append-only file); a command may succeed later.
REDIS_TRANSIENT: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
)


def _refused_for_now(e: BaseException) -> bool:
    """A database closed to connections for now (``ALTER DATABASE ... ALLOW_CONNECTIONS false``,
    as a move or an operator does): SQLSTATE 55000 at connect time. The same state at statement
    time means something else (a bug), so the server's wording decides."""
    return type(e) is asyncpg.ObjectNotInPrerequisiteStateError and "accepting connections" in str(e)


def translate(e: BaseException) -> IngestError | None:
    """Ours for an asyncpg, redis-py or socket error, or None when it is not one we translate."""
    if isinstance(e, IngestError):
        return None
    if isinstance(e, REDIS_TRANSIENT):
        return StorageUnavailable(f"redis unavailable: {type(e).__name__}")
    if isinstance(e, TRANSIENT) or _refused_for_now(e):
        return StorageUnavailable(f"database unavailable: {type(e).__name__}")
    if isinstance(e, asyncpg.UniqueViolationError):  # its text quotes the value: not repeated
        return Conflict("name", "a resource with that name exists already")
    if isinstance(e, asyncpg.DataError):  # its text may quote the value: not repeated
        return UnstorableValue("a value does not fit its column (e.g. a NUL character in text, out of range)")
    return None


@asynccontextmanager
async def storage_errors() -> AsyncIterator[None]:
    """Translate what the block raises (see ``translate``)."""
    try:
        yield
    except Exception as e:
        ours = translate(e)
        if ours is None:
            raise
        raise ours from e


@asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection whose failures (to acquire, or of any statement in the block) arrive
    translated."""
    async with storage_errors(), pool.acquire() as conn:
        yield conn


P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)


def translated(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A coroutine function whose driver errors arrive translated."""

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        async with storage_errors():
            return await fn(*args, **kwargs)

    return call


def translated_methods(cls: C) -> C:
    """Class decorator: every public coroutine method translates (a store's whole surface, and
    a method added later too)."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, translated(member))
    return cls
