"""The rows of one Modbus poll, gathered request by request and handed over as four columns.

Per request the poll knows its tag ids, its values, one arrival time and one quality; the time
and quality columns are built once per poll (``np.repeat``), not per request. A request whose
string points are Bad while the rest are Good carries a quality column of its own."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ingest.device.modbus_decode import ReadRequest

Columns = tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int32]]
"""``(tag_ids, times_us, values, quality)`` of equal length."""


def clear_of(time_us: int, taken: set[int]) -> int:
    """``time_us``, or the next microsecond not in ``taken``.

    A tick that falls due while a long poll still runs is recorded at its own time, which lies
    inside that poll: to the microsecond it can equal the arrival time of one of the poll's
    responses, and a row for the same tag at the same source time is a duplicate the writer
    drops (a row per tag of that request gone: 62 of a 5,000-point poll, seen at
    200,000 values/s offered). The missed tick moves on by a microsecond instead."""
    while time_us in taken:
        time_us += 1
    return time_us


class PollRows:
    def __init__(self) -> None:
        self.ids: list[npt.NDArray[np.int32]] = []
        self.values: list[npt.NDArray[np.float64]] = []
        self.times: list[int] = []
        self.quality: list[int] = []
        self.marked: dict[int, npt.NDArray[np.int32]] = {}  # request number -> quality column

    def __len__(self) -> int:
        """Requests recorded so far."""
        return len(self.ids)

    def add(
        self,
        ids: npt.NDArray[np.int32],
        values: npt.NDArray[np.float64],
        time_us: int,
        quality: int,
        quality_column: npt.NDArray[np.int32] | None = None,
    ) -> None:
        if quality_column is not None:
            self.marked[len(self.ids)] = quality_column
        self.ids.append(ids)
        self.values.append(values)
        self.times.append(time_us)
        self.quality.append(quality)

    def fill(self, requests: Sequence[ReadRequest], time_us: int, quality: int) -> None:
        """A row with value NaN and ``quality`` per point of every request not recorded yet."""
        for req in requests[len(self.ids) :]:
            self.add(req.tag_ids, np.full(len(req.points), np.nan), time_us, quality)

    def stamps(self) -> set[int]:
        return set(self.times)

    def columns(self) -> Columns | None:
        """The poll's rows, or None when it has none."""
        counts = [a.shape[0] for a in self.ids]
        if not sum(counts):
            return None
        q_col = np.repeat(np.array(self.quality, dtype=np.int32), counts)
        for k, col in self.marked.items():
            q_col[sum(counts[:k]) : sum(counts[: k + 1])] = col
        return (
            np.concatenate(self.ids),
            np.repeat(np.array(self.times, dtype=np.int64), counts),
            np.concatenate(self.values),
            q_col,
        )
