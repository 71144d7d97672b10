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


def encode_readings(
    time_us: npt.NDArray[np.int64],
    tag_id: npt.NDArray[np.int32],
    value: npt.NDArray[np.float64],
    quality: npt.NDArray[np.int32],
) -> bytes:
    """Encode rows for ``COPY scada_readings (time, tag_id, value, quality) FROM STDIN (FORMAT
    binary)``; returns the whole stream including header and trailer."""
    n = time_us.shape[0]
    rows = np.empty(n, READING_ROW)
    rows["nfields"] = 4
    rows["len_time"] = 8
    rows["time"] = time_us - PG_EPOCH_OFFSET_US
    rows["len_tag"] = 4
    rows["tag_id"] = tag_id
    rows["len_value"] = 8
    rows["value"] = value
    rows["len_quality"] = 4
    rows["quality"] = quality
    return HEADER + rows.tobytes() + TRAILER
