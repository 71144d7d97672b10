"""OPC UA: our session against the real asyncua simulator server (no fakes).

What a user cares about: every published value arrives exactly once, every tag of a big server
reports, a server restart heals by itself, and the simulator CLI is scriptable.
Timeouts below only keep a broken build from hanging; nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from asyncua import ua

from ingest.core.net import free_port
from ingest.device.opcua import OpcUaSession, OpcUaTag
from ingest.simulators import OpcUaSimulator

REPO = Path(__file__).resolve().parents[1]
BAD_NODE_ID_UNKNOWN = np.uint32(ua.StatusCodes.BadNodeIdUnknown).view(np.int32)


class Collector:
    """The on_values callback: keeps every reading per tag, in arrival order."""

    def __init__(self) -> None:
        self.calls = 0
        self.readings: dict[int, list[tuple[int, float, int]]] = defaultdict(list)
        self.arrivals: list[int] = []  # tag id per reading, in arrival order

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
        self.calls += 1
        for t, ts, v, q in zip(tag_ids.tolist(), time_us.tolist(), values.tolist(), quality.tolist(), strict=True):
            self.readings[t].append((ts, v, q))
            self.arrivals.append(t)

    def good(self, tag_id: int) -> list[tuple[int, float, int]]:
        return [r for r in self.readings[tag_id] if r[2] == 0]

    def total(self) -> int:
        return len(self.arrivals)


async def wait_until(pred: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def tags_of(sim: OpcUaSimulator) -> list[OpcUaTag]:
    return [OpcUaTag(tag_id=1000 + i, node_id=n) for i, n in enumerate(sim.node_ids())]


@pytest.mark.asyncio
async def test_counting_every_value_arrives_exactly_once() -> None:
    sim = OpcUaSimulator(port=free_port(), wells=2, tags_per_well=5, interval_ms=20, paused=True)
    await sim.start()
    tags = tags_of(sim)
    got = Collector()
    session = OpcUaSession(sim.endpoint, tags, got, publishing_interval_ms=100)
    runner = asyncio.create_task(session.run())
    try:
        # Subscribed once every tag has reported its initial 0.0 (not a count).
        await wait_until(lambda: all(got.readings[t.tag_id] for t in tags), "initial snapshots")
        await sim.resume()
        await asyncio.sleep(2.0)  # the publishing window
        await sim.pause()
        published = sim.published_per_node()
        assert all(n > 0 for n in published.values())
        await wait_until(
            lambda: all(len(got.good(t.tag_id)) >= published[t.node_id] + 1 for t in tags),
            "the published values to drain",
        )
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would show up now
        for t in tags:
            readings = got.readings[t.tag_id]
            assert all(q == 0 for _, _, q in readings)
            values = [v for _, v, _ in readings]
            assert values == [float(k) for k in range(0, published[t.node_id] + 1)], t.node_id
            times = [ts for ts, _, _ in readings]
            assert times == sorted(times)
            assert abs(times[-1] / 1e6 - time.time()) < 60  # microseconds since the Unix epoch
        assert sum(published.values()) == sim.total_published
        stats = session.stats
        assert stats["values_received"] == got.total() == sim.total_published + len(tags)
        assert stats["reconnects"] == 0 and stats["last_error"] is None
        assert got.calls < got.total() / 5  # chunks per publish response, not one call per value
    finally:
        await session.stop()
        await runner
        await sim.stop()


@pytest.mark.asyncio
async def test_five_hundred_tags_all_deliver(monkeypatch: pytest.MonkeyPatch) -> None:
    # Smaller CreateMonitoredItems calls than the server allows, so chunking is exercised too.
    monkeypatch.setattr("ingest.device.opcua_service.MAX_ITEMS_PER_CALL", 128)
    sim = OpcUaSimulator(port=free_port(), wells=1, tags_per_well=500, interval_ms=100, mode="realistic")
    await sim.start()
    tags = tags_of(sim)
    missing = OpcUaTag(tag_id=1, node_id=f"ns={sim.namespace_index};s=W999.T999")
    got = Collector()
    states: list[tuple[str, str | None]] = []
    session = OpcUaSession(sim.endpoint, [*tags, missing], got, on_state=lambda s, e: states.append((s, e)))
    runner = asyncio.create_task(session.run())
    try:
        await wait_until(lambda: all(len(got.good(t.tag_id)) >= 3 for t in tags), "3 values from every tag")
        values = np.array([v for t in tags for _, v, _ in got.good(t.tag_id)])
        assert np.isfinite(values).all() and (values >= 0).all()
        assert len(np.unique(values)) > len(tags)  # signals move, not a constant
        # A node the server does not have is one visible Bad reading, not silence.
        assert [q for _, _, q in got.readings[missing.tag_id]] == [BAD_NODE_ID_UNKNOWN]
        assert session.stats["failed_items"] == 1
        assert states[:2] == [("connecting", None), ("connected", None)]
    finally:
        await session.stop()
        await runner
        await sim.stop()
    assert states[-1] == ("disconnected", None)


@pytest.mark.asyncio
async def test_session_survives_server_restart() -> None:
    port = free_port()
    first = OpcUaSimulator(port=port, wells=1, tags_per_well=5, interval_ms=50)
    await first.start()
    tags = tags_of(first)
    got = Collector()
    states: list[tuple[str, str | None]] = []
    session = OpcUaSession(
        first.endpoint,
        tags,
        got,
        reconnect_initial_s=0.2,
        reconnect_max_s=1.0,
        on_state=lambda s, e: states.append((s, e)),
    )
    runner = asyncio.create_task(session.run())
    second: OpcUaSimulator | None = None
    try:
        await wait_until(lambda: all(got.good(t.tag_id) for t in tags), "values from the first")
        await first.stop()
        await wait_until(lambda: session.stats["state"] != "connected", "the loss to be noticed")
        mark = {t.tag_id: len(got.readings[t.tag_id]) for t in tags}
        second = OpcUaSimulator(port=port, wells=1, tags_per_well=5, interval_ms=50)
        await second.start()

        def new_values(tag: OpcUaTag) -> list[float]:
            return [v for _, v, q in got.readings[tag.tag_id][mark[tag.tag_id] :] if q == 0]

        await wait_until(lambda: session.stats["reconnects"] >= 1, "a reconnect")
        await wait_until(lambda: all(len(new_values(t)) >= 3 for t in tags), "values from the second server")
        # They are the second server's own count (it starts again at 1), without gaps.
        for t in tags:
            new = new_values(t)
            assert new == [float(k) for k in range(int(new[0]), int(new[0]) + len(new))]
            assert new[-1] <= second.published_per_node()[t.node_id]
        errors = [e for s, e in states if s == "disconnected" and e]
        assert errors and "DeviceUnreachable" in errors[0]
        assert session.stats["last_error"] is not None
        assert ("connected", None) in states[states.index(("disconnected", errors[0])) :]
    finally:
        await session.stop()
        await runner
        if second is not None:
            await second.stop()


@pytest.mark.asyncio
async def test_cli_signals_summary_and_drain(tmp_path: Path) -> None:
    """The CLI as scripts drive it: paused start, SIGUSR1 to publish, SIGTERM to stop.

    The summary is the last stdout line, and the server drains before it shuts down, so a
    subscriber holds exactly what the summary says was published.
    """
    port = free_port()
    summary_file = tmp_path / "summary.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingest.simulators.opcua_sim",
        *("--port", str(port), "--wells", "1", "--tags", "3", "--interval-ms", "10"),
        *("--start-paused", "--summary-file", str(summary_file)),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    endpoint = f"opc.tcp://127.0.0.1:{port}/scada-sim/"
    session: OpcUaSession | None = None
    runner: asyncio.Task[None] | None = None
    try:
        assert proc.stdout is not None
        nodes_line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        ready_line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert ready_line == f"READY {endpoint}"
        assert nodes_line.startswith("NODES ")
        node_ids = json.loads(nodes_line.removeprefix("NODES "))
        assert node_ids == ["ns=2;s=W001.T001", "ns=2;s=W001.T002", "ns=2;s=W001.T003"]

        tags = [OpcUaTag(tag_id=i, node_id=n) for i, n in enumerate(node_ids)]
        got = Collector()
        session = OpcUaSession(endpoint, tags, got, publishing_interval_ms=200)
        runner = asyncio.create_task(session.run())
        await wait_until(lambda: all(got.readings[t.tag_id] for t in tags), "initial snapshots")
        proc.send_signal(signal.SIGUSR1)  # publish
        await wait_until(lambda: all(len(got.readings[t.tag_id]) > 5 for t in tags), "values")
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if session is not None and runner is not None:
            await session.stop()
            await runner
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["published"] > 0
    assert summary["endpoint"] == endpoint
    assert sum(summary["per_node"].values()) == summary["published"]
    assert json.loads(summary_file.read_text()) == summary
    for t in tags:
        n = summary["per_node"][t.node_id]
        assert [v for _, v, _ in got.readings[t.tag_id]] == [float(k) for k in range(n + 1)]


class TextCollector:
    """The on_text callback."""

    def __init__(self) -> None:
        self.readings: dict[int, list[tuple[int, str, int]]] = defaultdict(list)

    def __call__(
        self,
        tag_ids: npt.NDArray[np.int32],
        time_us: npt.NDArray[np.int64],
        texts: list[str],
        quality: npt.NDArray[np.int32],
    ) -> None:
        assert tag_ids.dtype == np.int32 and time_us.dtype == np.int64
        assert quality.dtype == np.int32 and len(tag_ids) == len(texts) == len(quality) > 0
        for t, ts, s, q in zip(tag_ids.tolist(), time_us.tolist(), texts, quality.tolist(), strict=True):
            self.readings[t].append((ts, s, q))


async def test_strings_go_to_on_text_numbers_stay_numeric() -> None:
    sim = OpcUaSimulator(port=free_port(), wells=2, tags_per_well=2, interval_ms=50, string_tags=True, paused=True)
    await sim.start()
    tags = tags_of(sim)
    text_nodes = set(sim.text_node_ids())
    assert len(text_nodes) == 2
    got, texts, legacy = Collector(), TextCollector(), Collector()
    session = OpcUaSession(sim.endpoint, tags, got, on_text=texts)
    without_text = OpcUaSession(sim.endpoint, tags, legacy)  # no on_text: strings are Bad NaN
    runners = [asyncio.create_task(s.run()) for s in (session, without_text)]
    try:
        await wait_until(
            lambda: (
                all(got.readings[t.tag_id] or texts.readings[t.tag_id] for t in tags)
                and all(legacy.readings[t.tag_id] for t in tags)
            ),
            "initial snapshots",
        )
        await sim.resume()
        await asyncio.sleep(1.0)  # the publishing window
        await sim.pause()
        published = sim.published_per_node()

        def arrived(t: OpcUaTag) -> int:
            return len(texts.readings[t.tag_id] if t.node_id in text_nodes else got.good(t.tag_id))

        await wait_until(lambda: all(arrived(t) > published[t.node_id] for t in tags), "values")
        await asyncio.sleep(0.3)  # a quiet window: anything extra (a duplicate) would show up now
        for t in tags:
            n = published[t.node_id]
            if t.node_id in text_nodes:
                assert [s for _, s, _ in texts.readings[t.tag_id]] == [f"v{k}" for k in range(n + 1)]
                assert all(q == 0 for _, _, q in texts.readings[t.tag_id])
                assert not got.readings[t.tag_id]
                bad = legacy.readings[t.tag_id]
                assert bad and all(np.isnan(v) and q < 0 for _, v, q in bad)
            else:
                assert [v for _, v, _ in got.readings[t.tag_id]] == [float(k) for k in range(n + 1)]
                assert not texts.readings[t.tag_id]
        assert session.stats["text_values"] == sum(published[n] + 1 for n in text_nodes)
    finally:
        for s in (session, without_text):
            await s.stop()
        await asyncio.gather(*runners)
        await sim.stop()


async def test_per_tag_queue_and_deadband_settings() -> None:
    sim = OpcUaSimulator(port=free_port(), wells=1, tags_per_well=3, interval_ms=20, paused=True)
    await sim.start()
    plain, deadband, latest_only = (
        OpcUaTag(1, sim.node_ids()[0]),
        # asyncua compares with the previous value: a count moves by 1, never by more than 1.5.
        OpcUaTag(2, sim.node_ids()[1], deadband_type="absolute", deadband_value=1.5),
        OpcUaTag(3, sim.node_ids()[2], queue_size=1, discard_oldest=True),
    )
    tags = [plain, deadband, latest_only]
    got = Collector()
    session = OpcUaSession(sim.endpoint, tags, got, publishing_interval_ms=500)
    runner = asyncio.create_task(session.run())
    try:
        await wait_until(lambda: all(got.readings[t.tag_id] for t in tags), "initial snapshots")
        await sim.resume()
        await asyncio.sleep(2.0)  # the publishing window
        await sim.pause()
        n = sim.published_per_node()[plain.node_id]
        await wait_until(lambda: len(got.readings[plain.tag_id]) == n + 1, "every plain value")
        await wait_until(lambda: got.readings[latest_only.tag_id][-1][1] == n, "the last value")
        await asyncio.sleep(0.6)  # a quiet window: a value the filters should drop would show up
        assert [v for _, v, _ in got.readings[plain.tag_id]] == [float(k) for k in range(n + 1)]
        assert [v for _, v, _ in got.readings[deadband.tag_id]] == [0.0]
        latest = [v for _, v, _ in got.readings[latest_only.tag_id]]
        assert latest == sorted(set(latest)) and len(latest) < n / 2  # one per publish
    finally:
        await session.stop()
        await runner
        await sim.stop()


def test_simulator_command_line_options() -> None:
    from ingest.core.models import SecurityMode, SecurityPolicy
    from ingest.simulators.opcua_sim import _parse_args

    args = _parse_args(
        [
            *("--security", "SignAndEncrypt:Aes256_Sha256_RsaPss", "--security", "None"),
            *("--user", "operator:pa:ss", "--string-tags", "--historize"),
        ]
    )
    assert args.security == [
        (SecurityMode.SIGN_AND_ENCRYPT, SecurityPolicy.AES256_SHA256_RSAPSS),
        (SecurityMode.NONE, SecurityPolicy.NONE),
    ]
    assert args.user == [("operator", "pa:ss")] and args.string_tags and args.historize
    with pytest.raises(SystemExit):
        _parse_args(["--security", "Encrypt:Basic256Sha256"])


def test_slow_tag_class_publishes_less_and_counts_stay_exact() -> None:
    import asyncio

    from ingest.simulators.opcua_sim import OpcUaSimulator

    async def run() -> dict[str, int]:
        sim = OpcUaSimulator(port=0, wells=1, tags_per_well=4, interval_ms=20, slow_every=5, slow_fraction=0.5)
        await sim.start()
        await asyncio.sleep(1.0)  # the publishing window
        await sim.stop()
        return sim.published_per_node()

    counts = asyncio.run(run())
    fast = [v for k, v in counts.items() if k.endswith(("T001", "T002"))]
    slow = [v for k, v in counts.items() if k.endswith(("T003", "T004"))]
    assert min(fast) >= 3 * max(slow) > 0


def test_one_command_starts_several_simulator_processes() -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest.simulators.opcua_sim",
            "--port",
            "0",
            "--count",
            "3",
            "--wells",
            "1",
            "--tags",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready = []
    while len(ready) < 3:
        line = proc.stdout.readline()
        assert line, "a simulator exited before it was ready"
        if line.startswith("READY "):
            ready.append(line.split()[1])
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert len(set(ready)) == 3  # three servers, three ports
