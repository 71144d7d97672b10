"""Shared test helpers (most live with the simulators, in ingest.simulators.fleet, which the
benches and scenarios use too)."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ingest.simulators.fleet import (  # noqa: F401
    GAP_QUALITY,
    SimProcess,
    counting_check,
    counting_check_with_gaps,
    db_fetch,
    wait_for,
)


async def wait_until(cond: Callable[[], Any], what: str, timeout_s: float = 30.0, every_s: float = 0.05) -> Any:
    """``wait_for`` for async tests: poll ``cond()`` on the event loop until it is truthy; fail
    after ``timeout_s`` (a guard against hanging, not a timed assert)."""
    deadline = time.monotonic() + timeout_s
    while not (v := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting {timeout_s:.0f} s for: {what}")
        await asyncio.sleep(every_s)
    return v
