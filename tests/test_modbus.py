"""Modbus: our session against the real pymodbus simulator over TCP (no fakes).

What a user cares about: every data type decodes to the device's value, a silent or failing
device shows up as explicit Bad rows (one set per missed poll) without slowing its neighbours,
a restarted device heals by itself, reads are coalesced, and the simulator CLI is scriptable.
Timeouts below only keep a broken build from hanging; rate checks use wide tolerances.
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ingest.core.models import Quality, quality_as_int4
from ingest.device.modbus import ModbusSession
from ingest.device.modbus_decode import ModbusPoint
from ingest.simulators.modbus_sim import ModbusSimulator

REPO = Path(__file__).resolve().parents[1]
GOOD = 0
BAD = quality_as_int4(Quality.BAD)
NO_COMM = quality_as_int4(Quality.BAD_NO_COMMUNICATION)


class Collector:
    """The on_values callback: every row, and every call (one call = one poll)."""

    def __init__(self, on_call: Callable[[Collector], None] | None = None) -> None:
        self.calls: list[tuple[list[int], list[int], list[float], list[int]]] = []
        self.on_call = on_call

    def __call__(
        self,
        tag_ids: npt.NDArray[np.int32],
        time_us: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        quality: npt.NDArray[np.int32],
    ) -> None:
        assert tag_ids.dtype == np.int32 and time_us.dtype == np.int64
        assert values.dtype == np.float64 and quality.dtype == np.int32
        assert len(tag_ids) == len(time_us) == len(values) == len(quality) > 0
        self.calls.append((tag_ids.tolist(), time_us.tolist(), values.tolist(), quality.tolist()))
        if self.on_call is not None:
            self.on_call(self)

    def good_calls(self) -> int:
        return sum(1 for c in self.calls if all(q == GOOD for q in c[3]))

    def bad_calls(self, code: int) -> int:
        return sum(1 for c in self.calls if all(q == code for q in c[3]))

    def latest(self) -> dict[int, tuple[float, int]]:
        out: dict[int, tuple[float, int]] = {}
        for ids, _, vals, qs in self.calls:
            for t, v, q in zip(ids, vals, qs, strict=True):
                out[t] = (v, q)
        return out


async def wait_until(pred: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimulator]:
    s = ModbusSimulator(units=(1, 2), interval_ms=20, counters=200)
    await s.start()
    yield s
    await s.stop()


class Running:
    """A session running in its own task; stopped (and awaited) on exit."""

    def __init__(self, session: ModbusSession) -> None:
        self.session = session
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ModbusSession:
        self.task = asyncio.create_task(self.session.run())
        return self.session

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.wait_for(self.session.stop(), timeout=10)
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout=10)


async def test_every_data_type_over_tcp_equals_the_device(sim: ModbusSimulator) -> None:
    points = sim.points(unit=2)
    expected = sim.expected_values(unit=2)
    texts: dict[int, str] = {}
    got = Collector()
    session = ModbusSession(
        sim.endpoint,
        points,
        got,
        poll_interval_ms=50,
        on_strings=lambda items, _t: texts.update(items),
    )
    async with Running(session):
        await wait_until(lambda: got.good_calls() >= 2, "two good polls")
    latest = got.latest()
    numeric = {t for t, v in expected.items() if not isinstance(v, str)}
    # String points go to on_strings, not into the float columns.
    assert set(latest) == numeric
    for tag_id, want in expected.items():
        if isinstance(want, str):
            assert texts[tag_id] == want, points[tag_id - 1]
        else:
            value, quality = latest[tag_id]
            assert quality == GOOD and value == want, (points[tag_id - 1], value, want)
    assert len(numeric) > 150 and len(texts) == 8
    # Source time is the arrival time of the response: now-ish, in Unix microseconds.
    _, times, _, _ = got.calls[-1]
    assert abs(times[0] - time.time() * 1e6) < 60e6


async def test_strings_without_a_text_sink_are_bad_rows_not_dropped(sim: ModbusSimulator) -> None:
    points = [p for p in sim.points() if p.data_type == "string"][:2]
    got = Collector()
    async with Running(ModbusSession(sim.endpoint, points, got, poll_interval_ms=50)):
        await wait_until(lambda: len(got.calls) >= 1, "a poll")
    ids, _, vals, qs = got.calls[0]
    assert sorted(ids) == sorted(p.tag_id for p in points)
    assert all(math.isnan(v) for v in vals) and all(q == BAD for q in qs)


async def test_counters_read_values_consistent_with_time(sim: ModbusSimulator) -> None:
    points = sim.counter_points(200)
    checks: list[tuple[int, int, int]] = []  # (min read, max read, sim count after the read)

    def on_call(c: Collector) -> None:
        _, _, vals, qs = c.calls[-1]
        if all(q == GOOD for q in qs):
            checks.append((int(min(vals)), int(max(vals)), sim.counter_value()))

    got = Collector(on_call)
    async with Running(ModbusSession(sim.endpoint, points, got, poll_interval_ms=50)):
        await wait_until(lambda: len(checks) >= 10, "ten good polls")
    previous = 0
    for low, high, now in checks:
        # Every counter of one poll was read after the previous poll and before the callback.
        assert previous <= low <= high <= now
        previous = high
    assert checks[-1][1] > checks[0][0]  # the counters moved while we polled


async def test_contiguous_200_registers_take_two_requests(sim: ModbusSimulator) -> None:
    points = sim.counter_points(100)  # 100 uint32 = 200 registers, back to back
    enough = asyncio.Event()
    got = Collector(lambda c: enough.set() if len(c.calls) >= 5 else None)
    before = sim.request_count
    session = ModbusSession(sim.endpoint, points, got, poll_interval_ms=100)
    assert len(session.requests) == 2
    assert not session.first_tick.is_set()
    async with Running(session):
        await asyncio.wait_for(session.first_tick.wait(), timeout=20)
        assert len(got.calls) >= 1 and session.stats["first_value_ms"] > 0  # the first read is in
        await asyncio.wait_for(enough.wait(), timeout=20)
    polls = got.good_calls()
    assert polls == len(got.calls) >= 5
    assert sim.request_count - before == 2 * polls == session.stats["requests"]


async def test_silent_device_does_not_slow_a_healthy_neighbour() -> None:
    healthy_sim = ModbusSimulator(interval_ms=20, counters=20)
    silent_sim = ModbusSimulator(interval_ms=20, counters=20)
    await healthy_sim.start()
    await silent_sim.start()
    silent_sim.stop_answering()
    interval_ms = 100
    healthy, silent = Collector(), Collector()
    points = healthy_sim.counter_points(20)
    a = ModbusSession(healthy_sim.endpoint, points, healthy, poll_interval_ms=interval_ms)
    b = ModbusSession(
        silent_sim.endpoint,
        points,
        silent,
        poll_interval_ms=interval_ms,
        timeout_s=0.35,
        reconnect_initial_s=0.2,
        reconnect_max_s=1.0,
    )
    try:
        async with Running(a), Running(b):
            await wait_until(lambda: len(healthy.calls) >= 1, "the healthy device")
            start, calls_a, calls_b = time.monotonic(), len(healthy.calls), len(silent.calls)
            await asyncio.sleep(3.0)  # the measuring window
            window_s = time.monotonic() - start
            good_a = healthy.good_calls() - calls_a
            rows_b = silent.calls[calls_b:]
            stats_b = b.stats
            # Then the device answers again and Good values come back by themselves.
            silent_sim.resume_answering()
            await wait_until(lambda: silent.good_calls() >= 2, "the silent device recovered")
    finally:
        await healthy_sim.stop()
        await silent_sim.stop()
    expected = window_s * 1000 / interval_ms
    assert good_a >= 0.7 * expected, (good_a, expected)
    # The silent device: one set of Bad rows (every point, no communication) per scheduled poll.
    assert len(rows_b) >= 0.7 * expected, (len(rows_b), expected)
    for ids, _, vals, qs in rows_b:
        assert sorted(ids) == sorted(p.tag_id for p in points)
        assert all(math.isnan(v) for v in vals) and all(q == NO_COMM for q in qs)
    assert stats_b["missed_polls"] >= len(rows_b)
    assert stats_b["timeouts"] >= 1
    assert "DeviceUnreachable" in (stats_b["last_error"] or "")
    assert silent_sim.request_count >= 1  # it was asked, it just never answered


async def test_exception_codes_give_bad_rows_and_are_counted(sim: ModbusSimulator) -> None:
    points = sim.counter_points(10)
    got = Collector()
    session = ModbusSession(sim.endpoint, points, got, poll_interval_ms=50)
    async with Running(session):
        await wait_until(lambda: got.good_calls() >= 1, "a good poll")
        sim.set_exception(2)  # illegal data address
        await wait_until(lambda: got.bad_calls(BAD) >= 3, "three polls answered with exception 2")
        sim.set_exception(0x0B)  # gateway: target device failed to respond
        await wait_until(lambda: got.bad_calls(NO_COMM) >= 1, "a gateway exception")
        sim.set_exception(None)
        mark = len(got.calls)
        await wait_until(lambda: any(all(q == GOOD for q in c[3]) for c in got.calls[mark:]), "good values again")
    stats = session.stats
    assert stats["exceptions"] >= 4
    assert stats["missed_polls"] >= 4 and stats["timeouts"] == 0
    assert "exception code" in (stats["last_error"] or "")
    assert stats["state"] == "disconnected"  # after stop()


async def test_server_restart_reconnects_by_itself(sim: ModbusSimulator) -> None:
    points = sim.counter_points(10)
    got = Collector()
    states: list[tuple[str, str | None]] = []
    session = ModbusSession(
        sim.endpoint,
        points,
        got,
        poll_interval_ms=50,
        timeout_s=0.5,
        reconnect_initial_s=0.1,
        reconnect_max_s=0.5,
        on_state=lambda s, e: states.append((s, e)),
    )
    async with Running(session):
        await wait_until(lambda: got.good_calls() >= 2, "good polls")
        await sim.stop()
        # While the device is gone every scheduled poll still leaves explicit Bad rows.
        mark = len(got.calls)
        await wait_until(
            lambda: got.calls[mark:] and sum(1 for c in got.calls[mark:] if all(q == NO_COMM for q in c[3])) >= 5,
            "Bad rows while the device is down",
        )
        await sim.start()  # same port
        mark = len(got.calls)
        await wait_until(
            lambda: any(all(q == GOOD for q in c[3]) for c in got.calls[mark:]),
            "good values after the device came back",
        )
        assert session.stats["reconnects"] >= 1
        # restart() in one go: drops the connection, comes back on the same port.
        reconnects = session.stats["reconnects"]
        await sim.restart()
        await wait_until(lambda: session.stats["reconnects"] > reconnects, "second reconnect")
        mark = len(got.calls)
        await wait_until(
            lambda: any(all(q == GOOD for q in c[3]) for c in got.calls[mark:]),
            "good values after restart()",
        )
    assert ("connected", None) in states
    assert any(s == "disconnected" and e for s, e in states)


async def test_unreachable_endpoint_yields_bad_rows_and_stop_is_prompt() -> None:
    # A port nobody listens on: connection refused on every attempt.
    probe = ModbusSimulator()
    await probe.start()
    endpoint = probe.endpoint
    await probe.stop()
    got = Collector()
    session = ModbusSession(
        endpoint,
        [ModbusPoint(1, 1, "holding", 0, "uint16")],
        got,
        poll_interval_ms=50,
        reconnect_initial_s=0.1,
        reconnect_max_s=0.2,
    )
    async with Running(session):
        await asyncio.wait_for(session.first_tick.wait(), timeout=20)  # a refused first try counts
        assert got.bad_calls(NO_COMM) >= 1
        await wait_until(lambda: got.bad_calls(NO_COMM) >= 5, "Bad rows for a refused device")
    stats = session.stats
    assert stats["missed_polls"] == stats["polls"] >= 5
    assert stats["values_delivered"] == len(got.calls)
    assert "DeviceUnreachable" in (stats["last_error"] or "")


async def test_a_poll_stuck_past_its_bound_is_recorded_bad_and_the_link_replaced(
    sim: ModbusSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait pymodbus would not time (here: a read that never returns) ends at the poll's
    bound: every point of the poll gets a Bad row, the link is replaced, and polling heals."""
    from ingest.device.modbus_link import ModbusLink

    real_read = ModbusLink.read
    hung = asyncio.Event()

    async def read_hanging_once(self: ModbusLink, req: Any) -> Any:
        if not hung.is_set():
            hung.set()
            await asyncio.sleep(3600)
        return await real_read(self, req)

    monkeypatch.setattr(ModbusLink, "read", read_hanging_once)
    points = [p for p in sim.points() if p.unit == 1 and p.data_type == "uint16"][:20]
    got = Collector()
    session = ModbusSession(
        sim.endpoint, points, got, poll_interval_ms=100, timeout_s=0.1, reconnect_initial_s=0.1
    )
    async with Running(session):
        await wait_until(lambda: got.good_calls() >= 3, "polling healed after the stuck poll")
    stuck = got.calls[0]
    assert sorted(stuck[0]) == sorted(p.tag_id for p in points)  # every point, once
    assert set(stuck[3]) == {NO_COMM} and all(math.isnan(v) for v in stuck[2])
    stats = session.stats
    assert stats["timeouts"] == 1 and stats["reconnects"] == 1
    assert stats["missed_polls"] >= 1


