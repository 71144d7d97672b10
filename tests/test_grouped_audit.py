"""GroupedAudit (ingest.push.audit): pushes' audit rows go into the master database in groups,
each writer answered once its own row's statement is done. One class, a fake statement; the
real one (``MasterStore.audit_many``) runs in test_push_api's audit tests."""

from __future__ import annotations

import asyncio

import pytest

from ingest.push.audit import AuditRow, GroupedAudit


class Statements:
    """Records each statement's rows; holds each until released; fails the ones told to."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail_next = False

    async def insert(self, rows: list[AuditRow]) -> None:
        self.groups.append([r[2] for r in rows])
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("master away")


async def test_rows_written_meanwhile_share_the_next_statement() -> None:
    db = Statements()
    audit = GroupedAudit(db.insert)
    first = asyncio.create_task(audit.write("k", None, "a", {}))
    await asyncio.sleep(0)  # the first statement is under way
    rest = [asyncio.create_task(audit.write("k", "t", name, {"n": 1})) for name in ("b", "c", "d")]
    await asyncio.sleep(0)
    assert db.groups == [["a"]] and not any(t.done() for t in (first, *rest))
    db.release.set()
    await asyncio.gather(first, *rest)
    assert db.groups == [["a"], ["b", "c", "d"]] and audit.statements == 2


async def test_a_failed_statement_fails_its_group_only() -> None:
    db = Statements()
    audit = GroupedAudit(db.insert)
    db.fail_next = True
    first = asyncio.create_task(audit.write("k", None, "a", {}))
    await asyncio.sleep(0)
    second = asyncio.create_task(audit.write("k", None, "b", {}))
    db.release.set()
    with pytest.raises(ConnectionError):
        await first
    await second  # the next group's statement went through
    assert db.groups == [["a"], ["b"]]


async def test_a_cancelled_writer_leaves_its_group_written() -> None:
    db = Statements()
    audit = GroupedAudit(db.insert)
    gone = asyncio.create_task(audit.write("k", None, "a", {}))
    stays = asyncio.create_task(audit.write("k", None, "b", {}))
    await asyncio.sleep(0)
    gone.cancel()
    db.release.set()
    await stays
    assert gone.cancelled() and db.groups == [["a", "b"]]
