"""Settings as one typed object, built from the environment (prefix ``SCADA_``).

Every knob has a default, a unit in its name and a line of doc. ``Settings.local()`` fills the
connection strings and secrets of the project-owned local stack (``.local/`` in the checkout).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.core.keys import new_api_key, new_master_key, read_or_create_secret

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """All scada-ingest settings; environment variables ``SCADA_<NAME>`` override each field."""

    model_config = SettingsConfigDict(env_prefix="SCADA_", extra="ignore")

    local_dir: Path = Field(REPO_ROOT / ".local", description="Folder of the local stack's state")
    pg_host: str = Field("127.0.0.1", description="PostgreSQL host (loopback for the local stack)")
    pg_port: int = Field(55432, description="PostgreSQL port of the project-owned cluster")
    pg_superuser: str = Field("scada", description="Role that owns the master DB and creates tenants")
    pg_password: str = Field("", repr=False, description="Password of pg_superuser; read from .local if empty")
    master_db: str = Field("scada_master", description="Name of the master database")
    db_server_name: str = Field(
        "local", description="Name the cluster's own PostgreSQL is registered under as a database server"
    )
    db_capacity_hint: int = Field(
        1000, description="Tenant databases the cluster's own PostgreSQL should hold (placement's hint)"
    )
    redis_host: str = Field("127.0.0.1", description="Redis host")
    redis_port: int = Field(56379, description="Redis port of the project-owned server")
    redis_password: str = Field("", repr=False, description="Redis password; read from .local if empty")
    master_key: str = Field("", repr=False, description="Fernet key encrypting secrets at rest; .local if empty")
    admin_key: str = Field("", repr=False, description="Cluster admin API key (creates tenants); .local if empty")
    namespace: str = Field("scada", description="Ray namespace of the detached actors")
    http_host: str = Field("127.0.0.1", description="Address the Serve HTTP proxy binds")
    http_port: int = Field(8000, description="Port of the Serve HTTP proxy")
    api_replicas: int = Field(
        1,
        ge=1,
        description="Serve replicas of the HTTP API; each also serves on a port of its own (direct ingress), "
        "where a load balancer over them (live_url) spreads clients",
    )
    dashboard_port: int = Field(8265, description="Port of the Ray dashboard (loopback)")
    tags_per_actor: int = Field(20_000, description="Tags one connection actor carries at most")
    max_actors_per_node: int = Field(4, description="Connection actors per node at most")
    health_timeout_s: float = Field(
        1.0, description="A slot not answering its status call in this time is left out of the assignment"
    )
    reconcile_interval_s: float = Field(2.0, description="Coordinator reconcile period")
    batch_interval_ms: int = Field(100, description="Connection actor micro-batch period")
    # Sorted 50k-row flushes measured ~250k rows/s against ~190k for 10k-20k-row flushes on the
    # 2-core machine (README, "Writer figures"); the timer bounds latency at low rates.
    flush_rows: int = Field(50_000, description="Rows that make the writer flush before the timer")
    flush_interval_ms: int = Field(100, description="Longest time a row waits in the writer")
    # A pushed batch (someone waits on its answer) is flushed as soon as the writer is free; at
    # 80 pushes/s of 1,000 tags each that was a transaction for every one or two of them. The
    # first row of a tag in a COPY costs the database about twice the next ones (its index page
    # is fetched again), and the writer fans out every tag once per flush: flushes 50 ms apart
    # carry about four, and the CPU per push at 80,000 readings/s fell from ~19.5 ms (25 ms
    # apart) to ~17 (50) and ~15 (100, but acks ~35 ms later) in alternated phases (README).
    prompt_flush_gap_ms: float = Field(
        50.0, ge=0, le=1000, description="Least time between the starts of two flushes for pushed batches"
    )
    spool_max_rows: int = Field(20_000_000, description="Rows a tenant's spool may hold")
    rules_refresh_s: float = Field(3.0, description="How often writers reload tag validation rules")
    sender_max_unacked_rows: int = Field(
        2_000_000, description="Rows a connection actor holds per tenant before recording gaps"
    )
    writer_inflight_max: int = Field(4, description="Unacknowledged batches per tenant per sender")
    # A pass rebuilt the minutes its ledger rows touched, whole, from raw: the open minute of a
    # steady stream was re-read at every pass while it filled (about 6.5 times its rows at 5 s,
    # 3.5 at 10 s); at 10 s the refresher's share of a 100,000 readings/s push dropped from ~0.3
    # to ~0.08 of a core (README, push figures). Since migration 022 it re-reads only the
    # 10-second buckets rows landed in, and sums the minute from their partials.
    rollup_refresh_interval_s: float = Field(
        10.0,
        description="Pause between rollup refresh passes; a reading is in every rollup level within two of these",
    )
    rollup_minutes_per_pass: int = Field(
        360, description="Minutes of data one rollup refresh pass rebuilds at most (bounded work)"
    )
    # A pass that re-read the open minute from raw held a core for about a second every pass at
    # 80,000 readings/s, and the pushes answered meanwhile waited (their p99 was that second).
    # Paused between statements (25 tags each) for as long as each took, the pass uses half a
    # core for twice as long instead. Passes catching up (a backfill) are not paused.
    rollup_pace: float = Field(
        1.0, ge=0, le=10, description="Pause after each rollup statement, as a multiple of its own time"
    )
    retention_interval_s: float = Field(3600.0, description="How often retention drops old chunks")
    tenant_purge_grace_days: float = Field(
        30.0, description="Days a deleted tenant's database is kept before it is dropped (checked hourly)"
    )
    # Live values (ingest.live, serve_app.routes_live): a resume works while the client's last id
    # is inside the stream, so the caps are the resume window.
    live_stream_maxlen: int = Field(
        100_000, description="Entries (committed batches) a tenant's live stream keeps"
    )
    live_stream_max_age_s: float = Field(3600.0, description="Age beyond which live-stream entries are trimmed")
    live_every_value: bool = Field(
        False, description="Put every committed value on the live stream, not only the last per tag per batch"
    )
    live_heartbeat_s: float = Field(15.0, description="Idle time after which a live connection gets a heartbeat")
    live_queue_entries: int = Field(
        256, description="Updates queued per live subscriber before they are conflated to the latest per tag"
    )
    live_max_lag_s: float = Field(
        30.0, description="A live subscriber still conflating after this long is disconnected"
    )
    live_ticket_ttl_s: int = Field(60, description="Lifetime of a single-use stream ticket")
    live_url: str | None = Field(
        None,
        description="Base URL a ticket's answer tells clients to open live streams on (say, a load "
        "balancer in front of the API replicas' own ports); unset: the replica's own direct-ingress address",
    )

    @property
    def master_dsn(self) -> str:
        return self.dsn(self.master_db)

    def dsn(self, database: str, user: str | None = None, password: str | None = None) -> str:
        u = quote(user or self.pg_superuser)
        p = quote(self.pg_password if password is None else password)
        return f"postgresql://{u}:{p}@{self.pg_host}:{self.pg_port}/{database}"

    @property
    def redis_url(self) -> str:
        return f"redis://:{quote(self.redis_password)}@{self.redis_host}:{self.redis_port}/0"

    @property
    def secrets_dir(self) -> Path:
        return self.local_dir / "secrets"

    def with_local_secrets(self) -> Settings:
        """Fill empty secrets from (or into) ``.local/secrets``, created 0600 on first use."""
        d = self.secrets_dir
        updates: dict[str, str] = {}
        if not self.pg_password:
            updates["pg_password"] = read_or_create_secret(d / "pg_password")
        if not self.redis_password:
            updates["redis_password"] = read_or_create_secret(d / "redis_password")
        if not self.master_key:
            path = d / "master.key"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(new_master_key())
            updates["master_key"] = path.read_text().strip()
        if not self.admin_key:
            path = d / "admin_api_key"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(new_api_key("adm")[0])
            updates["admin_key"] = path.read_text().strip()
        return self.model_copy(update=updates)


def load_settings() -> Settings:
    """Settings from the environment, secrets filled from the local stack where not given."""
    return Settings().with_local_secrets()


def on_cluster() -> bool:
    """Joined to a Ray cluster through RAY_ADDRESS: start no local services."""
    return bool(os.environ.get("RAY_ADDRESS"))
