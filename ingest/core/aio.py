"""Small asyncio helpers shared by the long-running parts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[Any] | None, retry_s: float = 1.0) -> None:
    """Cancel a background task and wait until it has really finished.

    The cancellation is repeated every ``retry_s`` while the task runs on: redis-py can swallow
    one that lands at the wrong moment of a blocking command (redis/redis-py#2028), and a loop
    around that command then never ends (a hub's feed kept its XREAD going for ten minutes and
    its ``stop`` waited all along)."""
    if task is None:
        return
    task.cancel()
    while not task.done():
        await asyncio.wait({task}, timeout=retry_s)
        if not task.done():
            log.warning("task %s ignored its cancellation; cancelling it again", task.get_name())
            task.cancel()
    if not task.cancelled():
        task.result()  # what it raised instead, as awaiting it would


async def wait_all(events: list[asyncio.Event], timeout_s: float) -> bool:
    """Until every event is set, or ``timeout_s``; True when all were set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    if not waits:
        return True
    _, pending = await asyncio.wait(waits, timeout=timeout_s)
    for w in pending:
        w.cancel()
    return not pending


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
