"""Single-use stream tickets: what a browser puts in an SSE or WebSocket URL instead of a key.

Browsers cannot set headers on EventSource or WebSocket, and an API key in a URL ends up in
logs. A ticket is minted for a caller already authenticated with a ``read`` key, names one
tenant, lives ``ttl_s`` seconds in Redis, and is consumed by its first use (GETDEL), so a ticket
found in a log is worthless.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")

_TICKET = re.compile(r"^lt_[A-Za-z0-9_-]{32}$")


def _key(ticket: str) -> str:
    return f"scada:ticket:{ticket}"


async def _retrying(call: Callable[[], Awaitable[T]]) -> T:
    """After a Redis restart the client's pooled connections are dead; the first command on one
    fails although Redis is back. Both commands here are safe to repeat (a fresh random key;
    GETDEL of a key either still there or already gone), so they are tried up to three times."""
    for delay in (0.1, 0.5):
        try:
            return await call()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await asyncio.sleep(delay)
    return await call()


async def issue(client: aioredis.Redis, tenant_id: str, ttl_s: int) -> str:
    ticket = "lt_" + secrets.token_urlsafe(24)
    await _retrying(lambda: client.set(_key(ticket), orjson.dumps({"tenant_id": tenant_id}), ex=ttl_s))
    return ticket


async def redeem(client: aioredis.Redis, ticket: str) -> str | None:
    """The tenant id the ticket was issued for, once; None if malformed, expired or used."""
    if not _TICKET.match(ticket):
        return None
    raw = await _retrying(lambda: client.getdel(_key(ticket)))
    if raw is None:
        return None
    tenant_id: str = orjson.loads(raw)["tenant_id"]
    return tenant_id
