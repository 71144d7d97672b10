"""The first answer to each idempotency key, kept in Redis, so a retry gets it back.

This is the fast path only: exactly-once in the database rests on the writer's ledger, because
the batch id derives from the key. If Redis lost the answer, the retry is written again, the
ledger finds the id committed, and nothing lands twice; the answer is rebuilt the same way.

While a first request is running, its key holds a "pending" marker; a concurrent retry waits
for the answer (bounded) rather than racing it. A key reused with another body is refused.

A push's claim of its key and the charge of its bytes to the tenant's daily volume are one Lua
call (one round trip, one AOF fsync): the bytes are charged only by the request that claims the
key, never by a retry answered from the first, and a push over the volume limit claims nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ingest.core.translate import translated_methods
from ingest.push.errors import IdempotencyConflict
from ingest.push.limits import VolumeCharge, charge_lua

_PENDING = b"pending"


@dataclass(frozen=True)
class Stored:
    status: int
    body: dict[str, Any]


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


IDEM_PREFIX = "scada:push:idem"

# KEYS: the idempotency key, the volume counter. ARGV: pending marker, its TTL, then charge_lua's.
# {2, answer}: the key is taken (its answer, or a pending marker); {0, used}: over the volume
# limit, nothing claimed or charged; {1, used}: claimed and charged.
_CLAIM = (
    """
local cur = redis.call('GET', KEYS[1])
if cur then return {2, cur} end
"""
    + charge_lua("KEYS[2]", 3)
    + """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {1, used}
"""
)


@translated_methods
class IdempotencyStore:
    def __init__(
        self, redis: aioredis.Redis, prefix: str = IDEM_PREFIX, ttl_s: int = 86_400, pending_ttl_s: int = 120
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.pending_ttl_s = pending_ttl_s
        self._claim = redis.register_script(_CLAIM)

    def _key(self, tenant_id: str, key: str) -> str:
        return f"{self.prefix}:{tenant_id}:{hashlib.sha256(key.encode()).hexdigest()[:40]}"

    async def begin(
        self, tenant_id: str, key: str, digest: str, charge: VolumeCharge, wait_s: float = 30.0
    ) -> Stored | None:
        """None: this request owns the key and must ``finish`` or ``abandon`` it (and ``charge``
        is charged). Otherwise the first request's answer (after waiting for it, if it is still
        running). VolumeLimited when ``charge`` would pass its limit."""
        k = self._key(tenant_id, key)
        args: list[bytes | int] = [_PENDING + b":" + digest.encode(), self.pending_ttl_s, *charge.args()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        delay = 0.02
        while True:
            status, got = await self._claim(keys=[k, charge.key], args=args)
            if int(status) == 0:
                raise charge.refused(int(got))
            if int(status) == 1:
                return None
            raw = got if isinstance(got, bytes) else got.encode()
            if raw.startswith(_PENDING + b":"):
                if raw[len(_PENDING) + 1 :].decode() != digest:
                    raise IdempotencyConflict(
                        "this Idempotency-Key is in use by a request with another body",
                        [{"field": "Idempotency-Key", "error": "reused with another body"}],
                    )
                if loop.time() >= deadline:
                    raise IdempotencyConflict(
                        "the first request with this Idempotency-Key is still running",
                        [{"field": "Idempotency-Key", "error": "request in progress"}],
                        retry_after_s=1,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            stored = json.loads(raw)
            if stored["digest"] != digest:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used before with another body",
                    [{"field": "Idempotency-Key", "error": "reused with another body"}],
                )
            return Stored(stored["status"], stored["body"])

    async def finish(self, tenant_id: str, key: str, digest: str, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps({"digest": digest, "status": status, "body": body})
        await self.redis.set(self._key(tenant_id, key), payload, ex=self.ttl_s)

    async def abandon(self, tenant_id: str, key: str) -> None:
        """The request failed before an answer worth keeping: let a retry run it again."""
        await self.redis.delete(self._key(tenant_id, key))
