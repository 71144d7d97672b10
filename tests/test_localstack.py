"""ingest.localstack (postgres, redis_server) against the real PostgreSQL 15 + TimescaleDB and Redis servers.

Everything lives in a fresh directory under /tmp; its ports lie outside the kernel's ephemeral
range (tests.helpers.quiet_ports).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from ingest.core.errors import LocalStackError
from ingest.core.keys import read_or_create_secret
from ingest.localstack.postgres import PostgresParams, ensure_postgres, postgres_running, stop_postgres
from ingest.localstack.redis_server import RedisParams, ensure_redis, redis_running, stop_redis
from tests.helpers import quiet_ports

PG_PORT, REDIS_PORT, JUNK_PORT = quiet_ports(3)
HOST = "127.0.0.1"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path("/usr/lib/postgresql/15/bin/initdb").exists()
        or not Path("/usr/share/postgresql/15/extension/timescaledb.control").exists()
        or shutil.which("redis-server") is None,
        reason="PostgreSQL 15 + TimescaleDB + redis-server not installed (run scripts/bootstrap.sh)",
    ),
]


@pytest.fixture(scope="module")
def local_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="scada-localstack-", dir="/tmp"))
    os.chmod(d, 0o711)  # the postgres OS user must be able to traverse it
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def pg(local_dir: Path) -> Iterator[PostgresParams]:
    password = read_or_create_secret(local_dir / "secrets" / "pg_password")
    params = PostgresParams(data_dir=local_dir / "pg" / "data", port=PG_PORT, superuser="scada", password=password)
    try:
        yield params
    finally:
        stop_postgres(params)
        assert not postgres_running(params)


@pytest.fixture(scope="module")
def rds(local_dir: Path) -> Iterator[RedisParams]:
    password = read_or_create_secret(local_dir / "secrets" / "redis_password")
    params = RedisParams(dir=local_dir / "redis", port=REDIS_PORT, password=password)
    try:
        yield params
    finally:
        stop_redis(params)
        assert not redis_running(params)


def _alive(pid: int) -> bool:
    """Exists and is not a zombie (our PID 1 may reap exited daemons late)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _postmaster_pid(p: PostgresParams) -> int:
    return int((p.data_dir / "postmaster.pid").read_text().splitlines()[0])


async def _connect(p: PostgresParams, database: str = "postgres") -> asyncpg.Connection:
    return await asyncpg.connect(
        host=p.host, port=p.port, user=p.superuser, password=p.password, database=database
    )


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_start_and_timescaledb(pg: PostgresParams) -> None:
    ensure_postgres(pg)
    assert postgres_running(pg)

    async def check() -> tuple[str, str, int]:
        conn = await _connect(pg)
        try:
            await conn.execute("CREATE DATABASE tsdb_check")
        finally:
            await conn.close()
        conn = await _connect(pg, "tsdb_check")
        try:
            await conn.execute("CREATE EXTENSION timescaledb")
            version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            await conn.execute("CREATE TABLE m (ts timestamptz NOT NULL, v double precision)")
            await conn.execute("SELECT create_hypertable('m', 'ts')")
            await conn.execute("INSERT INTO m VALUES (now(), 42.0)")
            preload = await conn.fetchval("SHOW shared_preload_libraries")
            max_conn = int(await conn.fetchval("SHOW max_connections"))
            return str(version), str(preload), max_conn
        finally:
            await conn.close()

    version, preload, max_conn = asyncio.run(check())
    assert version.startswith("2.19")
    assert "timescaledb" in preload
    assert max_conn == 500


def test_postgres_ensure_is_idempotent(pg: PostgresParams) -> None:
    ensure_postgres(pg)
    pid = _postmaster_pid(pg)
    ensure_postgres(pg)
    ensure_postgres(pg)
    assert _postmaster_pid(pg) == pid
    assert postgres_running(pg)


def test_postgres_wrong_password_refused(pg: PostgresParams) -> None:
    ensure_postgres(pg)

    async def attempt() -> None:
        conn = await asyncpg.connect(host=pg.host, port=pg.port, user=pg.superuser, password="not-the-password")
        await conn.close()

    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(attempt())


def test_postgres_listens_on_host_only(pg: PostgresParams) -> None:
    ensure_postgres(pg)
    settings = (pg.data_dir / "scada_ingest.conf").read_text()
    assert "listen_addresses = '127.0.0.1'" in settings
    assert pg.password not in settings


