"""The project-owned local Redis server (AOF on).

All state lives under a directory passed in by the caller (by default the checkout's ``.local``):
``<dir>`` holds ``redis.conf``, ``redis.pid``, ``redis.log``, the RDB dump and the AOF directory.
Redis runs as the current user and reads ``requirepass`` from a config file of mode 0600, so the
password is never on a command line nor in an error message.

Everything here is synchronous and uses only the standard library.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ingest.localstack.processes import fail, proc_alive, read_pid, run, write_if_changed

__all__ = ["RedisParams", "ensure_redis", "redis_running", "stop_redis"]


REDIS_SERVER = "redis-server"
REDIS_START_TIMEOUT_S = 60.0
REDIS_STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RedisParams:
    dir: Path
    port: int
    password: str
    host: str = "127.0.0.1"

    def __repr__(self) -> str:
        return f"RedisParams(dir={str(self.dir)!r}, port={self.port}, password='***', host={self.host!r})"


def _redis_conf_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _redis_paths(r: RedisParams) -> tuple[Path, Path, Path]:
    d = r.dir.resolve()
    return d / "redis.conf", d / "redis.pid", d / "redis.log"


def _redis_conf(r: RedisParams) -> str:
    conf, pidfile, logfile = _redis_paths(r)
    settings = [
        ("bind", r.host),
        ("port", str(r.port)),
        ("protected-mode", "yes"),
        ("daemonize", "yes"),
        ("dir", _redis_conf_quote(str(r.dir.resolve()))),
        ("pidfile", _redis_conf_quote(str(pidfile))),
        ("logfile", _redis_conf_quote(str(logfile))),
        ("appendonly", "yes"),
        ("appendfsync", "always"),  # a spooled batch is acknowledged only once on disk
        # No RDB snapshots besides the AOF: durability is the AOF's, and Redis' default rules
        # (every 60 s after 10,000 changes) forked and dumped the whole dataset each minute under
        # load (a 650 MB dump took 2-17 s of a core, on the cores the pipeline runs on).
        ("save", '""'),
        ("requirepass", _redis_conf_quote(r.password)),
    ]
    # The header names the module this came from first; changing the text would make every
    # running stack restart once to rewrite an unchanged config.
    lines = ["# Written by ingest.localstack.processes; edits are overwritten.\n"]
    lines += [f"{k} {v}\n" for k, v in settings]
    return "".join(lines)


def _resp_command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\r\n")
    buf[:] = rest
    return line


def _redis_call(r: RedisParams, *commands: Sequence[str], timeout: float = 2.0) -> list[bytes]:
    """Send commands (AUTH first) over a raw socket; return each simple reply line.
    Raises OSError/ConnectionError when the server is unreachable or closes the connection."""
    with socket.create_connection((r.host, r.port), timeout=timeout) as sock:
        sock.sendall(b"".join(_resp_command(*c) for c in commands))
        buf = bytearray()
        replies: list[bytes] = []
        for _ in commands:
            replies.append(_read_line(sock, buf))
        return replies


def _redis_ping(r: RedisParams) -> bool:
    try:
        auth, pong = _redis_call(r, ("AUTH", r.password), ("PING",))
    except (OSError, ConnectionError):
        return False
    return auth == b"+OK" and pong == b"+PONG"


def _redis_pid(r: RedisParams) -> int | None:
    _, pidfile, _ = _redis_paths(r)
    pid = read_pid(pidfile)
    if pid is not None and proc_alive(pid, "redis-server"):
        return pid
    return None


def ensure_redis(r: RedisParams) -> None:
    """Start the project's redis-server (daemonized, AOF on, password required) unless it
    already answers an authenticated PING on ``r.host:r.port``. Idempotent."""
    if _redis_ping(r):
        return
    r.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(r.dir, 0o700)
    conf, pidfile, logfile = _redis_paths(r)
    write_if_changed(conf, _redis_conf(r), 0o600, None)
    pid = _redis_pid(r)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        res = run([REDIS_SERVER, str(conf)], cwd=r.dir, timeout=60)
        if res.returncode != 0:
            raise fail(
                f"redis-server in {r.dir} failed to start (exit {res.returncode}): "
                f"{(res.stdout + res.stderr).strip()}",
                logfile,
            )
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    started = time.monotonic()
    while not _redis_ping(r):
        # The daemon writes its pid file shortly after forking; give it a moment.
        if time.monotonic() - started > 2.0 and _redis_pid(r) is None:
            raise fail(f"redis-server in {r.dir} exited during startup", logfile)
        if time.monotonic() > deadline:
            raise fail(
                f"redis-server in {r.dir} does not answer PING on {r.host}:{r.port} "
                f"after {REDIS_START_TIMEOUT_S:.0f}s",
                logfile,
            )
        time.sleep(0.1)


def stop_redis(r: RedisParams) -> None:
    """Shut the server down (SHUTDOWN saves the dataset) if it runs. Idempotent."""
    _, pidfile, logfile = _redis_paths(r)
    pid = _redis_pid(r)
    if _redis_ping(r):
        try:
            # On success the server closes the connection without replying.
            replies = _redis_call(r, ("AUTH", r.password), ("SHUTDOWN",), timeout=30.0)
        except (OSError, ConnectionError):
            replies = []
        if len(replies) == 2 and replies[1].startswith(b"-"):
            reason = replies[1][1:].decode(errors="replace")
            raise fail(
                f"redis-server in {r.dir} refused SHUTDOWN: {reason}",
                logfile,
            )
    elif pid is not None:
        os.kill(pid, 15)  # SIGTERM: graceful shutdown, also saves
    if pid is None:
        pid = _redis_pid(r)
    deadline = time.monotonic() + REDIS_STOP_TIMEOUT_S
    while pid is not None and proc_alive(pid, "redis-server"):
        if time.monotonic() > deadline:
            raise fail(f"redis-server (pid {pid}) in {r.dir} did not exit", logfile)
        time.sleep(0.1)
    if _redis_pid(r) is None:
        pidfile.unlink(missing_ok=True)


def redis_running(r: RedisParams) -> bool:
    """True when a server answers an authenticated PING with ``r.password`` on host:port."""
    return _redis_ping(r)
