"""Buffered readings <-> bytes: the columns blob a batch is kept as, and the push body it is sent as.

On disk a batch is its four numpy columns back to back (24 bytes a reading). When it is sealed
for sending it becomes seed 002's push body, gzipped, and that exact body is kept with its
Idempotency-Key: a resend after a restart must be byte-identical, or the cluster would refuse the
reused key (409) instead of answering it again.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from ingest.core.batch import ReadingBatch, per_tag
from ingest.core.models import GAP_QUALITY, Quality

_UNCERTAIN = int(Quality.UNCERTAIN)
NO_UNIT = "dimensionless"  # the push body needs a unit; a tag registered without one keeps none


@dataclass(frozen=True)
class PushedTag:
    well: str
    name: str
    unit: str | None


def pack(b: ReadingBatch) -> bytes:
    return b"".join(
        np.ascontiguousarray(c).tobytes()
        for c in (
            b.time_us.astype(np.int64, copy=False),
            b.tag_id.astype(np.int32, copy=False),
            b.value.astype(np.float64, copy=False),
            b.quality.astype(np.int32, copy=False),
        )
    )


def unpack(blob: bytes, rows: int, batch_id: str = "buffered") -> ReadingBatch:
    t = np.frombuffer(blob, np.int64, rows, 0)
    tag = np.frombuffer(blob, np.int32, rows, 8 * rows)
    v = np.frombuffer(blob, np.float64, rows, 12 * rows)
    q = np.frombuffer(blob, np.int32, rows, 20 * rows)
    return ReadingBatch(batch_id, t.copy(), tag.copy(), v.copy(), q.copy())


# (tag, first time µs, readings lost or None when unknown, new: readings dropped just now)
Gap = tuple[int, int, float | None, bool]


def as_gaps(b: ReadingBatch) -> list[Gap]:
    """What a dropped batch leaves behind, per tag.

    Gap markers already in it stay gaps as they were (``new`` False: counted when they were
    recorded); its readings become one new gap per tag from its earliest time, counting them."""
    out: list[Gap] = []
    markers = b.quality == GAP_QUALITY
    for i in np.flatnonzero(markers).tolist():
        v = float(b.value[i])
        out.append((int(b.tag_id[i]), int(b.time_us[i]), v if np.isfinite(v) else None, False))
    keep = ~markers
    if keep.any():
        tags, times = b.tag_id[keep], b.time_us[keep]
        first, counts = per_tag(tags, times)
        out.extend(
            (int(t), int(s), float(n), True)
            for t, s, n in zip(tags[first].tolist(), times[first].tolist(), counts.tolist(), strict=True)
        )
    return out


def _quality_codes(q: npt.NDArray[np.int32]) -> npt.NDArray[np.str_]:
    codes = np.full(q.shape[0], "GOOD", dtype="<U9")
    codes[q >= _UNCERTAIN] = "UNCERTAIN"
    codes[q < 0] = "BAD"
    codes[q == GAP_QUALITY] = "DATA_LOST"
    return codes


def push_body(tenant: str, b: ReadingBatch, tags: dict[int, PushedTag]) -> tuple[bytes, int]:
    """The gzipped push body of ``b`` and how many of its points are gap markers.

    A value JSON cannot carry (NaN, infinity) goes as a gap marker for that one reading: the
    reading is not kept, and says so, rather than failing the whole request."""
    n = len(b)
    stamps = np.datetime_as_string(b.time_us.astype("datetime64[us]"), unit="us")
    codes = _quality_codes(b.quality)
    finite = np.isfinite(b.value)
    lost = ~finite & (codes != "DATA_LOST")
    codes[lost] = "DATA_LOST"
    values: list[float | None] = np.where(lost, 1.0, b.value).tolist()
    if not finite.all():
        values = [
            None if (c == "DATA_LOST" and v != v) else v for v, c in zip(values, codes.tolist(), strict=True)
        ]
    points = []
    for i, tag_id in enumerate(b.tag_id.tolist()):
        tag = tags[tag_id]
        points.append(
            {
                "well_id": tag.well,
                "timestamp": stamps[i] + "Z",
                "parameter_name": tag.name,
                "value": values[i],
                "unit": tag.unit or NO_UNIT,
                "quality_code": str(codes[i]),
            }
        )
    body = msgspec.json.encode({"tenant_id": tenant, "data_points": points})
    # mtime=0: the same readings always give the same bytes.
    return gzip.compress(body, compresslevel=1, mtime=0), int(np.count_nonzero(codes == "DATA_LOST")) if n else 0


def encode_gaps(gaps: list[Gap]) -> bytes:
    """Gaps as one blob (the buffer's ``gaps`` of a rejected or dropped body)."""
    tags = np.array([g[0] for g in gaps], np.int32)
    first = np.array([g[1] for g in gaps], np.int64)
    lost = np.array([np.nan if g[2] is None else g[2] for g in gaps], np.float64)
    new = np.array([g[3] for g in gaps], np.int8)
    return tags.tobytes() + first.tobytes() + lost.tobytes() + new.tobytes()


def decode_gaps(blob: bytes) -> list[Gap]:
    n = len(blob) // 21
    tags = np.frombuffer(blob, np.int32, n, 0).tolist()
    first = np.frombuffer(blob, np.int64, n, 4 * n).tolist()
    lost = np.frombuffer(blob, np.float64, n, 12 * n).tolist()
    new = np.frombuffer(blob, np.int8, n, 20 * n).tolist()
    return [(t, f, None if v != v else v, bool(k)) for t, f, v, k in zip(tags, first, lost, new, strict=True)]