def test_postgres_stop_and_restart_keeps_data(pg: PostgresParams) -> None:
    ensure_postgres(pg)
    stop_postgres(pg)
    assert not postgres_running(pg)
    stop_postgres(pg)  # idempotent
    ensure_postgres(pg)
    assert postgres_running(pg)

    async def count() -> int:
        conn = await _connect(pg, "tsdb_check")
        try:
            return int(await conn.fetchval("SELECT count(*) FROM m WHERE v = 42.0"))
        finally:
            await conn.close()

    assert asyncio.run(count()) == 1


def test_postgres_stale_pid_file(pg: PostgresParams) -> None:
    ensure_postgres(pg)
    pid = _postmaster_pid(pg)
    children = _children(pid)
    # Simulate a crash: kill the postmaster hard, then leave a pid file naming a dead process.
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    # the orphaned children notice the postmaster died and exit on their own
    for proc in [pid, *children]:
        while _alive(proc) and time.monotonic() < deadline:
            time.sleep(0.1)
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file = pg.data_dir / "postmaster.pid"
    lines = pid_file.read_text().splitlines()
    lines[0] = str(dead.pid)
    pid_file.write_text("\n".join(lines) + "\n")
    assert not postgres_running(pg)
    ensure_postgres(pg)
    assert postgres_running(pg)
    assert _postmaster_pid(pg) != dead.pid


def test_postgres_bad_dir_raises(local_dir: Path) -> None:
    junk = local_dir / "junk" / "data"
    junk.mkdir(parents=True)
    (junk / "something").write_text("x")
    if os.geteuid() == 0:
        shutil.chown(junk, "postgres", "postgres")
    p = PostgresParams(data_dir=junk, port=JUNK_PORT, superuser="scada", password="pw")
    with pytest.raises(LocalStackError):
        ensure_postgres(p)


# --------------------------------------------------------------------------- Redis


def _client(r: RedisParams, password: str) -> redis.Redis:
    return redis.Redis(host=r.host, port=r.port, password=password, socket_timeout=5)


def test_redis_set_get_with_password(rds: RedisParams) -> None:
    ensure_redis(rds)
    assert redis_running(rds)
    c = _client(rds, rds.password)
    try:
        c.set("k1", "v1")
        assert c.get("k1") == b"v1"
        assert c.config_get("appendonly")["appendonly"] == "yes"
        assert c.config_get("appendfsync")["appendfsync"] == "always"
        assert c.config_get("save")["save"] == ""  # the AOF only: no dumps of the dataset
        assert c.config_get("bind")["bind"] == HOST
    finally:
        c.close()


def test_redis_unauthenticated_refused(rds: RedisParams) -> None:
    ensure_redis(rds)
    with socket.create_connection((rds.host, rds.port), timeout=5) as s:
        s.sendall(b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"-NOAUTH"), reply
    wrong = RedisParams(dir=rds.dir, port=rds.port, password="wrong")
    assert not redis_running(wrong)


def test_redis_ensure_is_idempotent(rds: RedisParams) -> None:
    ensure_redis(rds)
    pid = (rds.dir / "redis.pid").read_text().strip()
    ensure_redis(rds)
    assert (rds.dir / "redis.pid").read_text().strip() == pid
    conf = rds.dir / "redis.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600


def test_redis_restart_keeps_data(rds: RedisParams) -> None:
    ensure_redis(rds)
    c = _client(rds, rds.password)
    try:
        c.set("persist", "yes")
    finally:
        c.close()
    stop_redis(rds)
    assert not redis_running(rds)
    stop_redis(rds)  # idempotent
    ensure_redis(rds)
    c = _client(rds, rds.password)
    try:
        assert c.get("persist") == b"yes"
        assert c.get("k1") == b"v1"
    finally:
        c.close()


def test_redis_aof_survives_kill(rds: RedisParams) -> None:
    """No RDB save happens on SIGKILL, so the value can only come back from the AOF.

    Redis is killed the moment the write is acknowledged. A process kill cannot tell
    ``appendfsync always`` from ``everysec`` (Redis write()s the AOF before it replies in both;
    only the fsync differs, which matters when the machine dies, not the process), so the test
    also asserts the setting that makes an acknowledged spool push durable.
    """
    ensure_redis(rds)
    c = _client(rds, rds.password)
    try:
        assert c.config_get("appendfsync") == {"appendfsync": "always"}
        assert c.set("after-crash", "kept")
    finally:
        c.close()
    pid = int((rds.dir / "redis.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not redis_running(rds)
    ensure_redis(rds)
    c = _client(rds, rds.password)
    try:
        assert c.get("after-crash") == b"kept"
    finally:
        c.close()
    assert any((rds.dir / "appendonlydir").iterdir())
