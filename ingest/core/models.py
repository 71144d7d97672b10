"""Domain types shared by every stage: tenants, connections, tags, quality codes."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


class Protocol(enum.StrEnum):
    OPCUA = "opcua"
    MODBUS = "modbus"
    PUSH = "push"  # values arrive over HTTP (ingest.push); no device session


class SecurityMode(enum.StrEnum):
    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class SecurityPolicy(enum.StrEnum):
    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256_Sha256_RsaPss"


class TenantStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"


class Quality(enum.IntEnum):
    """OPC UA StatusCode values we store; Modbus maps to GOOD / BAD codes."""

    GOOD = 0
    UNCERTAIN = 0x40000000
    BAD = 0x80000000
    BAD_OUT_OF_RANGE = 0x803C0000
    BAD_NO_COMMUNICATION = 0x80310000
    # A gap marker: readings that could not be kept. Its value is how many readings of that tag
    # the gap stands for, starting at its timestamp, so gaps can be counted in SQL.
    BAD_DATA_LOST = 0x809D0000


def quality_as_int4(code: int) -> int:
    """StatusCodes are uint32; the column is int4, so store the same 32 bits signed."""
    return code - (1 << 32) if code >= (1 << 31) else code


# A gap marker's quality (Bad_DataLost) as stored: its row stands for readings that were lost,
# its value counts them (or is NaN when unknown). Never a reading: rollups and counts skip it.
GAP_QUALITY = quality_as_int4(Quality.BAD_DATA_LOST)


@dataclass(frozen=True)
class Tenant:
    id: str
    slug: str
    name: str
    status: TenantStatus
    database_url: str  # without password; the password is stored encrypted beside it
    max_tags: int | None = None  # quotas (None: not enforced)
    max_connections: int | None = None
    server: str | None = None  # the database server it lives on (None: an attached database)
    attached: bool = False  # a database its owner gave: never dropped by a purge


@dataclass(frozen=True)
class TagSpec:
    """What a connection actor needs to read one tag."""

    tag_id: int
    name: str
    address: str  # OPC UA node id, or Modbus address spec
    data_type: str = "Double"
    scaling_factor: float = 1.0
    offset: float = 0.0
    # OPC UA monitored item settings; None / defaults take the session's own.
    sampling_interval_ms: float | None = None
    queue_size: int | None = None
    discard_oldest: bool = True
    deadband_type: str | None = None  # "absolute" | "percent"
    deadband_value: float = 0.0


@dataclass(frozen=True)
class ConnectionSpec:
    """One device session as the coordinator hands it to a connection actor."""

    tenant_id: str
    tenant_slug: str
    connection_id: str
    protocol: Protocol
    endpoint: str
    publishing_interval_ms: int
    security_mode: SecurityMode = SecurityMode.NONE
    security_policy: SecurityPolicy = SecurityPolicy.NONE
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    auto_accept_server_cert: bool = False
    tags: tuple[TagSpec, ...] = ()

    @property
    def weight(self) -> float:
        """Load estimate for sharding: tags times updates per second."""
        return max(1, len(self.tags)) * (1000.0 / max(10, self.publishing_interval_ms))

    def fingerprint(self) -> str:
        """Changes whenever anything that matters to the session changes (edits restart it)."""
        d: dict[str, Any] = asdict(self)
        d["password"] = hashlib.sha256((self.password or "").encode()).hexdigest()
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
