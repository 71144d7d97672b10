"""The few facts read from ``/proc`` (Linux): the pids present, a process's stat fields, command
line, liveness and descendants, and the TCP ports this process listens on. Used to stop the local
Ray cluster and only it (``actors.deploy.stop_local_ray``), to kill a node's processes
(``ingest.simulators.node_loss``), to charge CPU time to the processes that run a stage
(``scale_tests.cpu``), and by an API replica to find the port Serve's direct ingress gave it
(``serve_app.live_url``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["alive", "cmdline", "descendants", "listening_ports", "parents", "pids", "stat_fields"]


def pids() -> Iterator[int]:
    """Every process id present now."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 (state) on, so ``[0]`` is the state, ``[1]`` the parent
    pid and ``[11]``, ``[12]`` are utime and stime; None once the process is gone. The command
    name (field 2) may hold spaces and parentheses, so the split starts after its last ``)``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def cmdline(pid: int) -> list[str] | None:
    """The process's arguments (``argv``), or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def alive(pid: int) -> bool:
    """Present and not a zombie (ended, not yet reaped)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def parents() -> dict[int, int]:
    """pid -> parent pid, of every process present now."""
    out = {}
    for pid in pids():
        fields = stat_fields(pid)
        if fields is not None:
            out[pid] = int(fields[1])
    return out


def descendants(roots: Iterable[int], parent_of: dict[int, int] | None = None) -> set[int]:
    """``roots`` and every process below them (children, their children, ...)."""
    parent_of = parents() if parent_of is None else parent_of
    found = set(roots)
    grew = True
    while grew:
        more = {c for c, p in parent_of.items() if p in found and c not in found}
        found |= more
        grew = bool(more)
    return found


_LISTEN = "0A"  # TCP state in /proc/net/tcp


def listening_ports(lo: int = 0, hi: int = 65535) -> list[int]:
    """The TCP ports from ``lo`` to ``hi`` that a socket of this process listens on, ascending.
    ``/proc/self/net/tcp`` lists the namespace's sockets; the ones whose inode is among this
    process's open files (``/proc/self/fd``) are its own."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and fields[9] in inodes:
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if lo <= port <= hi:
                    ports.add(port)
    return sorted(ports)
