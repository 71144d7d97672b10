"""After a commit: latest value per tag into Redis, the batch's values on the tenant's live
stream (``scada:live:{slug}``, read by the SSE / WebSocket endpoints through ingest.live), and a
compact message per batch on the tenant's pub/sub channel.

Fan-out never blocks or fails a database write: ``submit`` only records what to send (latest
values coalesce per tag, messages queue up to a bound), and a background task sends it, retrying
with backoff while Redis is away. Messages beyond the bound are counted as dropped: pub/sub is a
live feed, the database remains the record.

A live-stream entry holds one committed batch: by default the last value per tag (what a
dashboard shows), every value when ``live_every_value`` is set or while a subscriber of the
tenant asks for every value (``every_key``, refreshed by its session, looked up at most once a
second; such entries carry ``a`` = 1), and the commit time so that commit-to-client latency can
be measured. Text readings get entries of their own, with the text as the value. The hash is
written before the entry in one pipeline, so a reader that sees an entry id also finds that
entry's values in the hash (the snapshot rule in ingest.live.hub). The stream is capped in length
(``MAXLEN ~``, on every XADD) and in age (``XTRIM MINID ~``, at most once a second): Redis trims
whole nodes, so both caps are approximate and a little generous, never short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ingest.core.aio import cancel_and_wait
from ingest.core.backoff import Backoff
from ingest.core.batch import ReadingBatch, TextBatch, per_tag

log = logging.getLogger(__name__)


# A late batch (backfill, spool drain) must not replace a newer latest value: set a tag's field
# only when the stored one is not newer; the answer lists the fields kept, with their times.
# One argument, a JSON array of [tag, value JSON, time µs]: a batch of 1,000 tags as 3,000
# arguments cost more of the writer's CPU to encode (redis-py packs each argument in Python)
# than its COPY did; Redis decodes the one array in C.
# (Times in µs since 1970 stay below 2^53, so Lua's doubles hold them exactly.)
_SET_IF_NEWER = """
local items = cjson.decode(ARGV[1])
local kept = {}
for i = 1, #items do
  local it = items[i]
  local cur = redis.call('HGET', KEYS[1], it[1])
  local cur_t = cur and cjson.decode(cur)['t']
  if (not cur) or cur_t <= it[3] then
    redis.call('HSET', KEYS[1], it[1], it[2])
  else
    kept[#kept + 1] = it[1]
    kept[#kept + 1] = string.format('%.0f', cur_t)
  end
end
return kept
"""
# Values of tags whose field this fan-out itself last set, to an older time: set without looking.
# One argument again, a flat JSON array [tag, value JSON, tag, value JSON, ...], set in runs of
# 500 fields (Lua's unpack has a bound). Checking 1,000 fields cost Redis about 2.5 ms of CPU a
# flush (a cjson.decode of each stored value); setting them without the check, 0.65 ms.
_SET_KNOWN = """
local a = cjson.decode(ARGV[1])
for i = 1, #a, 1000 do
  redis.call('HSET', KEYS[1], unpack(a, i, math.min(i + 999, #a)))
end
return 0
"""


def latest_key(tenant: str) -> str:
    return f"scada:latest:{tenant}"


def channel(tenant: str) -> str:
    return f"scada:readings:{tenant}"


def every_key(tenant: str) -> str:
    """Present (with a TTL its sessions refresh) while a subscriber wants every value."""
    return f"scada:live:every:{tenant}"


EVERY_CHECK_S = 1.0  # how often the writer looks for a subscriber that wants every value


def live_key(tenant: str) -> str:
    """The tenant's live stream: one entry per committed batch, fields ``c`` (commit time, µs
    since the epoch), ``v`` (JSON ``[[tag_id, time_us, value or null, quality], ...]``; the value
    is text for text tags) and ``a`` = 1 when ``v`` holds every value, not the last per tag."""
    return f"scada:live:{tenant}"


class RedisFanout:
    def __init__(
        self,
        client: aioredis.Redis,
        tenant: str,
        *,
        max_messages: int = 1000,
        on_error: Callable[[Exception], None] | None = None,
        live_maxlen: int = 100_000,
        live_max_age_s: float = 3600.0,
        live_every_value: bool = False,
    ) -> None:
        self.client = client
        self.tenant = tenant
        self._latest: dict[int, tuple[int, float, int]] = {}
        # Per tag, the newest time this fan-out has set in the hash. Only this tenant's writer
        # sets its fields, so a newer value of such a tag needs no check against the stored one
        # (and an older one, a late batch's, is not sent). A tag not in it (none after a start)
        # is checked in Redis: a writer before this one may have set a newer value.
        self._set_at: dict[int, int] = {}
        self._messages: deque[str] = deque()
        self._live: deque[tuple[int, bytes, bool]] = deque()
        self._live_maxlen = live_maxlen
        self._live_max_age_ms = int(live_max_age_s * 1000)
        self._live_every_value = live_every_value
        self._every_requested = False  # a subscriber asked for every value (seen in Redis)
        self._every_checked_at = 0.0
        self._trimmed_at = 0.0
        self._max_messages = max_messages
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_error = on_error
        self.errors = 0
        self.dropped_messages = 0
        self.sent_messages = 0
        self.dropped_live = 0
        self.sent_live = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="redis-fanout")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def submit(self, batch: ReadingBatch, commit_us: int | None = None) -> None:
        if len(batch) == 0:
            return
        idx, _ = per_tag(batch.tag_id, batch.time_us, last=True)
        last = list(
            zip(
                batch.tag_id[idx].tolist(),
                batch.time_us[idx].tolist(),
                batch.value[idx].tolist(),
                batch.quality[idx].tolist(),
                strict=True,
            )
        )
        for tag, t, v, q in last:
            prev = self._latest.get(tag)
            if prev is None or t >= prev[0]:
                self._latest[tag] = (t, v, q)
        self._submit_live(batch, last, commit_us)
        if len(self._messages) >= self._max_messages:
            self._messages.popleft()
            self.dropped_messages += 1
        self._messages.append(
            orjson.dumps(
                {
                    "batch_id": batch.batch_id,
                    "rows": len(batch),
                    "tags": len(idx),  # one index per tag
                    "min_time_us": int(batch.time_us.min()),
                    "max_time_us": int(batch.time_us.max()),
                }
            ).decode()
        )
        self._wake.set()

    @property
    def every_value(self) -> bool:
        return self._live_every_value or self._every_requested

    def submit_text(self, batches: list[TextBatch], commit_us: int | None = None) -> None:
        """Committed text readings onto the live stream (the last per tag, or every one)."""
        rows = sorted(
            row
            for b in batches
            for row in zip(b.time_us.tolist(), b.tag_id.tolist(), b.value, b.quality.tolist(), strict=True)
        )
        if not rows:
            return
        every = self.every_value
        if not every:
            rows = list({tag: (t, tag, v, q) for t, tag, v, q in rows}.values())
        self._queue_live(commit_us, orjson.dumps([[tag, t, v, q] for t, tag, v, q in rows]), every)
        self._wake.set()

    def _queue_live(self, commit_us: int | None, values: bytes, every: bool) -> None:
        if len(self._live) >= self._max_messages:
            self._live.popleft()  # a subscriber that resumes across this sees a gap in ids, not a lie
            self.dropped_live += 1
        self._live.append((commit_us or int(time.time() * 1e6), values, every))

    def _submit_live(
        self, batch: ReadingBatch, last: list[tuple[int, int, float, int]], commit_us: int | None
    ) -> None:
        every = self.every_value
        if every:
            order = np.argsort(batch.time_us, kind="stable")
            rows = zip(
                batch.tag_id[order].tolist(),
                batch.time_us[order].tolist(),
                batch.value[order].tolist(),
                batch.quality[order].tolist(),
                strict=True,
            )
            values = [[tag, t, None if v != v else v, q] for tag, t, v, q in rows]
        else:
            values = [[tag, t, None if v != v else v, q] for tag, t, v, q in last]
        self._queue_live(commit_us, orjson.dumps(values), every)

    def _trim_args(self) -> str | None:
        """The MINID for an age trim, at most once a second."""
        now = time.time()
        if self._live_max_age_ms <= 0 or now - self._trimmed_at < 1.0:
            return None
        self._trimmed_at = now
        return f"{int(now * 1000) - self._live_max_age_ms}-0"

    async def _send(self) -> None:
        latest, self._latest = self._latest, {}
        messages = list(self._messages)
        live = list(self._live)
        try:
            async with self.client.pipeline(transaction=False) as p:
                checked_at = self._queue_latest(p, latest) if latest else None
                for commit_us, values, every in live:
                    fields: dict[Any, Any] = {"c": commit_us, "v": values}
                    if every:
                        fields["a"] = 1
                    p.xadd(live_key(self.tenant), fields, maxlen=self._live_maxlen, approximate=True)
                if live and (minid := self._trim_args()) is not None:
                    p.xtrim(live_key(self.tenant), minid=minid, approximate=True)
                for m in messages:
                    p.publish(channel(self.tenant), m)
                check = time.monotonic() - self._every_checked_at >= EVERY_CHECK_S
                if check:
                    p.exists(every_key(self.tenant))
                replies = await p.execute()
            if check:
                self._every_checked_at = time.monotonic()
                self._every_requested = bool(replies[-1])
        except BaseException:
            # Put back what was not sent; newer latest values win over the ones being restored.
            for tag, val in latest.items():
                if tag not in self._latest or self._latest[tag][0] < val[0]:
                    self._latest[tag] = val
            raise
        set_at = self._set_at
        for tag, (t, _v, _q) in latest.items():
            if t > set_at.get(tag, -1):
                set_at[tag] = t
        if checked_at is not None:  # fields Redis kept, holding newer values than these
            kept = replies[checked_at]
            for tag_b, t_b in zip(kept[::2], kept[1::2], strict=True):
                set_at[int(tag_b)] = max(set_at[int(tag_b)], int(t_b))
        for _ in messages:
            self._messages.popleft()
        for _ in live:
            self._live.popleft()
        self.sent_messages += len(messages)
        self.sent_live += len(live)

    def _queue_latest(self, p: Any, latest: dict[int, tuple[int, float, int]]) -> int | None:
        """Latest values into the pipeline: set at once where this fan-out set an older time
        last, checked in Redis where it has set none, left out where it set a newer one.
        Returns the position of the checked ones' command among the pipeline's replies."""
        known: list[str] = []
        checked: list[list[Any]] = []
        set_at = self._set_at
        for tag, (t, v, q) in latest.items():
            last = set_at.get(tag)
            if last is not None and t < last:
                continue  # a late batch's value: the hash holds a newer one
            value = orjson.dumps({"t": t, "v": None if v != v else v, "q": q}).decode()
            if last is None:
                checked.append([str(tag), value, t])
            else:
                known += (str(tag), value)
        key = latest_key(self.tenant)
        if known:
            p.eval(_SET_KNOWN, 1, key, orjson.dumps(known))
        if not checked:
            return None
        p.eval(_SET_IF_NEWER, 1, key, orjson.dumps(checked))
        return 1 if known else 0

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
