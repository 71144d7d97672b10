"""Payloads of the registration API, validated before anything touches a database.

pydantic names the offending field in every error, which the API turns into a 422.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingest.models import Protocol, SecurityMode, SecurityPolicy

Slug = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,39}$", description="lowercase id")]
_NODE_ID = re.compile(r"^(ns=\d+;)?[isgb]=.+$")
Scope = Literal["read", "ingest", "admin"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


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


class TenantCreate(_Strict):
    slug: Slug
    name: str = Field(min_length=1, max_length=200)
    retention_days: int | None = Field(None, gt=0, le=36500)


class TenantStatusUpdate(_Strict):
    status: Literal["ACTIVE", "SUSPENDED"]


class ApiKeyCreate(_Strict):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(min_length=1)


class TagCreate(_TagChecks):
    name: str = Field(min_length=1, max_length=200)
    node_id: str | None = Field(None, description="OPC UA node id, e.g. ns=2;s=W001.T001")
    modbus_unit: int | None = Field(None, ge=0, le=255)
    modbus_register: Literal["coil", "discrete", "holding", "input"] | None = None
    modbus_address: int | None = Field(None, ge=0, le=65535)
    modbus_data_type: (
        Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32",
                "float64", "string"] | None
    ) = None
    byte_order: Literal["ABCD", "DCBA", "BADC", "CDAB"] | None = None
    modbus_bit: int | None = Field(None, ge=0, le=15, description="one bit of a 16-bit register")
    modbus_length: int | None = Field(None, ge=1, le=125, description="registers of a string")
    data_type: Literal["Double", "Float", "Int", "Boolean", "String"] = "Double"
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


    @model_validator(mode="after")
    def _range(self) -> Self:
        if (self.valid_min is not None and self.valid_max is not None
                and self.valid_min > self.valid_max):
            raise ValueError("valid_min is greater than valid_max")
        return self


class ConnectionCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    protocol: Protocol
    endpoint: str = Field(min_length=1, max_length=500)
    security_mode: SecurityMode = SecurityMode.NONE
    security_policy: SecurityPolicy = SecurityPolicy.NONE
    auto_accept_server_cert: bool = False
    username: str | None = Field(None, max_length=200)
    password: str | None = Field(None, max_length=500, repr=False)
    publishing_interval_ms: int = Field(1000, ge=10, le=3_600_000)
    enabled: bool = True
    tags: list[TagCreate] = Field(default_factory=list, max_length=100_000)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.protocol is Protocol.OPCUA:
            if not self.endpoint.startswith("opc.tcp://"):
                raise ValueError("endpoint: an OPC UA endpoint starts with opc.tcp://")
            for i, t in enumerate(self.tags):
                if t.node_id is None:
                    raise ValueError(f"tags.{i}.node_id: required for an OPC UA connection")
        else:
            if not re.match(r"^(modbus\+)?tcp://[^/:]+(:\d+)?/?$", self.endpoint):
                raise ValueError("endpoint: a Modbus TCP endpoint looks like tcp://host:502")
            for i, t in enumerate(self.tags):
                if t.modbus_address is None or t.modbus_register is None:
                    raise ValueError(
                        f"tags.{i}.modbus_address: register type and address are required"
                    )
        if (self.security_mode is SecurityMode.NONE) != (self.security_policy is SecurityPolicy.NONE):
            raise ValueError("security_policy: must be None exactly when security_mode is None")
        if (self.username or self.password) and self.security_mode is SecurityMode.NONE:
            raise ValueError("username: a password is only sent over a Sign or SignAndEncrypt "
                             "channel; set security_mode")
        names = [t.name for t in self.tags]
        if len(set(names)) != len(names):
            raise ValueError("tags: tag names must be unique within a connection")
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

