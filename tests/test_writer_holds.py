"""The writer tells a session-start gap check to wait while it still holds older rows of the
tags asked about (queued or being flushed): stored data does not yet end where it will."""

from __future__ import annotations

import asyncio

import numpy as np

from ingest.core.batch import ReadingBatch
from ingest.write.queue import Pending, WriteQueue


def test_holds_older_rows_of_the_tags_asked_about_only() -> None:
    loop = asyncio.new_event_loop()
    try:
        w = WriteQueue()
        times, tags = np.array([100, 200, 300], np.int64), np.array([5, 7, 5], np.int32)
        b = ReadingBatch("b", times, tags, np.zeros(3), np.zeros(3, np.int32))
        w.pending, w.flushing = [], [Pending(b, loop.create_future())]
        assert w.holds_older({5: 101}) and w.holds_older({7: 201}) and w.holds_older({9: 1, 5: 301})
        assert not w.holds_older({5: 100}) and not w.holds_older({7: 200}) and not w.holds_older({9: 10**9})
        assert not w.holds_older({})
        w.pending, w.flushing = w.flushing, []
        assert w.holds_older({5: 101})
    finally:
        loop.close()
