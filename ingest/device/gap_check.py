"""Where a new device session may have missed readings, recorded as gap markers, never skipped.

A session that starts after a failover, a move to another actor, an actor restart or an edit may
have missed readings published while no session was reading. For each tag, once its first new
reading arrives, the newest reading stored *before that reading's time* is looked up; if the first
new reading is newer than it, a gap marker (quality Bad_DataLost, value NaN: the count is unknown)
goes in right after the stored one.

Two properties make this hold whatever the cluster is doing:
- The look-up is bounded by the first new reading's own (device) time, so it gives the same answer
  whenever it runs: before or after the new session's readings are committed, and whatever the
  skew between the device's clock and ours.
- A look-up that fails (writer restarting, tenant database away) is retried with backoff until it
  succeeds; it is never given up. The session streams meanwhile; markers go in when known.
  (An earlier version gave up after one failed look-up and wrote no marker: a silent loss.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt

from ingest.core.backoff import Backoff
from ingest.core.batch import per_tag

log = logging.getLogger(__name__)

# tag id -> first new reading's time (µs)  ->  tag id -> newest stored time before it (µs)
LastBefore = Callable[[dict[int, int]], Awaitable[dict[int, int]]]
EmitMarkers = Callable[[npt.NDArray[np.int32], npt.NDArray[np.int64]], None]


class SessionStartGaps:
    """The session-start gap check of one connection (see the module docstring)."""

    def __init__(
        self,
        name: str,
        tag_ids: list[int],
        last_before: LastBefore,
        emit: EmitMarkers,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._unseen = set(tag_ids)  # tags whose first new reading has not arrived yet
        self._waiting: dict[int, int] = {}  # first seen, not yet checked
        self._last_before = last_before
        self._emit = emit
        self._backoff = backoff or Backoff(0.2, 5.0)
        self._wake = asyncio.Event()
        self.failures = 0
        self.markers = 0
        self.last_error: str | None = None

    @property
    def done(self) -> bool:
        return not self._unseen and not self._waiting

    def stand_down(self) -> None:
        """The session itself knows where each tag's stored history ends and reports its gaps
        (an OPC UA session with floors): this check has nothing left to do."""
        self._unseen.clear()
        self._waiting.clear()
        self._wake.set()

    def observe(self, tag_ids: npt.NDArray[np.int32], times: npt.NDArray[np.int64]) -> None:
        """Called with every chunk of new readings (on the session's event loop)."""
        if not self._unseen:
            return
        idx, _ = per_tag(tag_ids, times)
        for tag, first in zip(tag_ids[idx].tolist(), times[idx].tolist(), strict=True):
            if tag in self._unseen:
                self._unseen.discard(tag)
                self._waiting[tag] = first
        if self._waiting:
            self._wake.set()

    async def run(self) -> None:
        """Check tags as their first readings arrive, until every tag has been checked."""
        while not self.done:
            await self._wake.wait()
            self._wake.clear()
            batch = dict(self._waiting)
            if not batch:
                continue
            last = await self._look_up(batch)
            tags, times = [], []
            for tag, first in batch.items():
                self._waiting.pop(tag, None)
                stored = last.get(tag)
                if stored is not None and first > stored + 1:
                    tags.append(tag)
                    times.append(stored + 1)
            if tags:
                self._emit(np.asarray(tags, np.int32), np.asarray(times, np.int64))
                self.markers += len(tags)

    async def _look_up(self, batch: dict[int, int]) -> dict[int, int]:
        while True:
            try:
                result = await self._last_before(batch)
                self._backoff.reset()
                return result
            except asyncio.CancelledError:
                raise
            except Exception as e:  # retried until it succeeds: a skipped check is a silent loss
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"[:300]
                delay = self._backoff.next_delay()
                log.warning(
                    "gap check for %s: stored times unavailable (%s); retrying in %.1f s",
                    self.name,
                    self.last_error,
                    delay,
                )
                await asyncio.sleep(delay)
