"""A sender's batches settle in the order it cut them: never one while an older one is unsettled.

Why it matters: where a new device session starts reading, each tag's stored history is taken to
end at its newest stored reading. The session-start gap check puts its marker after it
(ingest.device.gap_check), and an OPC UA subscription carried on by a new owner drops republished
readings at or before it (the floors of ingest.device.takeover). Both are right only if no older
reading of that tag is still on its way. A sender keeps several batches in flight, though, and
when an older one failed (its first send raced the writer's lookup, the writer restarted, its
spool was full) while a newer one went through, and the sender's actor was then lost before the
resend, the older batch's readings lay before the newest stored one: no marker covered them and
their republished copies were dropped as stored. A fresh-clone run showed it once (2026-11-27:
5 readings of each of 4 tags missing, silently, after an actor was killed with the database away).

So a batch travels with its ``Place`` among its sender's batches, and the writer (``SenderOrder``)
takes it in only when every batch the sender cut before it, and has not had acknowledged, is
settled there or queued there ahead of it. Otherwise it refuses it with OutOfOrder, a retriable
error; the sender resends its unacknowledged batches in the order cut (ingest.device.sender).
When the writer fails a queued batch it fails that sender's later queued batches with it. A writer
that restarts knows nothing of a sender, which is fine: the sender's ``floor`` says which batches
the new writer must have seen first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ingest.core.errors import OutOfOrder


@dataclass(frozen=True, slots=True)
class Place:
    """Where a batch stands among its sender's: ``sender`` names one sender (a new name per
    actor incarnation), ``n`` counts its batches in the order cut, and ``floor`` is the lowest
    ``n`` it had not had acknowledged when it sent this one (``n`` itself at most)."""

    sender: str
    n: int
    floor: int


class SenderOrder:
    """The writer's side: which batches of each sender are settled or queued here."""

    def __init__(self, idle_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._held: dict[str, set[int]] = {}  # per sender: its n settled or queued here, >= floor
        self._floor: dict[str, int] = {}  # per sender: below it, everything is acknowledged
        self._seen: dict[str, float] = {}
        self._idle_s = idle_s
        self._clock = clock
        self._next_prune = clock() + idle_s

    def admit(self, p: Place) -> None:
        """Take ``p`` in as queued here, or raise OutOfOrder naming the first batch missing."""
        held = self._held.setdefault(p.sender, set())
        floor = self._floor.get(p.sender, 0)
        if p.floor > floor:  # the sender has had everything below it acknowledged
            floor = self._floor[p.sender] = p.floor
            held.difference_update([k for k in held if k < floor])
        now = self._clock()
        self._seen[p.sender] = now
        if now >= self._next_prune:
            self._prune(now)
        # At most len(held) + 1 steps: past that many, one of them is missing.
        missing = next((k for k in range(floor, p.n) if k not in held), None)
        if missing is not None:
            raise OutOfOrder(
                f"batch {p.n} of sender {p.sender} arrived before its batch {missing}, "
                "which is not settled or queued here: resend in order"
            )
        held.add(p.n)

    def failed(self, p: Place) -> None:
        """A queued batch failed here (it was never settled): later ones must wait for it."""
        held = self._held.get(p.sender)
        if held is not None:
            held.discard(p.n)

    def _prune(self, now: float) -> None:
        """Forget senders not heard from for ``idle_s`` (actors long gone)."""
        for s in [s for s, t in self._seen.items() if now - t > self._idle_s]:
            self._held.pop(s, None)
            self._floor.pop(s, None)
            self._seen.pop(s, None)
        self._next_prune = now + self._idle_s

    def __len__(self) -> int:
        return len(self._held)
