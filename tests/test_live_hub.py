"""The live stream against the real Redis, without Ray: the writer's fan-out appends, one hub
feeds many subscribers, a resume catches up exactly, caps trim, and a Redis restart under
connected subscribers loses nothing (the stream is in Redis' append-only file)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis

from ingest.core.batch import ReadingBatch, TextBatch
from ingest.core.config import Settings
from ingest.live.events import Entry
from ingest.live.hub import LiveHub
from ingest.live.queue import SubscriberQueue
from ingest.localstack.redis_server import ensure_redis, stop_redis
from ingest.localstack.stack import redis_params
from ingest.write.fanout import EVERY_CHECK_S, RedisFanout, every_key, live_key
from tests.helpers import wait_until


def batch(n: int, tags: tuple[int, ...] = (1, 2), rows_per_tag: int = 3) -> ReadingBatch:
    t = np.array([1_700_000_000_000_000 + n * 1000 + k for _ in tags for k in range(rows_per_tag)], np.int64)
    tag = np.array([x for x in tags for _ in range(rows_per_tag)], np.int32)
    value = np.array([n * 10.0 + k for _ in tags for k in range(rows_per_tag)])
    return ReadingBatch(f"b{n}", t, tag, value, np.zeros(len(t), np.int32))


@pytest.fixture
async def redis_client(stack: Settings) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.from_url(stack.redis_url, socket_timeout=15)
    yield c
    await c.aclose()


async def drain(q: SubscriberQueue, n: int) -> list[Entry]:
    out: list[Entry] = []
    while len(out) < n:
        assert await q.wait(30), f"got {len(out)} of {n} entries"
        assert q.closed is None
        out += q.take()[0]
    return out


async def test_fanout_appends_last_value_per_tag_or_every_value(redis_client: aioredis.Redis) -> None:
    slug = f"h{uuid.uuid4().hex[:8]}"
    f = RedisFanout(redis_client, slug, live_maxlen=1000)
    every = RedisFanout(redis_client, slug + "e", live_every_value=True)
    f.start()
    every.start()
    try:
        f.submit(batch(1), commit_us=123)
        every.submit(batch(1))
        await wait_until(lambda: f.sent_live == 1 and every.sent_live == 1, "entries sent")
    finally:
        await f.stop()
        await every.stop()
    ((eid, fields),) = await redis_client.xrange(live_key(slug))
    e = Entry.from_redis(eid, fields)
    assert e.commit_us == 123 and sorted(v[:3] for v in e.values) == [
        (1, 1_700_000_000_001_002, 12.0),
        (2, 1_700_000_000_001_002, 12.0),
    ]
    ((eid, fields),) = await redis_client.xrange(live_key(slug + "e"))
    assert len(Entry.from_redis(eid, fields).values) == 6
    # The latest hash stays current beside the stream.
    assert await redis_client.hlen(f"scada:latest:{slug}") == 2


async def test_every_value_while_a_subscriber_asks_and_text_readings(redis_client: aioredis.Redis) -> None:
    """A session's every-value request (a key with a TTL) turns every value on for the tenant's
    next entries, marked as such; without it entries carry the last value per tag. Text readings
    get entries of their own."""
    slug = f"h{uuid.uuid4().hex[:8]}"
    f = RedisFanout(redis_client, slug)
    f.start()
    try:
        f.submit(batch(1))
        await wait_until(lambda: f.sent_live == 1, "first entry sent")
        await redis_client.set(every_key(slug), 1, ex=30)
        await asyncio.sleep(EVERY_CHECK_S * 1.5)  # the writer looks at most once a second
        f.submit(batch(2))  # this send looks, and finds the request
        await wait_until(lambda: f.sent_live == 2, "second entry sent")
        f.submit(batch(3))
        texts = TextBatch(
            "t1",
            np.array([10, 20, 30], np.int64),
            np.array([7, 7, 8], np.int32),
            ["open", "closed", "alarm"],
            np.zeros(3, np.int32),
        )
        f.submit_text([texts], commit_us=5)
        await wait_until(lambda: f.sent_live == 4, "every-value and text entries sent")
        await redis_client.delete(every_key(slug))
        await asyncio.sleep(EVERY_CHECK_S * 1.5)
        f.submit(batch(4))
        await wait_until(lambda: f.sent_live == 5, "fifth entry sent")
        f.submit(batch(5))
        f.submit_text([texts])
        await wait_until(lambda: f.sent_live == 7, "last-per-tag entries again")
    finally:
        await f.stop()
    got = [Entry.from_redis(i, x) for i, x in await redis_client.xrange(live_key(slug))]
    assert [(e.every, len(e.values)) for e in got] == [
        (False, 2),
        (False, 2),  # the request is seen when this entry is sent, for the next ones
        (True, 6),
        (True, 3),
        (True, 6),  # the request's end is seen when this one is sent, likewise
        (False, 2),
        (False, 2),
    ]
    assert [v[2] for v in got[3].values] == ["open", "closed", "alarm"]
    assert sorted((v[0], v[2]) for v in got[6].values) == [(7, "closed"), (8, "alarm")]
    # A subscriber that did not ask gets the last value per tag of an every-value entry.
    q, q_every = SubscriberQueue(None), SubscriberQueue(None, every=True)
    for sub in (q, q_every):
        sub.catch_up(got[2])
    assert len(q.take()[0][0].values) == 2 and len(q_every.take()[0][0].values) == 6


async def test_one_feed_many_subscribers_resume_and_caps(redis_client: aioredis.Redis) -> None:
    slug = f"h{uuid.uuid4().hex[:8]}"
    hub = LiveHub(redis_client)
    f = RedisFanout(redis_client, slug, live_maxlen=10)
    f.start()
    try:
        subs = [SubscriberQueue(frozenset({1}) if i % 2 else None, max_entries=1000) for i in range(50)]
        for s in subs:
            pos = await hub.subscribe(slug, s, None)
            assert pos.snapshot_id == "0-0" and pos.reset is None
        assert len(hub.feeds) == 1  # one Redis reader for the tenant, however many subscribers
        for n in range(1, 6):
            f.submit(batch(n))
        got = [await drain(s, 5) for s in subs]
        assert all([e.id for e in g] == [e.id for e in got[0]] for g in got)
        assert {v[0] for e in got[1] for v in e.values} == {1}
        # A late subscriber resuming after the second entry gets 3, 4, 5 and then live ones.
        late = SubscriberQueue(None)
        pos = await hub.subscribe(slug, late, got[0][1].id)
        assert pos.snapshot_id is None
        f.submit(batch(6))
        assert [e.id for e in await drain(late, 4)][:3] == [e.id for e in got[0][2:]]
        # Past the cap the oldest are trimmed: resuming from the first id is refused.
        for n in range(7, 40):
            f.submit(batch(n))
        await wait_until(lambda: f.sent_live == 39, "all sent")
        await redis_client.xtrim(live_key(slug), maxlen=10, approximate=False)
        gone = SubscriberQueue(None)
        pos = await hub.subscribe(slug, gone, got[0][0].id)
        assert pos.reset == "trimmed" and pos.snapshot_id is not None
        future = SubscriberQueue(None)
        pos = await hub.subscribe(slug, future, "99999999999999-0")
        assert pos.reset == "unknown_id"
        for s in [*subs, late, gone, future]:
            await hub.unsubscribe(slug, s)
        assert hub.feeds == {}
    finally:
        await f.stop()
        await hub.close()


async def test_redis_restart_under_subscribers_loses_nothing(
    stack: Settings, redis_client: aioredis.Redis
) -> None:
    slug = f"h{uuid.uuid4().hex[:8]}"
    writer_client = aioredis.from_url(stack.redis_url, socket_timeout=5, socket_connect_timeout=2)
    hub = LiveHub(aioredis.from_url(stack.redis_url, socket_timeout=15, socket_connect_timeout=2))
    f = RedisFanout(writer_client, slug)
    f.start()
    subs = [SubscriberQueue(None, max_entries=10_000) for _ in range(5)]
    try:
        for s in subs:
            await hub.subscribe(slug, s, None)
        for n in range(1, 11):
            f.submit(batch(n))
        await wait_until(lambda: f.sent_live == 10, "first entries sent")
        params = redis_params(stack)
        await asyncio.to_thread(stop_redis, params)
        for n in range(11, 21):  # committed while Redis is down: queued by the fan-out
            f.submit(batch(n))
            await asyncio.sleep(0.05)
        await asyncio.to_thread(ensure_redis, params)
        for n in range(21, 31):
            f.submit(batch(n))
        await wait_until(lambda: f.sent_live == 30, "every entry sent after the restart", timeout_s=60)
        for s in subs:
            entries = await drain(s, 30)
            # Every batch's last values, in commit order: value n*10+2 for batch n.
            assert [e.values[0][2] for e in entries] == [n * 10.0 + 2 for n in range(1, 31)]
        assert f.errors > 0  # it really was away
    finally:
        await f.stop()
        await hub.close()
        await writer_client.aclose()
        await hub.client.aclose()
