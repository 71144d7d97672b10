"""The refresher's rebuild from raw, cut into statements of ``RAW_SLICE_TAGS`` tags with a pause
after each (``pace`` times the statement's own time): a fake connection and a fake clock, so the
pauses asked for are exact. That every level still equals plain SQL over raw when rebuilt in
slices is test_rollups' property test (two tags a statement there)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from ingest.read import refresher, rollups
from ingest.read.refresher import PassResult, RollupRefresher

LO = datetime(2026, 11, 27, 12, tzinfo=UTC)


class FakeConn:
    """Records statements; each INSERT from raw takes 0.04 s on the fake clock."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def execute(self, sql: str, *args: Any) -> str:
        self.statements.append((sql.split()[0], args))
        if sql.lstrip().startswith("INSERT"):
            self.clock[0] += 0.04
        return "OK"


@pytest.mark.parametrize("pace", [0.0, 1.5])
async def test_rebuild_from_raw_runs_in_slices_and_pauses_pace_times_each(
    pace: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    pauses: list[float] = []

    async def sleep(s: float) -> None:
        pauses.append(round(s, 9))
        clock[0] += s

    loop = SimpleNamespace(time=lambda: clock[0])
    monkeypatch.setattr(rollups, "asyncio", SimpleNamespace(get_running_loop=lambda: loop, sleep=sleep))
    monkeypatch.setattr(rollups, "RAW_SLICE_TAGS", 100)
    conn = FakeConn(clock)
    changed: dict[str, datetime] = {}
    tags = list(range(1, 251))
    end = LO + timedelta(minutes=2)
    await rollups._rebuild_from_raw(conn, changed, "rollup_1m", "1 minute", LO, end, tags, pace)  # type: ignore[arg-type]

    assert [kind for kind, _ in conn.statements] == ["DELETE", "INSERT", "INSERT", "INSERT"]
    # One DELETE over the range for every tag (tags gone from tag_mappings lose their rows too).
    assert conn.statements[0][1] == (LO, LO + timedelta(minutes=2))
    assert [args[2] for _, args in conn.statements[1:]] == [tags[:100], tags[100:200], tags[200:]]
    assert pauses == ([] if pace == 0 else [round(0.04 * pace, 9)] * 3)
    assert changed == {"rollup_1m": LO}


async def test_the_refresher_paces_its_passes_only_while_it_keeps_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # A pass that leaves work behind (a backfill, a backlog) is followed by unpaced passes until
    # one does not: catching up comes before sparing the cores.
    paces: list[float] = []
    results = iter([PassResult(more=True), PassResult(more=True), PassResult(), PassResult()])

    async def fake_pass(conn: Any, *, pace: float, **_: Any) -> PassResult:
        paces.append(pace)
        return next(results)

    async def no_connection() -> None:
        return None

    monkeypatch.setattr(refresher, "refresh_pass", fake_pass)
    r = RollupRefresher("postgresql://unused", pace=1.5)
    monkeypatch.setattr(r, "_connection", no_connection)
    for _ in range(4):
        await r.run_pass()
    assert paces == [1.5, 0.0, 0.0, 1.5]
