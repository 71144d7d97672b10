"""The project-owned local PostgreSQL 15 (+ TimescaleDB) cluster.

All state lives under a directory passed in by the caller (by default the checkout's ``.local``).
PostgreSQL refuses to run as root, so when this process is root every PostgreSQL program runs as
the ``postgres`` OS user through ``runuser``; otherwise it runs as the current user. The password
is never put on a command line nor into an error message: initdb gets it through a temporary
``--pwfile``.

Layout: ``<data_dir>`` (the cluster, owned by postgres, mode 0700, also holds ``postgresql.log``)
and ``<data_dir>/../pgrun`` (the unix socket directory, owned by postgres).

Everything here is synchronous and uses only the standard library.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ingest.core.errors import LocalStackError
from ingest.localstack.processes import (
    LOG_TAIL_LINES,
    fail,
    is_root,
    proc_alive,
    read_pid,
    run,
    write_if_changed,
)

__all__ = ["PostgresParams", "ensure_postgres", "postgres_running", "stop_postgres"]


PG_MAJOR = 15
PG_BIN = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
PG_LIBDIR = Path(f"/usr/lib/postgresql/{PG_MAJOR}/lib")
PG_SHAREDIR = Path(f"/usr/share/postgresql/{PG_MAJOR}")
PG_OS_USER = "postgres"
SETTINGS_FILE = "scada_ingest.conf"
INCLUDE_LINE = f"include_if_exists = '{SETTINGS_FILE}'"
PG_LOG_FILE = "postgresql.log"
PG_START_TIMEOUT_S = 120
PG_STOP_TIMEOUT_S = 120


@dataclass(frozen=True)
class PostgresParams:
    data_dir: Path
    port: int
    superuser: str
    password: str
    host: str = "127.0.0.1"

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return (
            f"PostgresParams(data_dir={str(self.data_dir)!r}, port={self.port}, "
            f"superuser={self.superuser!r}, password='***', host={self.host!r})"
        )


def _pg_cmd(program: str, *args: str) -> list[str]:
    cmd = [str(PG_BIN / program), *args]
    if is_root():
        return ["runuser", "-u", PG_OS_USER, "--", *cmd]
    return cmd


def _pg_ids() -> tuple[int, int] | None:
    """uid/gid that owns the cluster files, or None when running as the current user."""
    if not is_root():
        return None
    try:
        pw = pwd.getpwnam(PG_OS_USER)
    except KeyError as e:
        raise LocalStackError(
            f"OS user {PG_OS_USER!r} does not exist; install postgresql-{PG_MAJOR} (scripts/bootstrap.sh)"
        ) from e
    return pw.pw_uid, pw.pw_gid


def _pg_run_dir(p: PostgresParams) -> Path:
    return p.data_dir.parent / "pgrun"


def _pg_log(p: PostgresParams) -> Path:
    return p.data_dir / PG_LOG_FILE


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _check_pg_installed() -> None:
    for program in ("initdb", "pg_ctl", "postgres", "pg_isready"):
        if not (PG_BIN / program).exists():
            raise LocalStackError(
                f"{PG_BIN / program} not found; install postgresql-{PG_MAJOR} (run scripts/bootstrap.sh)"
            )
    if (
        not (PG_SHAREDIR / "extension" / "timescaledb.control").exists()
        or not (PG_LIBDIR / "timescaledb.so").exists()
    ):
        raise LocalStackError(f"TimescaleDB is not installed for PostgreSQL {PG_MAJOR}; run scripts/bootstrap.sh")


def _prepare_pg_dirs(p: PostgresParams) -> tuple[int, int] | None:
    ids = _pg_ids()
    base = p.data_dir.parent
    run_dir = _pg_run_dir(p)
    base.mkdir(parents=True, exist_ok=True)
    for d in (p.data_dir, run_dir):
        d.mkdir(mode=0o700 if d == p.data_dir else 0o755, exist_ok=True)
        if ids is not None:
            st = d.stat()
            if (st.st_uid, st.st_gid) != ids:
                os.chown(d, *ids)
    os.chmod(p.data_dir, 0o700)
    os.chmod(run_dir, 0o755)
    if ids is not None:
        # The postgres user must be able to traverse to its directories: add o+x on the
        # directory holding them and on its parent (the local-state folder) when missing.
        for d in (base, base.parent):
            mode = stat.S_IMODE(d.stat().st_mode)
            if not mode & stat.S_IXOTH:
                os.chmod(d, mode | stat.S_IXOTH)
        probe = run(["runuser", "-u", PG_OS_USER, "--", "test", "-x", str(p.data_dir)])
        if probe.returncode != 0:
            raise LocalStackError(
                f"the {PG_OS_USER} OS user cannot reach {p.data_dir}: some parent directory "
                "lacks execute permission for others (chmod o+x it)"
            )
    return ids


def _initdb(p: PostgresParams, ids: tuple[int, int] | None) -> None:
    if (p.data_dir / "PG_VERSION").exists():
        return
    if any(p.data_dir.iterdir()):
        raise LocalStackError(
            f"{p.data_dir} is not empty but holds no PostgreSQL cluster; remove it or choose another directory"
        )
    run_dir = _pg_run_dir(p)
    fd, pwfile = tempfile.mkstemp(prefix=".pwfile-", dir=run_dir)
    try:
        os.fchmod(fd, 0o600)
        if ids is not None:
            os.fchown(fd, *ids)
        os.write(fd, (p.password + "\n").encode())
        os.close(fd)
        fd = -1
        res = run(
            _pg_cmd(
                "initdb",
                "-D",
                str(p.data_dir),
                "-U",
                p.superuser,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ),
            cwd=run_dir,
        )
    finally:
        if fd >= 0:
            os.close(fd)
        Path(pwfile).unlink(missing_ok=True)
    if res.returncode != 0:
        output = (res.stdout + res.stderr).strip().splitlines()[-LOG_TAIL_LINES:]
        raise LocalStackError(f"initdb of {p.data_dir} failed (exit {res.returncode}):\n" + "\n".join(output))


def _pg_settings(p: PostgresParams) -> str:
    settings = [
        ("listen_addresses", _conf_quote(p.host)),
        ("port", str(p.port)),
        ("unix_socket_directories", _conf_quote(str(_pg_run_dir(p).resolve()))),
        ("shared_preload_libraries", "'timescaledb'"),
        ("timescaledb.telemetry_level", "off"),
        # A test session makes many tenants; each holds a few connections (writer, rollup
        # refresher, the API's pools) while its writer lives.
        ("max_connections", "500"),
        ("shared_buffers", "'512MB'"),
        ("max_wal_size", "'4GB'"),
        ("checkpoint_timeout", "'15min'"),
        ("wal_compression", "on"),
        ("password_encryption", "'scram-sha-256'"),
        # Logging: the server's stderr goes to <data_dir>/postgresql.log (pg_ctl -l).
        ("logging_collector", "off"),
        ("log_destination", "'stderr'"),
        ("log_line_prefix", "'%m [%p] %q%u@%d '"),
        ("log_timezone", "'UTC'"),
    ]
    # The header names the module this came from first; changing the text would make every
    # running stack restart once to rewrite an unchanged config.
    lines = ["# Written by ingest.localstack.processes; edits are overwritten.\n"]
    lines += [f"{k} = {v}\n" for k, v in settings]
    return "".join(lines)


def _write_pg_config(p: PostgresParams, ids: tuple[int, int] | None) -> bool:
    """Write the settings file (and its include line); True when anything changed."""
    main_conf = p.data_dir / "postgresql.conf"
    try:
        text = main_conf.read_text()
    except OSError as e:
        raise LocalStackError(f"cannot read {main_conf}: {e.strerror}") from e
    changed = False
    if INCLUDE_LINE not in text.splitlines():
        if not text.endswith("\n"):
            text += "\n"
        text += f"\n# scada-ingest local stack settings\n{INCLUDE_LINE}\n"
        write_if_changed(main_conf, text, 0o600, ids)
        changed = True
    if write_if_changed(p.data_dir / SETTINGS_FILE, _pg_settings(p), 0o600, ids):
        changed = True
    return changed


def _is_our_postmaster(pid: int, data_dir: Path) -> bool:
    """A live postgres process whose working directory (a postmaster chdirs into its data
    directory) is ``data_dir`` when that can be read."""
    if not proc_alive(pid, "postgres"):
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return True  # not allowed to look; trust the pid file
    return Path(cwd) == data_dir.resolve()


def _postmaster_pid(p: PostgresParams) -> int | None:
    """PID of the live postmaster of this cluster, or None (a stale pid file gives None)."""
    pid = read_pid(p.data_dir / "postmaster.pid")
    if pid is not None and _is_our_postmaster(pid, p.data_dir):
        return pid
    return None


def _postmaster_port(p: PostgresParams) -> int | None:
    try:
        lines = (p.data_dir / "postmaster.pid").read_text().splitlines()
        return int(lines[3].strip())
    except (OSError, IndexError, ValueError):
        return None


def _remove_stale_pg_locks(p: PostgresParams) -> None:
    """Remove lock files left by a postmaster that is gone (crash, container restart)."""
    candidates = [p.data_dir / "postmaster.pid"]
    run_dir = _pg_run_dir(p)
    if run_dir.is_dir():
        candidates += sorted(run_dir.glob(".s.PGSQL.*.lock"))
    for lock in candidates:
        if not lock.exists():
            continue
        pid = read_pid(lock)
        if pid is None or not _is_our_postmaster(pid, p.data_dir):
            lock.unlink(missing_ok=True)
            if lock.name.endswith(".lock"):
                lock.with_suffix("").unlink(missing_ok=True)  # the socket itself


def _pg_ready(p: PostgresParams) -> bool:
    res = run(
        [str(PG_BIN / "pg_isready"), "-q", "-h", p.host, "-p", str(p.port), "-t", "2"],
        timeout=10,
    )
    return res.returncode == 0


def _wait_pg_ready(p: PostgresParams, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if _pg_ready(p):
            return
        if _postmaster_pid(p) is None:
            raise fail(f"PostgreSQL in {p.data_dir} exited during startup", _pg_log(p))
        if time.monotonic() > deadline:
            raise fail(
                f"PostgreSQL in {p.data_dir} does not accept connections on "
                f"{p.host}:{p.port} after {timeout:.0f}s",
                _pg_log(p),
            )
        time.sleep(0.2)


def _pg_ctl(p: PostgresParams, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return run(_pg_cmd("pg_ctl", *args), cwd=_pg_run_dir(p), timeout=timeout)


def _pg_start(p: PostgresParams) -> None:
    _remove_stale_pg_locks(p)
    res = _pg_ctl(
        p,
        "start",
        "-D",
        str(p.data_dir),
        "-l",
        str(_pg_log(p)),
        "-w",
        "-t",
        str(PG_START_TIMEOUT_S),
        "-s",
        timeout=PG_START_TIMEOUT_S + 30,
    )
    if res.returncode != 0:
        raise fail(
            f"pg_ctl start of {p.data_dir} failed (exit {res.returncode}): {(res.stdout + res.stderr).strip()}",
            _pg_log(p),
        )
    _wait_pg_ready(p, PG_START_TIMEOUT_S)


def ensure_postgres(p: PostgresParams) -> None:
    """Create (initdb), configure and start the cluster as needed; return once it accepts
    TCP connections on ``p.host:p.port``. Idempotent. A running cluster whose settings file
    changed (e.g. a new port) is restarted."""
    _check_pg_installed()
    ids = _prepare_pg_dirs(p)
    _initdb(p, ids)
    changed = _write_pg_config(p, ids)
    if _postmaster_pid(p) is not None:
        if not changed and _postmaster_port(p) == p.port:
            _wait_pg_ready(p, PG_START_TIMEOUT_S)
            return
        stop_postgres(p)
    _pg_start(p)


def stop_postgres(p: PostgresParams) -> None:
    """Stop the cluster (fast shutdown) if it runs. Idempotent."""
    if _postmaster_pid(p) is None:
        _remove_stale_pg_locks(p)
        return
    res = _pg_ctl(
        p,
        "stop",
        "-D",
        str(p.data_dir),
        "-m",
        "fast",
        "-w",
        "-t",
        str(PG_STOP_TIMEOUT_S),
        "-s",
        timeout=PG_STOP_TIMEOUT_S + 30,
    )
    if res.returncode != 0 and _postmaster_pid(p) is not None:
        raise fail(
            f"pg_ctl stop of {p.data_dir} failed (exit {res.returncode}): {(res.stdout + res.stderr).strip()}",
            _pg_log(p),
        )


def postgres_running(p: PostgresParams) -> bool:
    """True when this cluster's postmaster is alive and accepts connections on host:port."""
    if _postmaster_pid(p) is None:
        return False
    return _pg_ready(p)