def test_a_missed_tick_never_takes_the_source_time_of_a_reading() -> None:
    """A tick recorded as missed at its own time, which lies inside the long poll before it,
    moves on by a microsecond when that time is a response's arrival time: the same tag at the
    same source time would be a duplicate the writer drops."""
    from ingest.device.modbus_columns import clear_of

    assert clear_of(1_000, set()) == 1_000
    assert clear_of(1_000, {999, 1_001}) == 1_000
    assert clear_of(1_000, {1_000, 1_001, 1_003}) == 1_002


async def test_overrunning_polls_record_every_tick_with_no_tag_twice_at_one_time(
    sim: ModbusSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polls that run past several ticks (a slow device): every missed tick gets its Bad rows,
    and no (tag, source time) pair is delivered twice."""
    from ingest.device.modbus_link import ModbusLink

    real_read = ModbusLink.read

    async def slow_read(self: ModbusLink, req: Any) -> Any:
        await asyncio.sleep(0.035)
        return await real_read(self, req)

    monkeypatch.setattr(ModbusLink, "read", slow_read)
    points = [p for p in sim.points() if p.unit == 1 and p.data_type == "uint16"][:10]
    got = Collector()
    session = ModbusSession(sim.endpoint, points, got, poll_interval_ms=20)
    async with Running(session):
        await wait_until(lambda: session.stats["overruns"] >= 20, "overrun ticks")
    pairs = [(t, ts) for ids, times, _, _ in got.calls for t, ts in zip(ids, times, strict=True)]
    assert len(pairs) == len(set(pairs))
    assert got.bad_calls(NO_COMM) >= 20 and got.good_calls() >= 5


async def test_bad_arguments_are_refused_up_front() -> None:
    p = ModbusPoint(1, 1, "holding", 0, "uint16")
    with pytest.raises(ValueError, match="tcp://"):
        ModbusSession("opc.tcp://x:4840", [p], Collector())
    with pytest.raises(ValueError, match="appears twice"):
        ModbusSession("tcp://127.0.0.1:502", [p, p], Collector())
    with pytest.raises(ValueError, match="poll_interval_ms"):
        ModbusSession("tcp://127.0.0.1:502", [p], Collector(), poll_interval_ms=0)


async def test_cli_starts_several_simulator_processes() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingest.simulators.modbus_sim",
        "--port",
        "0",
        "--count",
        "3",
        "--units",
        "1,2",
        "--counters",
        "50",
        "--interval-ms",
        "100",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        endpoints = []
        for _ in range(3):
            line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode().strip()
            assert line.startswith("READY tcp://127.0.0.1:"), line
            endpoints.append(line.split(" ", 1)[1])
        assert len(set(endpoints)) == 3
        probe = ModbusSimulator(units=(1, 2), counters=50)  # same layout, for the point list
        for endpoint in endpoints:
            got = Collector()
            points = probe.counter_points(50, unit=2)
            async with Running(ModbusSession(endpoint, points, got, poll_interval_ms=50)):
                await wait_until(lambda got=got: got.good_calls() >= 1, f"a good poll of {endpoint}")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0
    summaries = [line for line in out.decode().splitlines() if line.startswith("{")]
    assert len(summaries) == 3  # every child shut down cleanly and reported
