"""One replica's memory of the keys it has checked, for the hot routes (readings, latest, push).

A key is remembered for ``AUTH_TTL_S`` and never past its own expiry; a refusal is never
remembered. So a revoked key, an expired one, or one of a deleted tenant is refused by every
replica within ``AUTH_TTL_S``. Entries are keyed by a digest of the key, never the key itself.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from ingest.store.credentials import Principal

AUTH_TTL_S = 2.0
_MAX_ENTRIES = 10_000


class PrincipalCache:
    def __init__(self, ttl_s: float = AUTH_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._hits: dict[str, tuple[float, Principal]] = {}

    def peek(self, key: str) -> Principal | None:
        """The key's principal if this replica checked it less than ``AUTH_TTL_S`` ago."""
        hit = self._hits.get(hashlib.sha256(key.encode()).hexdigest())
        if hit is not None and hit[0] > time.monotonic() and hit[1].valid_at(datetime.now(UTC)):
            return hit[1]
        return None

    async def get(self, key: str, authenticate: Callable[[str], Awaitable[Principal]]) -> Principal:
        hit = self.peek(key)
        if hit is not None:
            return hit
        now = time.monotonic()
        digest = hashlib.sha256(key.encode()).hexdigest()
        p = await authenticate(key)
        if len(self._hits) > _MAX_ENTRIES:
            self._hits.clear()
        self._hits[digest] = (now + self.ttl_s, p)
        return p
