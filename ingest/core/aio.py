"""Small asyncio helpers shared by the long-running parts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has really finished."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def run_ticks(
    period_s: float, step: Callable[[], None], *jobs: tuple[int, Callable[[], Awaitable[None] | None]]
) -> None:
    """Until cancelled: ``step()`` every ``period_s``, and each job ``(n, fn)`` on every n-th
    tick. A failing step or job is logged and the loop goes on: a side job never stops the beat."""
    n = 0
    while True:
        await asyncio.sleep(period_s)
        n += 1
        try:
            step()
        except Exception:
            log.exception("tick failed")
        for every, job in jobs:
            if n % every:
                continue
            try:
                pending = job()
                if pending is not None:
                    await pending
            except Exception:
                log.exception("tick job %s failed", getattr(job, "__name__", job))
