"""A purged tenant's Redis keys: every one found (by name and by pattern, past one SCAN batch),
another tenant's left alone, the count reported per tenant."""

from __future__ import annotations

import uuid

import redis

from ingest.core.config import Settings
from ingest.placement.tenant_keys import SCAN_COUNT, drop_keys_of_purged


def _fill(rc: redis.Redis, slug: str, tenant_id: str, idem: int) -> int:
    names = [f"scada:spool:{slug}", f"scada:spool:{slug}:rows", f"scada:quarantine:{slug}:errors"]
    for n in names:
        rc.set(n, "x")
    rc.hset(f"scada:latest:{slug}", "1", "x")
    rc.xadd(f"scada:live:{slug}", {"c": "1", "v": "[]"})
    rc.set(f"scada:push:rate:{tenant_id}:29000000", 3, ex=120)
    rc.set(f"scada:push:volume:{tenant_id}:20000", 10, ex=120)
    with rc.pipeline(transaction=False) as p:
        for i in range(idem):
            p.set(f"scada:push:idem:{tenant_id}:{i:040d}", "{}", ex=600)
        p.execute()
    return len(names) + 4 + idem


async def test_purged_tenants_keys_go_and_no_others(stack: Settings) -> None:
    rc = redis.Redis.from_url(stack.redis_url)
    gone = (str(uuid.uuid4()), f"gone{uuid.uuid4().hex[:8]}")
    kept = (str(uuid.uuid4()), f"kept{uuid.uuid4().hex[:8]}")
    try:
        n = _fill(rc, gone[1], gone[0], SCAN_COUNT + 500)
        m = _fill(rc, kept[1], kept[0], 3)
        assert await drop_keys_of_purged(stack, [gone]) == {gone[0]: n}
        left = [k for k in rc.scan_iter(match="scada:*", count=5000) if gone[0] in str(k) or gone[1] in str(k)]
        assert left == []
        mine = [k for k in rc.scan_iter(match="scada:*", count=5000) if kept[0] in str(k) or kept[1] in str(k)]
        assert len(mine) == m
        assert await drop_keys_of_purged(stack, []) == {}
    finally:
        for pattern in (f"scada:*{kept[0]}*", f"scada:*{kept[1]}*"):
            for k in rc.scan_iter(match=pattern):
                rc.delete(k)
        rc.close()
