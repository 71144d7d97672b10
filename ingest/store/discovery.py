"""A connection's OPC UA server browsed, and its variables added as tags (discovery), with the
connection's own endpoint, security and credentials (decrypted here, never returned)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ingest.core.errors import ConfigError, ConnectionNotFound, InvalidDeviceSetting, InvalidRegistration
from ingest.core.models import ConnectionSpec, Protocol, Tenant
from ingest.core.translate import translated
from ingest.device.session_inputs import opcua_security
from ingest.store.tag_bulk import Row
from ingest.store.tag_import import ImportOutcome, import_tags
from ingest.store.tenant_store import TenantStore

if TYPE_CHECKING:
    from ingest.device.opcua_browse import BrowsePage

__all__ = ["DiscoverRequest", "DiscoverOutcome", "browse_connection", "discover_tags"]

MAX_TAG_NAME = 200


class DiscoverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    node: str = Field("i=85", min_length=1, max_length=500, description="root node id (default: Objects)")
    pattern: str = Field(
        "**",
        min_length=1,
        max_length=500,
        description="glob over the browse path below the root, e.g. `W0*/T00?`; `*` stays within "
        "one segment, `**` crosses segments",
    )
    well: str | None = Field(None, min_length=1, max_length=200, description="every discovered tag's well")
    well_from_segment: Annotated[int, Field(ge=0, le=15)] | None = Field(
        None, description="or: the well is this segment of the browse path (0 = first below the root)"
    )
    mode: Literal["create", "merge"] = Field(
        "merge", description="merge: a tag of the same name is updated (keeps its tag_id); create: refused"
    )
    dry_run: bool = Field(False, description="list what would be added; write nothing")
    max_nodes: int = Field(20_000, ge=1, le=200_000, description="visit at most this many nodes")


@dataclass
class DiscoverOutcome:
    found: int
    nodes_browsed: int
    browse_calls: int
    read_calls: int
    truncated: bool
    limits: dict[str, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    tags: list[dict[str, str | None]] = field(default_factory=list)
    result: ImportOutcome | None = None


async def _opcua_spec(store: TenantStore, tenant: Tenant, connection_id: str) -> ConnectionSpec:
    specs = await store.load_specs(tenant, connection_id)
    if not specs:
        raise ConnectionNotFound(f"connection {connection_id} not found")
    if specs[0].protocol is not Protocol.OPCUA:
        raise InvalidRegistration("protocol", "only an OPC UA server can be browsed")
    return specs[0]


def _security_error(e: ConfigError) -> InvalidDeviceSetting:
    # A trust-list refusal or an endpoint the server does not offer: the connection's settings.
    return InvalidDeviceSetting("security_mode", str(e))


@translated
async def browse_connection(
    store: TenantStore, tenant: Tenant, connection_id: str, node: str, offset: int, limit: int
) -> BrowsePage:
    """One page of ``node``'s children on the connection's server."""
    from ingest.device.opcua_browse import browse_children

    spec = await _opcua_spec(store, tenant, connection_id)
    try:
        return await browse_children(spec.endpoint, opcua_security(spec), node, offset, limit)
    except InvalidDeviceSetting:
        raise
    except ConfigError as e:
        raise _security_error(e) from None


@translated
async def discover_tags(
    store: TenantStore, tenant: Tenant, connection_id: str, req: DiscoverRequest
) -> DiscoverOutcome:
    """Add as tags the variables below ``req.node`` whose browse path matches ``req.pattern``,
    through the bulk import (the checks of single registration; one transaction)."""
    from ingest.device.opcua_browse import discover_variables, tag_data_type

    spec = await _opcua_spec(store, tenant, connection_id)
    try:
        found = await discover_variables(
            spec.endpoint, opcua_security(spec), req.node, req.pattern, max_nodes=req.max_nodes
        )
    except InvalidDeviceSetting:
        raise
    except ConfigError as e:
        raise _security_error(e) from None
    out = DiscoverOutcome(
        found=len(found.variables),
        nodes_browsed=found.nodes_browsed,
        browse_calls=found.browse_calls,
        read_calls=found.read_calls,
        truncated=found.truncated,
        limits=found.limits,
    )
    rows: list[Row] = []
    for path, node in found.variables:
        data_type = tag_data_type(node.data_type)
        if data_type is None:
            out.skipped.append((path, f"data type {node.data_type} is not one a tag can hold"))
            continue
        if node.access_level is not None and "read" not in node.access_level:
            out.skipped.append((path, "not readable"))
            continue
        if len(path) > MAX_TAG_NAME:
            out.skipped.append((path, f"browse path longer than {MAX_TAG_NAME} characters"))
            continue
        segments = path.split("/")
        well = req.well
        if req.well_from_segment is not None:
            well = segments[req.well_from_segment] if req.well_from_segment < len(segments) - 1 else None
        tag = {"name": path, "node_id": node.node_id, "data_type": data_type, "well": well}
        out.tags.append(tag)
        rows.append((len(rows) + 1, dict(tag)))
    out.result = await import_tags(store, connection_id, rows, req.mode, req.dry_run, [], tenant.max_tags)
    return out
