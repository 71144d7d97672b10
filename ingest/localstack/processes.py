"""Process plumbing shared by the local stack's PostgreSQL and Redis: running a program,
checking a pid, writing a config file atomically, quoting the tail of a log into an error.

Everything here is synchronous and uses only the standard library.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ingest.core.errors import LocalStackError

LOG_TAIL_LINES = 30


def is_root() -> bool:
    return os.geteuid() == 0


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError as e:
        return f"(no log at {path}: {e.strerror})"
    text = data.decode("utf-8", errors="replace").splitlines()[-lines:]
    if not text:
        return f"(log {path} is empty)"
    return f"last lines of {path}:\n" + "\n".join(text)


def fail(message: str, log: Path | None = None) -> LocalStackError:
    if log is not None:
        message = f"{message}\n{tail(log)}"
    return LocalStackError(message)


def run(
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(cmd),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise LocalStackError(f"program not found: {cmd[0]} ({e.strerror})") from e
    except subprocess.TimeoutExpired as e:
        raise LocalStackError(f"{Path(cmd[0]).name} timed out after {timeout:.0f}s") from e


def proc_alive(pid: int, comm: str) -> bool:
    """True when ``pid`` is a live process whose command name starts with ``comm``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else; the comm check decides
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return name.startswith(comm) and state not in ("Z", "X")  # a zombie has exited


def read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().splitlines()[0].strip()
        return int(first)
    except (OSError, IndexError, ValueError):
        return None


def write_if_changed(path: Path, content: str, mode: int, ids: tuple[int, int] | None) -> bool:
    try:
        if path.read_text() == content:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, content.encode())
        os.fchmod(fd, mode)
        if ids is not None:
            os.fchown(fd, *ids)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return True
