"""The validator's memory of written (tag, source time) pairs, for duplicate detection.

Keys pack (rule index, source time modulo 2**40 us = 12.7 days) into one int64, sorted. A tag's
remembered times span at most the dedup window (7 days at most), and the stored full time
confirms every hit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.intp]
I64 = npt.NDArray[np.int64]

TIME_BITS = 40
TIME_MASK = (1 << TIME_BITS) - 1


@dataclass
class Segment:
    keys: I64  # packed (rule index, time mod 2**40), sorted
    times: I64
    tags: Ints  # rule indices present
    newest: I64  # per tag: its newest time here

    @classmethod
    def of(cls, keys: I64, times: I64) -> Segment:
        tag = keys >> TIME_BITS
        first = np.flatnonzero(np.append(True, tag[1:] != tag[:-1]))
        return cls(keys, times, tag[first].astype(np.intp), np.maximum.reduceat(times, first))


class DuplicateMemory:
    """Written (tag, source time) pairs within the window, as sorted segments, oldest first.

    Each commit adds a segment, and a segment whose keys have all expired is dropped whole: in a
    steady stream that is all the forgetting there is, and nothing is re-sorted. Past 16
    segments (small flushes) the adjacent pair with the fewest keys merges, dropping expired
    keys, so the search for a resent row stays short.
    """

    MAX_SEGMENTS = 16

    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def holds(self, keys: I64, times: I64) -> Bools:
        found = np.zeros(keys.size, bool)
        for s in self.segments:
            at = np.minimum(np.searchsorted(s.keys, keys), s.keys.size - 1)
            found |= (s.keys[at] == keys) & (s.times[at] == times)
        return found

    def add(self, keys: I64, times: I64, horizon: I64) -> None:
        if keys.size:
            self.segments.append(Segment.of(keys, times))
        self.segments = [s for s in self.segments if bool(np.any(s.newest >= horizon[s.tags]))]
        while len(self.segments) > self.MAX_SEGMENTS:
            sizes = np.array([s.keys.size for s in self.segments])
            self.merge(int(np.argmin(sizes[1:] + sizes[:-1])), horizon, 2)

    def merge(self, at: int, horizon: I64, count: int | None = None) -> None:
        """Merge ``count`` segments from ``at`` (or all from there), dropping expired keys."""
        end = len(self.segments) if count is None else at + count
        parts = self.segments[at:end]
        if not parts:
            return
        keys = np.concatenate([s.keys for s in parts])
        times = np.concatenate([s.times for s in parts])
        alive = times >= horizon[keys >> TIME_BITS]
        keys, times = keys[alive], times[alive]
        o = np.argsort(keys, kind="stable")  # timsort: a merge of sorted runs
        self.segments[at:end] = [Segment.of(keys[o], times[o])] if keys.size else []

    def reindex(self, remap: Ints) -> None:
        """Follow a rules change: old rule index -> new one (monotone), or -1 when removed."""
        kept = []
        for s in self.segments:
            new_idx = remap[s.keys >> TIME_BITS]
            alive = new_idx >= 0
            if alive.any():
                keys = (new_idx[alive] << TIME_BITS) | (s.keys[alive] & TIME_MASK)
                kept.append(Segment.of(keys, s.times[alive]))
        self.segments = kept
