"""Process CPU time from /proc, and py-spy profiles summarised into top functions.

CPU is read as utime + stime of each pid (``/proc/<pid>/stat`` fields 14 and 15), so a stage is
charged for exactly the processes that run it: the bench's own driver, a Ray worker hosting a
connection actor or a writer, a simulator. Children are not included (``cutime`` is only filled
for reaped children, and none of ours are).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ingest.core.procfs import cmdline, pids, stat_fields

_TICK = os.sysconf("SC_CLK_TCK")
# The processes each stage of a request runs in, by what their command line says (Ray names its
# workers after the actor they host): for ``CpuMeter(pids_of(marker))``.
CPU_STAGES = {
    "serve_proxy": "ray::ProxyActor",
    "api_replica": "ray::ServeReplica",
    "writer": "ray::WriterActor",
    "postgres": "postgres",
    "redis": "redis-server",
}
_PATH = re.compile(r"\((?:[^():]*/)")  # "(/long/path/to/module.py:12)" -> "(module.py:12)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (0.0 once it is gone)."""
    fields = stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def pids_of(marker: str) -> list[int]:
    """Processes whose command line starts with ``marker`` (after any directory)."""
    out = []
    for pid in pids():
        args = cmdline(pid)
        if args and args[0].rsplit("/", 1)[-1].startswith(marker):
            out.append(pid)
    return out


def total_cpu(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(p) for p in set(pids))


class CpuMeter:
    """CPU seconds a set of processes spends between ``start`` and ``stop``."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = sorted(set(pids))
        self._t0 = 0.0
        self.seconds = 0.0

    def start(self) -> CpuMeter:
        self._t0 = total_cpu(self.pids)
        return self

    def stop(self) -> float:
        self.seconds = total_cpu(self.pids) - self._t0
        return self.seconds


# Everything else a live measurement shares the cores with (scale_tests.bench_live).
CPU_OTHERS = {
    "connection_actors": "ray::ConnectionActor",
    "ray_daemons": ("raylet", "gcs_server", "ray::IDLE", "ray::ServeController", "ray::CoordinatorActor"),
}


def stage_meters(extra: dict[str, list[int]] | None = None) -> dict[str, CpuMeter]:
    """Started meters for every stage of ``CPU_STAGES`` and ``CPU_OTHERS``, and ``extra``
    (name -> pids: a simulator, the bench's own process)."""
    meters = {name: CpuMeter(pids_of(marker)) for name, marker in CPU_STAGES.items()}
    for name, markers in CPU_OTHERS.items():
        marks = (markers,) if isinstance(markers, str) else markers
        meters[name] = CpuMeter(p for m in marks for p in pids_of(m))
    for name, ps in (extra or {}).items():
        meters[name] = CpuMeter(ps)
    return {name: m.start() for name, m in meters.items()}


def cores_used(meters: dict[str, CpuMeter], seconds: float) -> dict[str, float]:
    """Stopped meters as cores busy on average (CPU seconds per second), with their ``total``."""
    out = {name: round(m.stop() / seconds, 3) for name, m in meters.items()}
    out["total"] = round(sum(out.values()), 3)
    return out


def per_million(cpu_s: float, values: float) -> float:
    """CPU seconds per million values."""
    return round(cpu_s / values * 1e6, 3) if values else 0.0


# -- py-spy ------------------------------------------------------------------------------------
def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start_profile(pid: int, out: Path, rate: int = 200) -> subprocess.Popen[bytes] | None:
    """Sample ``pid`` with py-spy into collapsed stacks at ``out`` until the profile is stopped."""
    exe = py_spy()
    if exe is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking"]
        + ["-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profile(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.send_signal(2)  # py-spy writes its file on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# Leaf frames where a thread waits rather than works: the event loop's poll, Ray's core-worker
# main loop and thread-pool workers blocked in native code (py-spy cannot always tell them idle).
IDLE_LEAVES = ("select (", "epoll", "Worker.main_loop (", "Thread.run (", "_worker (thread.py", "wait (threading")


def summarise(collapsed: Path, top: int = 25, idle: tuple[str, ...] = IDLE_LEAVES) -> str:
    """Top functions by cumulative and by own samples, from py-spy's collapsed stacks; samples whose
    leaf is a thread waiting (``idle``) are counted apart, so percentages are of busy time."""
    cum: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = waiting = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not stack or not n_s.isdigit():
            continue
        n = int(n_s)
        frames = [_PATH.sub("(", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ")]
        if not frames:
            continue
        if any(k in frames[-1] for k in idle):
            waiting += n
            continue
        busy += n
        own[frames[-1]] += n
        for f in set(frames):
            cum[f] += n
    lines = [f"samples: {busy} busy, {waiting} waiting in the event loop"]
    lines.append("cumulative (% of busy samples):")
    lines += [f"  {100 * n / max(busy, 1):5.1f}%  {f}" for f, n in cum.most_common(top)]
    lines.append("own time (% of busy samples):")
    lines += [f"  {100 * n / max(busy, 1):5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)
