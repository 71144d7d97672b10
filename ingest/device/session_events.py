"""What a device session (OPC UA or Modbus) hands its host: value columns and state changes."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import numpy as np
import numpy.typing as npt

__all__ = ["OnState", "OnValues", "SessionState"]

OnValues = Callable[
    [npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int32]],
    None,
]
"""``(tag_ids, source_time_us, values, quality)``: numbers (bool and int as float).

source_time_us is microseconds since the Unix epoch (UTC); quality is the OPC UA StatusCode with
its 32 bits stored signed (0 = Good, Bad codes are negative). Called on the event loop (inside the
publish loop, or once per poll): keep it short (append to a batch), never block.
"""

OnState = Callable[[str, str | None], None]
"""``(state, error)``; state is a ``SessionState`` value, error the reason for a disconnect."""


class SessionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
