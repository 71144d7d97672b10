"""After a commit: latest value per tag into Redis, and a compact message per batch on the
tenant's pub/sub channel.

Fan-out never blocks or fails a database write: ``submit`` only records what to send (latest
values coalesce per tag, messages queue up to a bound), and a background task sends it, retrying
with backoff while Redis is away. Messages beyond the bound are counted as dropped: pub/sub is a
live feed, the database remains the record.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ingest.core.aio import cancel_and_wait
from ingest.core.backoff import Backoff
from ingest.core.batch import ReadingBatch, per_tag

log = logging.getLogger(__name__)


# A late batch (backfill, spool drain) must not replace a newer latest value: set a tag's field
# only when the stored one is not newer. Arguments: tag, value JSON, time (µs), repeated.
_SET_IF_NEWER = """
for i = 1, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if (not cur) or cjson.decode(cur)['t'] <= tonumber(ARGV[i + 2]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""


def latest_key(tenant: str) -> str:
    return f"scada:latest:{tenant}"


def channel(tenant: str) -> str:
    return f"scada:readings:{tenant}"


class RedisFanout:
    def __init__(
        self,
        client: aioredis.Redis,
        tenant: str,
        *,
        max_messages: int = 1000,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.client = client
        self.tenant = tenant
        self._latest: dict[int, tuple[int, float, int]] = {}
        self._messages: deque[str] = deque()
        self._max_messages = max_messages
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_error = on_error
        self.errors = 0
        self.dropped_messages = 0
        self.sent_messages = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="redis-fanout")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def submit(self, batch: ReadingBatch) -> None:
        if len(batch) == 0:
            return
        idx, _ = per_tag(batch.tag_id, batch.time_us, last=True)
        for tag, t, v, q in zip(
            batch.tag_id[idx].tolist(),
            batch.time_us[idx].tolist(),
            batch.value[idx].tolist(),
            batch.quality[idx].tolist(),
            strict=True,
        ):
            prev = self._latest.get(tag)
            if prev is None or t >= prev[0]:
                self._latest[tag] = (t, v, q)
        if len(self._messages) >= self._max_messages:
            self._messages.popleft()
            self.dropped_messages += 1
        self._messages.append(
            json.dumps(
                {
                    "batch_id": batch.batch_id,
                    "rows": len(batch),
                    "tags": int(np.unique(batch.tag_id).shape[0]),
                    "min_time_us": int(batch.time_us.min()),
                    "max_time_us": int(batch.time_us.max()),
                }
            )
        )
        self._wake.set()

    async def _send(self) -> None:
        latest, self._latest = self._latest, {}
        messages = list(self._messages)
        try:
            async with self.client.pipeline(transaction=False) as p:
                if latest:
                    args: list[str | int] = []
                    for tag, (t, v, q) in latest.items():
                        args += [str(tag), json.dumps({"t": t, "v": None if v != v else v, "q": q}), t]
                    p.eval(_SET_IF_NEWER, 1, latest_key(self.tenant), *args)
                for m in messages:
                    p.publish(channel(self.tenant), m)
                await p.execute()
        except BaseException:
            # Put back what was not sent; newer latest values win over the ones being restored.
            for tag, val in latest.items():
                if tag not in self._latest or self._latest[tag][0] < val[0]:
                    self._latest[tag] = val
            raise
        for _ in messages:
            self._messages.popleft()
        self.sent_messages += len(messages)

    async def _run(self) -> None:
        backoff = Backoff(0.2, 10.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._send()
                backoff.reset()
            except (RedisError, OSError) as e:
                self.errors += 1
                if self._on_error is not None:
                    self._on_error(e)
                await asyncio.sleep(backoff.next_delay())
                self._wake.set()
