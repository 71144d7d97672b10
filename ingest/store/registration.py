"""Payloads of the registration API, validated before anything touches a database.

pydantic names the offending field in every error, which the API turns into a 422.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest.core.errors import InvalidRegistration
from ingest.core.models import ConnectionSpec, Protocol, SecurityMode, SecurityPolicy
from ingest.device.session_inputs import check_connection, check_tags

Slug = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,39}$", description="lowercase id")]
_NODE_ID = re.compile(r"^(ns=\d+;)?[isgb]=.+$")
Scope = Literal["read", "ingest", "admin"]
ModbusUnit = Annotated[int, Field(ge=0, le=255)]
ModbusRegister = Literal["coil", "discrete", "holding", "input"]
ModbusAddress = Annotated[int, Field(ge=0, le=65535)]
ModbusDataType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]
ModbusBit = Annotated[int, Field(ge=0, le=15, description="one bit of a 16-bit register (bool)")]
ModbusLength = Annotated[int, Field(ge=1, le=125, description="registers of a string (required)")]
DataType = Literal["Double", "Float", "Int", "Boolean", "String"]
# OPC UA monitored item settings (tenant migration 013); the session checks them (OpcUaTag).
SamplingIntervalMs = Annotated[
    float, Field(ge=0, le=86_400_000, description="OPC UA: server sampling interval; 0 = fastest")
]
QueueSize = Annotated[int, Field(ge=1, le=100_000, description="OPC UA: changes queued between publishes")]
DeadbandType = Literal["absolute", "percent"]
DeadbandValue = Annotated[
    float, Field(ge=0, description="OPC UA DataChangeFilter deadband (units, or % of EURange)")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        # PostgreSQL text cannot hold U+0000: refuse it here, naming the field, not at INSERT.
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("must not contain NUL characters")
        return v


class _TagChecks(_Strict):
    """Checks shared by tag registration and tag edits."""

    @field_validator("node_id", check_fields=False)
    @classmethod
    def _node_id(cls, v: str | None) -> str | None:
        if v is not None and not _NODE_ID.match(v):
            raise ValueError("not an OPC UA node id (expected like 'ns=2;s=Name' or 'i=85')")
        return v

    @field_validator("scaling_factor", "offset", check_fields=False)
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


ServerName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$", description="a registered server's name")]


class TenantCreate(_Strict):
    slug: Slug
    name: str = Field(min_length=1, max_length=200)
    retention_days: int | None = Field(None, gt=0, le=36500)
    server: ServerName | None = Field(None, description="database server to place it on (default: most room)")
    database_url: str | None = Field(
        None,
        max_length=1000,
        description="attach this existing database instead (postgresql://host:port/db[?sslmode=require]); "
        "needs db_user and db_password",
    )
    db_user: str | None = Field(None, min_length=1, max_length=63, description="the attached database's role")
    db_password: str | None = Field(
        None, min_length=1, max_length=1000, repr=False, description="its password (stored encrypted)"
    )

    @model_validator(mode="after")
    def _attach(self) -> Self:
        if self.database_url is None:
            if self.db_user is not None or self.db_password is not None:
                raise ValueError("database_url: db_user and db_password go with database_url")
            return self
        if self.server is not None:
            raise ValueError("server: give a server or a database_url, not both")
        if self.db_user is None or self.db_password is None:
            raise ValueError("db_user: an attached database needs db_user and db_password")
        return self


class TenantStatusUpdate(_Strict):
    status: Literal["ACTIVE", "SUSPENDED"]


class ApiKeyCreate(_Strict):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(min_length=1)
    expires_at: datetime | None = Field(None, description="when the key stops working; never if absent")

    @field_validator("expires_at")
    @classmethod
    def _future(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        if v.tzinfo is None:
            raise ValueError("needs a time zone (e.g. 2027-01-01T00:00:00Z)")
        if not datetime.now(UTC) < v < datetime(9999, 1, 1, tzinfo=UTC):
            raise ValueError("must be in the future, before 9999")
        return v


class TagCreate(_TagChecks):
    name: str = Field(min_length=1, max_length=200)
    node_id: str | None = Field(None, description="OPC UA node id, e.g. ns=2;s=W001.T001")
    modbus_unit: ModbusUnit | None = None
    modbus_register: ModbusRegister | None = None
    modbus_address: ModbusAddress | None = None
    modbus_data_type: ModbusDataType | None = Field(None, description="default uint16")
    byte_order: ByteOrder | None = None
    modbus_bit: ModbusBit | None = None
    modbus_length: ModbusLength | None = None
    data_type: DataType = "Double"
    unit: str | None = Field(None, max_length=32)
    scaling_factor: float = 1.0
    offset: float = 0.0
    valid_min: float | None = None
    valid_max: float | None = None
    deadband: float | None = Field(None, ge=0)
    out_of_range: Literal["flag", "reject"] = Field(
        "flag", description="flag: keep with quality Bad; reject: drop (counted)"
    )
    zscore_threshold: float | None = Field(
        4.0, gt=0, description="values this many standard deviations off are flagged Uncertain"
    )
    well: str | None = Field(None, max_length=200, description="well (asset) name")
    sampling_interval_ms: SamplingIntervalMs | None = Field(None, description="OPC UA; null: the session's 0")
    queue_size: QueueSize | None = Field(None, description="OPC UA; null: the session's 1000")
    discard_oldest: bool = Field(True, description="OPC UA: a full queue drops its oldest (else newest)")
    deadband_type: DeadbandType | None = Field(None, description="OPC UA server-side deadband")
    deadband_value: DeadbandValue = 0.0

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.valid_min is not None and self.valid_max is not None and self.valid_min > self.valid_max:
            raise ValueError("valid_min is greater than valid_max")
        return self


class ConnectionCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    protocol: Protocol
    endpoint: str = Field(min_length=1, max_length=500)
    security_mode: SecurityMode = SecurityMode.NONE
    security_policy: SecurityPolicy = SecurityPolicy.NONE
    auto_accept_server_cert: bool = False
    username: str | None = Field(None, min_length=1, max_length=200)
    password: str | None = Field(None, max_length=500, repr=False)
    publishing_interval_ms: int = Field(1000, ge=10, le=3_600_000)
    enabled: bool = True
    tags: list[TagCreate] = Field(default_factory=list, max_length=100_000)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.protocol is Protocol.PUSH:
            raise ValueError(
                "protocol: pushed tags are registered with POST /v1/tenants/{tenant}/push/tags (or on first push)"
            )
        if self.protocol is Protocol.OPCUA:
            if not self.endpoint.startswith("opc.tcp://"):
                raise ValueError("endpoint: an OPC UA endpoint starts with opc.tcp://")
        elif not re.match(r"^(modbus\+)?tcp://[^/:]+(:\d+)?/?$", self.endpoint):
            raise ValueError("endpoint: a Modbus TCP endpoint looks like tcp://host:502")
        if (self.security_mode is SecurityMode.NONE) != (self.security_policy is SecurityPolicy.NONE):
            raise ValueError("security_policy: must be None exactly when security_mode is None")
        if (self.username or self.password) and self.security_mode is SecurityMode.NONE:
            raise ValueError(
                "username: a password is only sent over a Sign or SignAndEncrypt channel; set security_mode"
            )
        if self.password is not None and self.username is None:
            raise ValueError("password: a password needs a username")
        names = [t.name for t in self.tags]
        if len(set(names)) != len(names):
            raise ValueError("tags: tag names must be unique within a connection")
        try:
            # What a session would be built from, checked by the code that builds it.
            check_connection(
                ConnectionSpec(
                    "",
                    "",
                    "",
                    self.protocol,
                    self.endpoint,
                    self.publishing_interval_ms,
                    self.security_mode,
                    self.security_policy,
                    self.username,
                    self.password,
                    self.auto_accept_server_cert,
                )
            )
            check_tags(self.protocol, [t.model_dump() for t in self.tags])
        except InvalidRegistration as e:
            raise ValueError(str(e)) from None
        return self


class TagsCreate(_Strict):
    tags: list[TagCreate] = Field(min_length=1, max_length=100_000)


class ConnectionUpdate(_Strict):
    """Fields to change on a connection; omitted fields stay as they are."""

    name: str | None = Field(None, min_length=1, max_length=200)
    endpoint: str | None = Field(None, min_length=1, max_length=500)
    security_mode: SecurityMode | None = None
    security_policy: SecurityPolicy | None = None
    auto_accept_server_cert: bool | None = None
    username: str | None = Field(None, max_length=200)
    password: str | None = Field(None, max_length=500, repr=False)
    publishing_interval_ms: int | None = Field(None, ge=10, le=3_600_000)
    enabled: bool | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(opc\.tcp|tcp|modbus\+tcp)://", v):
            raise ValueError("endpoint: expected opc.tcp://... or tcp://host:port")
        return v


class TagUpdate(_TagChecks):
    """Fields to change on a tag; omitted fields stay as they are."""

    name: str | None = Field(None, min_length=1, max_length=200)
    node_id: str | None = None
    unit: str | None = Field(None, max_length=32)
    scaling_factor: float | None = None
    offset: float | None = None
    valid_min: float | None = None
    valid_max: float | None = None
    deadband: float | None = Field(None, ge=0)
    out_of_range: Literal["flag", "reject"] | None = None
    zscore_threshold: float | None = Field(None, gt=0)
    modbus_unit: ModbusUnit | None = None
    modbus_register: ModbusRegister | None = None
    modbus_address: ModbusAddress | None = None
    modbus_data_type: ModbusDataType | None = None
    byte_order: ByteOrder | None = None
    modbus_bit: ModbusBit | None = Field(None, description="null clears it")
    modbus_length: ModbusLength | None = Field(None, description="null clears it")
    data_type: DataType | None = None
    well: str | None = Field(None, max_length=200, description="well (asset) name; null clears it")
    sampling_interval_ms: SamplingIntervalMs | None = Field(None, description="null clears it")
    queue_size: QueueSize | None = Field(None, description="null clears it")
    discard_oldest: bool | None = None
    deadband_type: DeadbandType | None = Field(None, description="null clears it")
    deadband_value: DeadbandValue | None = None

    @model_validator(mode="after")
    def _not_null(self) -> Self:
        # Omitted means "unchanged"; an explicit null would reach a NOT NULL column.
        for name in (
            "name",
            "scaling_factor",
            "offset",
            "out_of_range",
            "data_type",
            "discard_oldest",
            "deadband_value",
        ):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name}: may be omitted, not null")
        return self


# -- edits are checked on their result: the stored row with the edit applied -------------------
_CONNECTION_FIELDS = (
    "name",
    "protocol",
    "endpoint",
    "security_mode",
    "security_policy",
    "auto_accept_server_cert",
    "username",
    "publishing_interval_ms",
    "enabled",
)


def check_connection_edit(stored: Mapping[str, Any], has_password: bool, update: ConnectionUpdate) -> None:
    """Refuse an edit that leaves a connection registration would refuse (its tags are checked
    when they change, so an edit can always disable a connection whose tags are stale)."""
    merged = {k: stored[k] for k in _CONNECTION_FIELDS} | update.model_dump(exclude_unset=True)
    if "password" not in update.model_fields_set:
        # Only whether one is stored matters to the checks; no need to decrypt it.
        merged["password"] = "(stored)" if has_password else None
    try:
        ConnectionCreate.model_validate(merged)
    except ValidationError as e:
        raise _first_error(e) from None


def check_tag_edit(protocol: Protocol, stored: Mapping[str, Any], update: TagUpdate) -> None:
    """Refuse an edit that leaves a tag registration would refuse, naming the field."""
    merged = dict(stored) | update.model_dump(exclude_unset=True)
    check_tags(protocol, [merged], field_prefix="")
    if (
        merged["valid_min"] is not None
        and merged["valid_max"] is not None
        and merged["valid_min"] > merged["valid_max"]
    ):
        raise InvalidRegistration("valid_min", "is greater than valid_max")


def _first_error(e: ValidationError) -> InvalidRegistration:
    err = e.errors()[0]
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["loc"]:
        return InvalidRegistration(".".join(str(x) for x in err["loc"]), message)
    field, _, rest = message.partition(": ")  # model checks start "<field>: "
    return InvalidRegistration(field, rest) if rest else InvalidRegistration("body", message)
