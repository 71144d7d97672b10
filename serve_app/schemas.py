"""What the routes answer: one pydantic model per shape, so /docs is the contract.

Request bodies are the registration payloads of ``ingest.store.registration``; these are the
answers. Timestamps are ISO 8601 with their offset.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from ingest.core.models import Protocol, SecurityMode, SecurityPolicy, TenantStatus
from ingest.store.registration import Scope
from serve_app.errors import ErrorBody


class TenantOut(BaseModel):
    id: str
    slug: str
    name: str
    status: TenantStatus
    max_tags: int | None = Field(None, description="quota: live tags")
    max_connections: int | None = Field(None, description="quota: device connections (push ones not counted)")
    server: str | None = Field(None, description="database server it lives on; null for an attached database")
    attached: bool = Field(False, description="its database was attached (a purge detaches it, never drops it)")


class TenantCreated(TenantOut):
    api_key: str = Field(description="the tenant's first admin key; shown only once")


class TenantStatusOut(BaseModel):
    id: str
    slug: str
    status: TenantStatus


class KeyCreated(BaseModel):
    api_key: str = Field(description="shown only once")
    scopes: list[Scope]
    expires_at: datetime | None = None


class TagOut(BaseModel):
    tag_id: int = Field(description="compact int4 id every reading row carries")
    connection_id: str
    name: str
    node_id: str | None
    modbus_unit: int | None
    modbus_register: str | None
    modbus_address: int | None
    modbus_data_type: str | None
    byte_order: str | None
    data_type: str
    unit: str | None
    scaling_factor: float
    offset: float
    valid_min: float | None
    valid_max: float | None
    deadband: float | None
    out_of_range: Literal["flag", "reject"]
    zscore_threshold: float | None
    modbus_bit: int | None
    modbus_length: int | None
    well_id: str | None
    well: str | None = Field(None, description="the well's name")
    sampling_interval_ms: float | None = None
    queue_size: int | None = None
    discard_oldest: bool = True
    deadband_type: Literal["absolute", "percent"] | None = None
    deadband_value: float = 0.0


class RowProblem(BaseModel):
    row: int = Field(description="CSV: line in the file (header = 1); JSON: position from 1; 0: the whole file")
    field: str
    error: str


class ImportResult(BaseModel):
    mode: Literal["create", "merge", "replace"]
    dry_run: bool
    rows: int = Field(description="tag rows read")
    created: int
    updated: int = Field(description="existing tags changed (each keeps its tag_id)")
    unchanged: int
    deleted: int
    errors: list[RowProblem] = Field(description="bad rows (a dry run lists them; an import answers 422)")


class BrowsedNodeOut(BaseModel):
    node_id: str
    browse_name: str
    display_name: str
    node_class: str = Field(description="Object, Variable, Method, ...")
    data_type: str | None = Field(description="variables: the DataType's name")
    access_level: list[str] | None = Field(description="variables: read, write, history_read, history_write")


class BrowseOut(BaseModel):
    node: str
    total: int = Field(description="children of the node")
    children: list[BrowsedNodeOut]
    next_page_token: str | None = Field(description="ask again with it for the next page")


class DiscoveredTag(BaseModel):
    name: str = Field(description="the browse path below the root")
    node_id: str
    data_type: str
    well: str | None


class SkippedNode(BaseModel):
    path: str
    reason: str


class DiscoverOut(BaseModel):
    found: int = Field(description="variables whose browse path matched")
    nodes_browsed: int
    browse_calls: int = Field(description="Browse and BrowseNext calls made")
    read_calls: int
    truncated: bool = Field(description="max_nodes or the depth limit stopped the walk")
    limits: dict[str, int] = Field(description="the server's operation limits as applied")
    skipped: list[SkippedNode]
    tags: list[DiscoveredTag] = Field(description="the tags added (or, on a dry run, that would be)")
    result: ImportResult


class ConnectionOut(BaseModel):
    """A registered connection. Its password is never returned."""

    id: str
    name: str
    protocol: Protocol
    endpoint: str
    security_mode: SecurityMode
    security_policy: SecurityPolicy
    auto_accept_server_cert: bool
    username: str | None
    publishing_interval_ms: int
    enabled: bool
    state: str | None = Field(description="session state the coordinator last recorded")
    state_changed_at: datetime | None
    last_connected_at: datetime | None
    last_error: str | None
    health: Literal["CONNECTING", "CONNECTED", "DEGRADED", "FAILED", "DISABLED", "IDLE"] | None = Field(
        None,
        description="what its host last saw: CONNECTING, CONNECTED, DEGRADED (items refused, or "
        "reconnecting after streaming), FAILED (cannot start or connect; reason in last_error), "
        "DISABLED, IDLE (no tags); null while no host has reported it",
    )
    last_value_at: datetime | None = Field(None, description="when its newest value arrived")
    values_per_s: float | None = Field(None, description="values delivered per second, lately")
    reconnects: int | None = Field(None, description="reconnects of its current session")
    created_at: datetime
    updated_at: datetime


class ConnectionSummary(ConnectionOut):
    tag_count: int


class ConnectionDetail(ConnectionOut):
    tags: list[TagOut]


class Reading(BaseModel):
    time: datetime = Field(description="source timestamp")
    value: float
    quality: int = Field(description="OPC UA StatusCode as int4; 0 = Good")


class ReadingsOut(BaseModel):
    tag_id: int
    start: datetime
    end: datetime
    resolution: Literal["raw"]
    count: int
    readings: list[Reading]


class QuarantinedBatch(BaseModel):
    batch_id: str
    rows: int
    error: str = Field(description="why the database refused it")


class ReplayOut(BaseModel):
    batch_id: str
    found: Literal[True]
    rows: int
    quarantined: bool = Field(description="true when the database refused it again")


class TenantHealth(BaseModel):
    id: str
    slug: str
    status: TenantStatus
    state: Literal["HEALTHY", "DEGRADED"]
    degraded: str | None = Field(description="why the tenant is degraded, if it is")
    failed_connections: dict[str, str | None] = Field(description="connection id -> reason")
    connections: int
    writer: dict[str, Any] | None = Field(description="the writer's last stats snapshot")
    spool_rows: int | None


class NodeLoad(BaseModel):
    actors: list[str]
    connections: int
    tags: int
    values_per_s: float


class ClusterStatus(BaseModel):
    passes: int = Field(description="reconcile passes since the coordinator started")
    moves: int
    last_pass: dict[str, Any] = Field(description="what the last reconcile pass did")
    tenants: list[TenantHealth]
    nodes: dict[str, NodeLoad] = Field(description="node id -> load")
    actors: dict[str, dict[str, Any]] = Field(description="connection actor -> its status")


class Check(BaseModel):
    ok: bool
    error: str | None = None


class Checks(BaseModel):
    master_db: Check
    redis: Check
    coordinator: Check


class Health(BaseModel):
    ok: bool
    checks: Checks


class HealthDown(ErrorBody):
    """The 503 of /healthz: the one error body (a detail per component down), plus every check."""

    checks: Checks
