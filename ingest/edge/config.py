"""The edge agent's YAML file: where to push, with which key, how much to keep, what to read.

Devices are described exactly as the registration API describes connections and tags
(``ConnectionCreate`` / ``TagCreate`` of ingest.store.registration), so a device block can be
copied between the two and is refused by the same checks. A bad file fails at start with the
field named as the file spells it (``devices.0.tags.2.node_id: not an OPC UA node id``), never
later, when the site is unattended. An example with every setting is ``deploy/edge.example.yaml``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest.core.errors import EdgeConfigInvalid
from ingest.core.models import ConnectionSpec, Protocol
from ingest.device.session_inputs import tag_spec
from ingest.store.registration import ConnectionCreate

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.I)
_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}


def parse_bytes(v: Any) -> int:
    """``10GB``, ``512 MiB``, ``1e6`` or a plain integer -> bytes (K/M/G/T are powers of 1024)."""
    if isinstance(v, bool):
        raise ValueError("a size in bytes, like 10GB")
    if isinstance(v, int | float):
        return int(v)
    m = _SIZE.match(str(v))
    if not m:
        raise ValueError("a size in bytes, like 10GB or 500MB")
    return int(float(m.group(1)) * 1024 ** _POWERS[m.group(2)[:1].upper()])


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClusterSection(_Section):
    url: str = Field(description="the cluster's API, e.g. https://ingest.example.com")
    tenant: str = Field(min_length=1, max_length=100, description="tenant slug (or id) the key belongs to")
    api_key: str | None = Field(None, repr=False, description="prefer api_key_file or SCADA_EDGE_API_KEY")
    api_key_file: Path | None = Field(None, description="a file holding the key (mode 0600)")
    timeout_s: float = Field(30.0, gt=0, le=600, description="one push request, connect to answer")
    verify_tls: bool | str = Field(True, description="false, or a CA bundle file for a private CA")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("an http:// or https:// URL")
        return v.rstrip("/")


class BufferSection(_Section):
    path: Path = Field(Path("edge-buffer.db"), description="the SQLite file (its directory must exist)")
    max_bytes: int = Field(10 * 1024**3, ge=64 * 1024, description="bound on buffered payload bytes")
    max_age_hours: float = Field(168.0, gt=0, description="readings older than this are dropped (a gap)")

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int:
        return parse_bytes(v)


class PushSection(_Section):
    max_points: int = Field(1000, ge=1, le=1_000_000, description="points per request (the tenant's limit)")
    interval_ms: int = Field(1000, ge=10, le=600_000, description="how often a partly filled batch is sent")
    concurrency: int = Field(2, ge=1, le=8, description="requests in flight (each its own batch)")
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)
    retry_after_max_s: float = Field(300.0, gt=0, description="cap on a server's Retry-After")
    register_tags: bool = Field(True, description="register the tags through the API at start (admin scope)")

    @model_validator(mode="after")
    def _order(self) -> PushSection:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s: must be at least backoff_initial_s")
        return self


class MetricsSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535, description="Prometheus /metrics and /health; 0 = any free port")


class EdgeConfig(_Section):
    cluster: ClusterSection
    buffer: BufferSection = Field(default_factory=BufferSection)
    push: PushSection = Field(default_factory=PushSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    batch_interval_ms: int = Field(100, ge=10, le=10_000, description="readings are written to disk this often")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    devices: list[ConnectionCreate] = Field(min_length=1)

    @model_validator(mode="after")
    def _devices(self) -> EdgeConfig:
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError("devices: device names must be unique")
        seen: set[tuple[str, str]] = set()
        for i, d in enumerate(self.devices):
            if not d.tags:
                raise ValueError(f"devices.{i}.tags: a device needs at least one tag")
            for j, t in enumerate(d.tags):
                if t.modbus_data_type == "string" or t.data_type == "String":
                    raise ValueError(
                        f"devices.{i}.tags.{j}.data_type: the push endpoint carries numbers; "
                        "string tags are not read by the edge agent"
                    )
                pair = (t.well or d.name, t.name)
                if pair in seen:
                    raise ValueError(f"devices.{i}.tags.{j}.name: well {pair[0]!r} has tag {pair[1]!r} twice")
                seen.add(pair)
        return self

    def api_key(self) -> str:
        c = self.cluster
        if c.api_key:
            return c.api_key
        if c.api_key_file is not None:
            try:
                key = c.api_key_file.read_text().strip()
            except OSError as e:
                raise EdgeConfigInvalid(
                    "cluster.api_key_file", f"cannot read {c.api_key_file}: {e.strerror}"
                ) from None
            if not key:
                raise EdgeConfigInvalid("cluster.api_key_file", f"{c.api_key_file} is empty")
            return key
        key = os.environ.get("SCADA_EDGE_API_KEY", "").strip()
        if not key:
            raise EdgeConfigInvalid("cluster.api_key", "set api_key, api_key_file or SCADA_EDGE_API_KEY")
        return key


@dataclass(frozen=True)
class EdgeTag:
    """A tag as it is pushed: (well, parameter name) and the unit its values are in."""

    well: str
    name: str
    unit: str | None


def load_config(path: str | Path) -> EdgeConfig:
    """Read and check the file; EdgeConfigInvalid names the first bad field."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise EdgeConfigInvalid("config", f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise EdgeConfigInvalid("config", f"{path} is not YAML: {e}") from None
    if not isinstance(raw, dict):
        raise EdgeConfigInvalid("config", f"{path} must hold a mapping (cluster:, devices:, ...)")
    try:
        cfg = EdgeConfig.model_validate(raw)
    except ValidationError as e:
        raise _first_error(e) from None
    cfg.api_key()  # a missing or unreadable key is a start-up error too
    return cfg


def _first_error(e: ValidationError) -> EdgeConfigInvalid:
    err = e.errors()[0]
    message = str(err["msg"]).removeprefix("Value error, ")
    loc = ".".join(str(x) for x in err["loc"])
    field, sep, rest = message.partition(": ")
    if sep and re.match(r"^[a-z_][a-z0-9_.]*$", field):  # a model check names its field first
        return EdgeConfigInvalid(f"{loc}.{field}" if loc else field, rest)
    return EdgeConfigInvalid(loc or "config", message)


def device_specs(cfg: EdgeConfig, tag_ids: dict[tuple[str, str], int]) -> list[ConnectionSpec]:
    """The devices as the session host runs them; ``tag_ids`` maps (well, name) to the buffer's
    stable local id of each tag."""
    specs = []
    for d in cfg.devices:
        if not d.enabled:
            continue
        tags = tuple(
            tag_spec(d.protocol, t.model_dump(), tag_id=tag_ids[(t.well or d.name, t.name)]) for t in d.tags
        )
        specs.append(
            ConnectionSpec(
                cfg.cluster.tenant,
                cfg.cluster.tenant,
                d.name,
                Protocol(d.protocol),
                d.endpoint,
                d.publishing_interval_ms,
                d.security_mode,
                d.security_policy,
                d.username,
                d.password,
                d.auto_accept_server_cert,
                tags,
            )
        )
    return specs


def edge_tags(cfg: EdgeConfig) -> list[EdgeTag]:
    """Every tag of every enabled device, as pushed: the tag's well, or else the device's name."""
    return [EdgeTag(t.well or d.name, t.name, t.unit) for d in cfg.devices if d.enabled for t in d.tags]
