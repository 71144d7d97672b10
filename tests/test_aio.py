"""The shared beat of the connection actor and the edge agent (ingest.core.aio.run_ticks)."""

from __future__ import annotations

import asyncio

import pytest

from ingest.core.aio import cancel_and_wait, run_ticks, wait_all


async def test_run_ticks_steps_runs_jobs_every_nth_and_survives_failures() -> None:
    steps: list[int] = []
    third: list[int] = []
    fifth: list[int] = []
    fifteen = asyncio.Event()

    def step() -> None:
        steps.append(1)
        if len(steps) == 15:
            fifteen.set()  # the waiter runs once this tick's jobs are done and the beat sleeps
        if len(steps) == 2:
            raise RuntimeError("a failing step does not stop the beat")

    def every_third() -> None:
        third.append(len(steps))
        raise ValueError("nor does a failing job")

    async def every_fifth() -> None:
        fifth.append(len(steps))

    task = asyncio.create_task(run_ticks(0.001, step, (3, every_third), (5, every_fifth)))
    await asyncio.wait_for(fifteen.wait(), 60)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert third == [3, 6, 9, 12, 15] and fifth == [5, 10, 15]


async def test_wait_all_until_every_event_or_the_timeout() -> None:
    a, b = asyncio.Event(), asyncio.Event()
    assert await wait_all([], 0.01)
    asyncio.get_running_loop().call_later(0.01, a.set)
    assert not await wait_all([a, b], 0.1)  # b never set
    assert a.is_set()
    b.set()
    assert await wait_all([a, b], 0.1)


async def test_cancel_and_wait_outlasts_a_task_that_swallows_one_cancellation() -> None:
    swallowed = []

    async def stubborn() -> None:  # as a blocking redis-py command can (redis/redis-py#2028)
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(1)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, retry_s=0.05), timeout=10)
    assert task.cancelled() and swallowed == [1]

    async def fails() -> None:
        raise ValueError("boom")

    failing = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(ValueError):
        await cancel_and_wait(failing)
    await cancel_and_wait(None)
