"""The embedded local stack: project-owned PostgreSQL (with TimescaleDB) and Redis under .local/."""

from __future__ import annotations

from ingest.core.config import Settings
from ingest.localstack.postgres import PostgresParams, ensure_postgres, postgres_running, stop_postgres
from ingest.localstack.redis_server import RedisParams, ensure_redis, redis_running, stop_redis


def pg_params(s: Settings) -> PostgresParams:
    return PostgresParams(s.local_dir / "pg" / "data", s.pg_port, s.pg_superuser, s.pg_password, s.pg_host)


def redis_params(s: Settings) -> RedisParams:
    return RedisParams(s.local_dir / "redis", s.redis_port, s.redis_password, s.redis_host)


def start_local(s: Settings) -> None:
    ensure_postgres(pg_params(s))
    ensure_redis(redis_params(s))


def stop_local(s: Settings) -> None:
    stop_postgres(pg_params(s))
    stop_redis(redis_params(s))


def local_status(s: Settings) -> dict[str, bool]:
    return {"postgres": postgres_running(pg_params(s)), "redis": redis_running(redis_params(s))}
