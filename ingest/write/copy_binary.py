"""PostgreSQL binary COPY encoding straight from numpy columns.

The wire format per row is a field count and, per field, a length and big-endian bytes. All four
columns are fixed width, so one structured numpy array lays out every row in a single vectorised
assignment: no Python object per reading on the hot path.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# PostgreSQL timestamps count microseconds from 2000-01-01; ours count from 1970-01-01.
PG_EPOCH_OFFSET_US = 946_684_800_000_000

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)

# Column order of scada_readings: time, tag_id, value, quality.
READING_ROW = np.dtype(
    [
        ("nfields", ">i2"),
        ("len_time", ">i4"),
        ("time", ">i8"),
        ("len_tag", ">i4"),
        ("tag_id", ">i4"),
        ("len_value", ">i4"),
        ("value", ">f8"),
        ("len_quality", ">i4"),
        ("quality", ">i4"),
    ]
)

_TEMPLATE = np.zeros((), READING_ROW)
_TEMPLATE["nfields"], _TEMPLATE["len_time"], _TEMPLATE["len_tag"] = 4, 8, 4
_TEMPLATE["len_value"], _TEMPLATE["len_quality"] = 8, 4


def encode_buffer(
    time_us: npt.NDArray[np.int64],
    tag_id: npt.NDArray[np.int32],
    value: npt.NDArray[np.float64],
    quality: npt.NDArray[np.int32],
) -> npt.NDArray[np.uint8]:
    """The whole COPY stream (header, rows, trailer) in one buffer, written in place: no
    concatenation afterwards, and asyncpg sends it as it is (any buffer-protocol object is a COPY
    source), so the rows are copied once more only into its wire buffer."""
    n = time_us.shape[0]
    head, size = len(HEADER), READING_ROW.itemsize
    buf = np.empty(head + n * size + len(TRAILER), np.uint8)
    buf[:head] = np.frombuffer(HEADER, np.uint8)
    buf[head + n * size :] = np.frombuffer(TRAILER, np.uint8)
    rows = buf[head : head + n * size].view(READING_ROW)
    # The constant fields in one broadcast of a template row, then the four data fields; each
    # assignment converts to big-endian on the way in.
    rows[...] = _TEMPLATE
    np.subtract(time_us, PG_EPOCH_OFFSET_US, out=rows["time"], casting="unsafe")
    rows["tag_id"] = tag_id
    rows["value"] = value
    rows["quality"] = quality
    return buf


def encode_readings(
    time_us: npt.NDArray[np.int64],
    tag_id: npt.NDArray[np.int32],
    value: npt.NDArray[np.float64],
    quality: npt.NDArray[np.int32],
) -> bytes:
    """Encode rows for ``COPY scada_readings (time, tag_id, value, quality) FROM STDIN (FORMAT
    binary)``; returns the whole stream including header and trailer."""
    return encode_buffer(time_us, tag_id, value, quality).tobytes()
