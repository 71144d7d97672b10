"""Readings as columns: the micro-batch that travels from a connection actor to a writer.

A batch is four numpy columns of equal length plus an id that names it for the ledger. Across the
Ray boundary it travels as an Arrow RecordBatch (zero-copy for numeric columns), never as Python
objects per reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

SCHEMA = pa.schema(
    [
        ("time_us", pa.int64()),  # source timestamp, microseconds since the Unix epoch, UTC
        ("tag_id", pa.int32()),
        ("value", pa.float64()),
        ("quality", pa.int32()),  # OPC UA StatusCode, 32 bits stored signed
    ]
)


def per_tag(
    tag_id: npt.NDArray[np.int32], time_us: npt.NDArray[np.int64], *, last: bool = False
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """For each tag, the index of its earliest (or latest) reading, and its reading count.

    One lexsort instead of a loop over tags; indexes point into the given columns, tags ascending.
    """
    order = np.lexsort((time_us, tag_id))
    tags = tag_id[order]
    if tags.shape[0] == 0:
        return order, np.zeros(0, np.intp)
    starts = np.flatnonzero(np.r_[True, tags[1:] != tags[:-1]])
    counts = np.diff(np.r_[starts, tags.shape[0]])
    pick = starts + counts - 1 if last else starts
    return order[pick], counts


def _batch_id(rb: pa.RecordBatch) -> str:
    """The id a batch travels with, in its Arrow schema's metadata (required)."""
    batch_id = (rb.schema.metadata or {}).get(b"batch_id", b"").decode()
    if not batch_id:
        raise ValueError("batch has no batch_id")
    return str(batch_id)


