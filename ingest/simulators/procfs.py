"""The few facts the harness reads from ``/proc`` (Linux): a process's stat fields and the pids
present. Used to kill a node's processes (``node_loss``) and to charge CPU time to the processes
that run a stage (``scale_tests.cpu``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

__all__ = ["pids", "stat_fields"]


def pids() -> Iterator[int]:
    """Every process id present now."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 (state) on, so ``[1]`` is the parent pid and ``[11]``,
    ``[12]`` are utime and stime; None once the process is gone. The command name (field 2) may
    hold spaces and parentheses, so the split starts after its last ``)``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()
