"""One subscriber's bounded queue: on overflow, conflate to the latest value per tag.

A subscriber that reads slower than its tenant commits must neither grow memory without bound
nor slow the feed that serves every other subscriber of the tenant. So the feed only ``offer``s
(never waits); past ``max_entries`` queued, everything queued collapses into one entry holding
the latest value per tag, and the consumer is told (``conflated``). A subscriber that keeps
overflowing for ``max_lag_s`` (it takes the queue and is still conflating) is closed; a client
reconnects with its last id and resumes, or gets a reset and a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ingest.live.events import Entry, conflate


class SubscriberQueue:
    def __init__(
        self,
        tags: frozenset[int] | None,
        *,
        max_entries: int = 256,
        max_lag_s: float = 30.0,
        on_conflated: Callable[[int], None] | None = None,
        every: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 2:
            raise ValueError("max_entries must be at least 2")
        self.tags = tags
        self.every = every  # wants every value; else the last per tag of each entry
        self.max_entries = max_entries
        self.max_lag_s = max_lag_s
        self.cursor: tuple[int, int] = (0, 0)  # the newest id accepted into the queue
        self._entries: list[Entry] = []
        self._skipped = 0  # updates folded away since the last take
        self._lag_since: float | None = None
        self._held: list[Entry] | None = None
        self._on_conflated = on_conflated
        self._clock = clock
        self._wake = asyncio.Event()
        self.closed: str | None = None  # why it was closed, once closed
        self.conflated_total = 0

    # -- the feed's side ---------------------------------------------------------------------
    def hold(self) -> None:
        """Buffer what the feed offers (while a catch-up read runs) until ``release``."""
        self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for e in held:
            self.offer(e)

    def offer(self, entry: Entry) -> None:
        if self._held is not None:
            self._held.append(entry)
            return
        self.catch_up(entry)

    def catch_up(self, entry: Entry) -> None:
        """Queue ``entry`` now, even while the feed's entries are held (the catch-up read)."""
        if self.closed is not None:
            return
        if entry.key <= self.cursor:
            return  # already delivered (a catch-up read and the feed overlap)
        self.cursor = entry.key
        mine = entry.only(self.tags)
        if mine is None:
            return
        if not self.every:
            mine = mine.last_per_tag()
        if len(self._entries) >= self.max_entries:
            skipped = len(self._entries) - 1
            self._entries = [conflate(self._entries)]
            self._skipped += skipped
            self.conflated_total += skipped
            if self._on_conflated is not None:
                self._on_conflated(skipped)
            now = self._clock()
            if self._lag_since is None:
                self._lag_since = now
            elif now - self._lag_since > self.max_lag_s:
                self.close("lagging")
                return
        self._entries.append(mine)
        self._wake.set()

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self._entries = []
        self._wake.set()

    # -- the connection's side ---------------------------------------------------------------
    def take(self) -> tuple[list[Entry], int]:
        """Everything queued, and how many updates were folded into it since the last take."""
        entries, skipped = self._entries, self._skipped
        self._entries, self._skipped = [], 0
        if skipped == 0:
            self._lag_since = None  # caught up without conflating: the lag was not sustained
        self._wake.clear()
        return entries, skipped

    async def wait(self, timeout_s: float) -> bool:
        """Wait until something is queued (or the queue is closed); False on timeout."""
        if self._entries or self.closed is not None:
            return True
        try:
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._entries)