@dataclass
class ReadingBatch:
    batch_id: str
    time_us: npt.NDArray[np.int64]
    tag_id: npt.NDArray[np.int32]
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return int(self.time_us.shape[0])

    def to_arrow(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays(
            [
                pa.array(self.time_us),
                pa.array(self.tag_id),
                pa.array(self.value),
                pa.array(self.quality),
            ],
            schema=SCHEMA.with_metadata({"batch_id": self.batch_id}),
        )

    @classmethod
    def from_arrow(cls, rb: pa.RecordBatch) -> ReadingBatch:
        batch_id = _batch_id(rb)
        if rb.schema.remove_metadata() != SCHEMA:
            raise ValueError(f"batch schema {rb.schema} is not {SCHEMA}")
        cols = [c.to_numpy(zero_copy_only=False) for c in rb.columns]
        return cls(batch_id, cols[0], cols[1], cols[2], cols[3])

    @classmethod
    def concat(cls, batch_id: str, parts: list[ReadingBatch]) -> ReadingBatch:
        return cls(
            batch_id,
            np.concatenate([p.time_us for p in parts]),
            np.concatenate([p.tag_id for p in parts]),
            np.concatenate([p.value for p in parts]),
            np.concatenate([p.quality for p in parts]),
        )

    def take(self, mask: npt.NDArray[np.bool_]) -> ReadingBatch:
        return ReadingBatch(
            self.batch_id,
            self.time_us[mask],
            self.tag_id[mask],
            self.value[mask],
            self.quality[mask],
        )


class BatchBuilder:
    """Collects readings of one tenant into preallocated columns and cuts them into batches.

    Columns grow by doubling, so appending a chunk is a slice copy, not a per-reading operation.
    Batch ids are ``<source>:<epoch>:<seq>``: the source names the sender, the epoch changes when
    the sender restarts, and the sequence counts batches, so a resend carries the same id.
    """

    def __init__(self, source: str, epoch: str, capacity: int = 16_384) -> None:
        self.source = source
        self.epoch = epoch
        self._seq = 0
        self._n = 0
        self._time = np.empty(capacity, np.int64)
        self._tag = np.empty(capacity, np.int32)
        self._value = np.empty(capacity, np.float64)
        self._quality = np.empty(capacity, np.int32)

    def __len__(self) -> int:
        return self._n

    def append(
        self,
        tag_id: npt.ArrayLike,
        time_us: npt.ArrayLike,
        value: npt.ArrayLike,
        quality: npt.ArrayLike,
    ) -> None:
        t = np.asarray(time_us, np.int64)
        k = t.shape[0]
        if k == 0:
            return
        need = self._n + k
        if need > self._time.shape[0]:
            size = max(need, 2 * self._time.shape[0])
            for name in ("_time", "_tag", "_value", "_quality"):
                old = getattr(self, name)
                new = np.empty(size, old.dtype)
                new[: self._n] = old[: self._n]
                setattr(self, name, new)
        s = slice(self._n, need)
        self._time[s] = t
        self._tag[s] = np.asarray(tag_id, np.int32)
        self._value[s] = np.asarray(value, np.float64)
        self._quality[s] = np.asarray(quality, np.int64).astype(np.int32, casting="unsafe")
        self._n = need

    def cut(self) -> ReadingBatch | None:
        """Return what has been collected as one batch (copied out), or None when empty."""
        if self._n == 0:
            return None
        self._seq += 1
        n = self._n
        b = ReadingBatch(
            f"{self.source}:{self.epoch}:{self._seq}",
            self._time[:n].copy(),
            self._tag[:n].copy(),
            self._value[:n].copy(),
            self._quality[:n].copy(),
        )
        self._n = 0
        return b


TEXT_SCHEMA = pa.schema(
    [
        ("time_us", pa.int64()),
        ("tag_id", pa.int32()),
        ("value", pa.string()),
        ("quality", pa.int32()),
    ]
)


@dataclass
class TextBatch:
    """String readings (few, and of any length): they land in ``scada_readings_text``."""

    batch_id: str
    time_us: npt.NDArray[np.int64]
    tag_id: npt.NDArray[np.int32]
    value: list[str]
    quality: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return int(self.time_us.shape[0])

    def to_arrow(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays(
            [
                pa.array(self.time_us),
                pa.array(self.tag_id),
                pa.array(self.value, pa.string()),
                pa.array(self.quality),
            ],
            schema=TEXT_SCHEMA.with_metadata({"batch_id": self.batch_id}),
        )

    @classmethod
    def from_arrow(cls, rb: pa.RecordBatch) -> TextBatch:
        batch_id = _batch_id(rb)
        return cls(
            batch_id,
            rb.column(0).to_numpy(),
            rb.column(1).to_numpy(),
            rb.column(2).to_pylist(),
            rb.column(3).to_numpy(),
        )


# What a writer takes: numeric readings, or string readings bound for the text table.
Batch = ReadingBatch | TextBatch


def is_text(rb: pa.RecordBatch) -> bool:
    return bool(rb.schema.field("value").type == pa.string())


class TextBuilder:
    """Collects string readings of one tenant; cut like BatchBuilder, ids marked ``:text``."""

    def __init__(self, source: str, epoch: str) -> None:
        self.source = source
        self.epoch = epoch
        self._seq = 0
        self._rows: list[tuple[int, int, str, int]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def append(
        self, tag_id: npt.ArrayLike, time_us: npt.ArrayLike, texts: list[str], quality: npt.ArrayLike
    ) -> None:
        for t, g, v, q in zip(
            np.asarray(time_us).tolist(),
            np.asarray(tag_id).tolist(),
            texts,
            np.asarray(quality).tolist(),
            strict=True,
        ):
            self._rows.append((t, g, v, q))

    def cut(self) -> TextBatch | None:
        if not self._rows:
            return None
        self._seq += 1
        rows, self._rows = self._rows, []
        return TextBatch(
            f"{self.source}:{self.epoch}:text{self._seq}",
            np.array([r[0] for r in rows], np.int64),
            np.array([r[1] for r in rows], np.int32),
            [r[2] for r in rows],
            np.array([r[3] for r in rows], np.int32),
        )
