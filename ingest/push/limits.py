"""Per-tenant push limits and their counters, held in Redis so every Serve replica sees the same.

Settings (one hash per tenant) and counters live side by side; one Lua call per request reads
the settings and counts the request, a second one charges the body's bytes to the day's volume
once the body is known (in the same call as the idempotency key's claim, when the push has one:
ingest.push.idempotency). The request limit is a fixed one-minute window (seed 002: "100 requests
per minute"); its Retry-After is the time left in the window. The volume limit is per UTC day.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import redis.asyncio as aioredis

from ingest.core.translate import translated_methods
from ingest.push.errors import RateLimited, VolumeLimited

_MB = 1024 * 1024
_DAY_S = 86_400


@dataclass(frozen=True)
class PushSettings:
    """What a tenant may push, with seed 002's defaults, and whether unknown tags are created."""

    requests_per_minute: int = 100
    max_body_bytes: int = 10 * _MB
    max_decompressed_bytes: int = 10 * _MB
    bytes_per_day: int = 1024 * _MB
    max_points: int = 1000
    max_future_s: int = 300  # a point stamped further ahead than this is rejected
    auto_register: bool = False

    @classmethod
    def from_redis(cls, raw: Mapping[Any, Any]) -> PushSettings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            v = raw.get(f.name.encode(), raw.get(f.name))
            if v is not None:
                v = v.decode() if isinstance(v, bytes) else str(v)
                values[f.name] = v == "1" if f.type in ("bool", bool) else int(v)
        return cls(**values)

    def to_redis(self) -> dict[Any, Any]:
        return {k: str(int(v)) for k, v in asdict(self).items()}

    def merged(self, changes: dict[str, Any]) -> PushSettings:
        return replace(self, **changes)


_ADMIT = """
local n = redis.call('INCR', KEYS[2])
if n == 1 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
return {n, redis.call('HGETALL', KEYS[1])}
"""


def charge_lua(key: str, arg: int) -> str:
    """Lua adding ARGV[arg] bytes to the counter at ``key`` (a KEYS[] entry) unless that would
    pass ARGV[arg + 1]: then it returns {0, used}. The counter expires ARGV[arg + 2] seconds
    after its first charge; ``used`` is the new total."""
    return f"""
local used = tonumber(redis.call('GET', {key}) or '0')
local n = tonumber(ARGV[{arg}])
if used + n > tonumber(ARGV[{arg + 1}]) then return {{0, used}} end
used = redis.call('INCRBY', {key}, n)
if used == n then redis.call('EXPIRE', {key}, ARGV[{arg + 2}]) end
"""


_CHARGE = charge_lua("KEYS[1]", 1) + "return {1, used}\n"


@dataclass(frozen=True)
class VolumeCharge:
    """A body's bytes to add to its tenant's volume of the day (``key``), refused past ``limit``."""

    key: str
    n_bytes: int
    limit: int
    retry_after_s: int  # until the UTC day ends
    ttl_s: int = 2 * _DAY_S

    def args(self) -> list[int]:
        """ARGV for ``charge_lua``: bytes, limit, counter expiry."""
        return [self.n_bytes, self.limit, self.ttl_s]

    def refused(self, used: int) -> VolumeLimited:
        return VolumeLimited(
            f"{self.limit} bytes/day limit exceeded ({used} used today)",
            [{"field": "bytes_per_day", "error": f"limit {self.limit}"}],
            retry_after_s=self.retry_after_s,
        )


LIMITS_PREFIX = "scada:push"


def limit_key_patterns(tenant_id: str, prefix: str = LIMITS_PREFIX) -> list[str]:
    """The tenant's limit settings, and its per-minute and per-day counters."""
    return [f"{prefix}:settings:{tenant_id}", f"{prefix}:rate:{tenant_id}:*", f"{prefix}:volume:{tenant_id}:*"]


@translated_methods
class PushLimiter:
    def __init__(self, redis: aioredis.Redis, prefix: str = LIMITS_PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix
        self._admit = redis.register_script(_ADMIT)
        self._charge = redis.register_script(_CHARGE)

    def _settings_key(self, tenant_id: str) -> str:
        return f"{self.prefix}:settings:{tenant_id}"

    async def settings(self, tenant_id: str) -> PushSettings:
        return PushSettings.from_redis(await self.redis.hgetall(self._settings_key(tenant_id)))

    async def update(self, tenant_id: str, changes: dict[str, Any]) -> PushSettings:
        new = (await self.settings(tenant_id)).merged(changes)
        await self.redis.hset(self._settings_key(tenant_id), mapping=new.to_redis())
        return new

    async def admit(self, tenant_id: str, now: float | None = None) -> PushSettings:
        """Count one request; the tenant's settings, or RateLimited past its per-minute limit."""
        now = time.time() if now is None else now
        window = int(now // 60)
        n, raw = await self._admit(
            keys=[self._settings_key(tenant_id), f"{self.prefix}:rate:{tenant_id}:{window}"],
            args=[120],
        )
        pairs = dict(zip(raw[::2], raw[1::2], strict=True))
        settings = PushSettings.from_redis(pairs)
        if int(n) > settings.requests_per_minute:
            retry = max(1, math.ceil((window + 1) * 60 - now))
            raise RateLimited(
                f"{settings.requests_per_minute} requests/minute limit exceeded",
                [{"field": "requests_per_minute", "error": f"limit {settings.requests_per_minute}"}],
                retry_after_s=retry,
            )
        return settings

    def volume_charge(
        self, tenant_id: str, n_bytes: int, settings: PushSettings, now: float | None = None
    ) -> VolumeCharge:
        """``n_bytes`` to charge to today's (UTC) volume, by ``charge`` or together with an
        idempotency key's claim (``IdempotencyStore.begin``)."""
        now = time.time() if now is None else now
        day = int(now // _DAY_S)
        retry = max(1, math.ceil((day + 1) * _DAY_S - now))
        return VolumeCharge(f"{self.prefix}:volume:{tenant_id}:{day}", n_bytes, settings.bytes_per_day, retry)

    async def charge(self, charge: VolumeCharge) -> int:
        """Add the bytes to today's volume; VolumeLimited if that would pass the limit (nothing
        is added then). Returns the day's total."""
        ok, used = await self._charge(keys=[charge.key], args=charge.args())
        if not int(ok):
            raise charge.refused(int(used))
        return int(used)

    async def volume_today(self, tenant_id: str, now: float | None = None) -> int:
        day = int((time.time() if now is None else now) // _DAY_S)
        v = await self.redis.get(f"{self.prefix}:volume:{tenant_id}:{day}")
        return int(v or 0)
