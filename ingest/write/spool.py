"""The durable spool: where a tenant's batches wait while its database is away.

It lives in Redis (AOF with ``appendfsync always``): a batch is acknowledged to its sender as
spooled only once Redis has it on disk, and because Redis is shared by the cluster, a writer actor
restarted on another node finds the spool where the old one left it. Disk on the writer's node
would not survive the node. Entries are Arrow IPC streams that keep the batch id, so the ledger
still recognises a batch that was committed just before a crash and replayed after it. Numeric and
string batches share the one list, so they drain in the order they arrived; the schema of an
entry says which it is.

The spool is bounded in rows; a push that would cross the bound raises SpoolFull, which the writer
passes back to the sender as backpressure.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ingest.core.batch import Batch, ReadingBatch, TextBatch, is_text
from ingest.core.errors import SpoolFull, SpoolUnavailable


def batch_to_bytes(b: Batch) -> bytes:
    rb = b.to_arrow()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rb.schema) as w:
        w.write_batch(rb)
    return bytes(sink.getvalue().to_pybytes())


def batch_from_bytes(data: bytes | str) -> Batch:
    if isinstance(data, str):  # a client built with decode_responses=True
        raise TypeError("the spool's Redis client must return bytes")
    with pa.ipc.open_stream(pa.py_buffer(data)) as r:
        rb = r.read_next_batch().replace_schema_metadata(r.schema.metadata)
        return TextBatch.from_arrow(rb) if is_text(rb) else ReadingBatch.from_arrow(rb)


def spool_keys(tenant: str) -> tuple[str, str]:
    """The spool's list of batches and its row count."""
    return f"scada:spool:{tenant}", f"scada:spool:{tenant}:rows"


def quarantine_keys(tenant: str) -> tuple[str, str]:
    """The quarantined batches and why each was refused."""
    return f"scada:quarantine:{tenant}", f"scada:quarantine:{tenant}:errors"


class RedisSpool:
    def __init__(self, client: aioredis.Redis, tenant: str, max_rows: int) -> None:
        self.client = client
        self.key, self.rows_key = spool_keys(tenant)
        self.max_rows = max_rows

    async def rows(self) -> int:
        try:
            v: Any = await self.client.get(self.rows_key)
        except RedisError as e:
            raise SpoolUnavailable(f"spool unreachable: {type(e).__name__}") from e
        return int(v or 0)

    async def depth(self) -> int:
        try:
            return int(await self.client.llen(self.key))
        except RedisError as e:
            raise SpoolUnavailable(f"spool unreachable: {type(e).__name__}") from e

    async def push(self, batches: list[Batch]) -> int:
        """Append batches in order; returns the spool's rows afterwards."""
        n = sum(len(b) for b in batches)
        current = await self.rows()
        if current + n > self.max_rows:
            raise SpoolFull(f"spool holds {current} rows; {n} more would exceed {self.max_rows}")
        try:
            async with self.client.pipeline(transaction=True) as p:
                p.rpush(self.key, *[batch_to_bytes(b) for b in batches])
                p.incrby(self.rows_key, n)
                res = await p.execute()
        except RedisError as e:
            raise SpoolUnavailable(f"spool unreachable: {type(e).__name__}") from e
        return int(res[1])

    async def peek(self, max_rows: int) -> list[Batch]:
        """The oldest batches, at least one, up to about max_rows rows."""
        out: list[Batch] = []
        rows = 0
        start = 0
        try:
            while rows < max_rows:
                chunk = await self.client.lrange(self.key, start, start + 15)
                if not chunk:
                    break
                for raw in chunk:
                    b = batch_from_bytes(raw)
                    if out and rows + len(b) > max_rows:
                        return out
                    out.append(b)
                    rows += len(b)
                start += len(chunk)
        except RedisError as e:
            raise SpoolUnavailable(f"spool unreachable: {type(e).__name__}") from e
        return out

    async def pop(self, batches: list[Batch]) -> None:
        """Remove the oldest len(batches) entries (those just committed)."""
        try:
            async with self.client.pipeline(transaction=True) as p:
                p.ltrim(self.key, len(batches), -1)
                p.decrby(self.rows_key, sum(len(b) for b in batches))
                await p.execute()
        except RedisError as e:
            raise SpoolUnavailable(f"spool unreachable: {type(e).__name__}") from e


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class Quarantine:
    """Batches the database refused for good, kept where an operator can inspect and replay."""

    def __init__(self, client: aioredis.Redis, tenant: str) -> None:
        self.client = client
        self.key, self.errors_key = quarantine_keys(tenant)

    async def add(self, batch: Batch, error: str) -> None:
        async with self.client.pipeline(transaction=True) as p:
            p.hset(self.key, batch.batch_id, batch_to_bytes(batch))
            p.hset(self.errors_key, batch.batch_id, error[:1000])
            await p.execute()

    async def list(self) -> list[dict[str, Any]]:
        errors = await self.client.hgetall(self.errors_key)
        out = []
        for bid, err in errors.items():
            raw = await self.client.hget(self.key, bid)
            rows = len(batch_from_bytes(raw)) if raw else 0
            out.append({"batch_id": _text(bid), "rows": rows, "error": _text(err)})
        return sorted(out, key=lambda x: x["batch_id"])

    async def take(self, batch_id: str) -> Batch | None:
        raw = await self.client.hget(self.key, batch_id)
        if raw is None:
            return None
        async with self.client.pipeline(transaction=True) as p:
            p.hdel(self.key, batch_id)
            p.hdel(self.errors_key, batch_id)
            await p.execute()
        return batch_from_bytes(raw)
