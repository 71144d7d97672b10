"""What a device session is built from: stored tag rows -> addresses -> Modbus points or OPC UA
node ids, plus the endpoint and security it connects with.

Two callers take this one path, so they cannot drift apart: the session host (``make_session``),
and registration, which refuses (422, naming the field) what no session could run. Registration
runs it on a payload, or on the stored row with an edit applied, before anything is written.
The protocol libraries load only when a protocol's settings are checked or its session built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ingest.core.errors import ConfigError, InvalidDeviceSetting, InvalidRegistration
from ingest.core.models import ConnectionSpec, Protocol, SecurityMode, TagSpec
from ingest.device.modbus_address import parse_address, stored_address
from ingest.device.modbus_decode import ModbusPoint, plan_reads

if TYPE_CHECKING:
    from ingest.device.opcua import OpcUaTag
    from ingest.device.opcua_security import OpcUaSecurity

__all__ = [
    "Scaler",
    "DEVICE_SETTINGS",
    "check_connection",
    "check_tags",
    "modbus_points",
    "opcua_security",
    "opcua_tags",
    "tag_address",
    "tag_spec",
]

# A setting as a session names it -> the tag_mappings column (and registration field) holding it.
_TAG_FIELDS = {
    "node_id": "node_id",
    "register": "modbus_register",
    "unit": "modbus_unit",
    "address": "modbus_address",
    "data_type": "modbus_data_type",
    "byte_order": "byte_order",
    "bit": "modbus_bit",
    "length": "modbus_length",
}
# Monitored item settings (OPC UA only): tag_mappings column -> its default (= "unset").
DEVICE_SETTINGS: dict[str, Any] = {
    "sampling_interval_ms": None,
    "queue_size": None,
    "discard_oldest": True,
    "deadband_type": None,
    "deadband_value": 0.0,
}


# -- stored rows -> specs (what the coordinator hands out) ----------------------------------------
def tag_address(protocol: Protocol, row: Mapping[str, Any]) -> str | None:
    """The address a session reads a stored tag at (``tag_mappings`` columns in ``row``)."""
    if protocol is Protocol.OPCUA:
        node_id: str | None = row["node_id"]
        return node_id
    return stored_address(
        row["modbus_register"],
        row["modbus_unit"],
        row["modbus_address"],
        row["modbus_data_type"],
        row["byte_order"],
        row["modbus_bit"],
        row["modbus_length"],
    )


def tag_spec(protocol: Protocol, row: Mapping[str, Any], tag_id: int | None = None) -> TagSpec:
    return TagSpec(
        row["tag_id"] if tag_id is None else tag_id,
        row["name"],
        tag_address(protocol, row) or "",
        row["data_type"],
        row["scaling_factor"],
        row["offset"],
        # .get: rows of older callers (and pushed tags) may not carry the settings columns.
        **{k: _or_default(row.get(k), d) for k, d in DEVICE_SETTINGS.items()},
    )


def _or_default(v: Any, default: Any) -> Any:
    return default if v is None else v


# -- specs -> session inputs (what make_session passes to the session) ----------------------------
def modbus_points(spec: ConnectionSpec) -> list[ModbusPoint]:
    return [parse_address(t.address, tag_id=t.tag_id) for t in spec.tags]


def opcua_tags(spec: ConnectionSpec) -> list[OpcUaTag]:
    from ingest.device.opcua import OpcUaTag

    return [
        OpcUaTag(
            t.tag_id,
            t.address,
            sampling_interval_ms=t.sampling_interval_ms,
            queue_size=t.queue_size,
            discard_oldest=t.discard_oldest,
            deadband_type=t.deadband_type,  # type: ignore[arg-type]  # checked by OpcUaTag
            deadband_value=t.deadband_value,
        )
        for t in spec.tags
    ]


def opcua_security(spec: ConnectionSpec) -> OpcUaSecurity | None:
    if spec.security_mode is SecurityMode.NONE:
        return None
    from ingest.device.opcua_security import OpcUaSecurity

    return OpcUaSecurity(
        mode=spec.security_mode,
        policy=spec.security_policy,
        username=spec.username,
        password=spec.password,
        auto_accept=spec.auto_accept_server_cert,
    )


# -- registration checks --------------------------------------------------------------------------
def check_connection(spec: ConnectionSpec) -> None:
    """Refuse an endpoint or security setting the protocol's session would refuse."""
    try:
        if spec.protocol is Protocol.OPCUA:
            from ingest.device.opcua import check_endpoint

            check_endpoint(spec.endpoint)
            opcua_security(spec)
        else:
            from ingest.device.modbus import parse_endpoint

            parse_endpoint(spec.endpoint)
    except InvalidDeviceSetting as e:
        raise InvalidRegistration(e.field, e.reason) from None
    except ConfigError as e:  # OpcUaSecurity's own checks; the payload model names most first
        raise InvalidRegistration("security_mode", str(e)) from None


def check_tags(protocol: Protocol, rows: Sequence[Mapping[str, Any]], field_prefix: str = "tags.{i}.") -> None:
    """Refuse tags no session could read: each row (``tag_mappings`` columns, as registered or
    as an edit would leave it) goes through ``tag_spec`` and the session's own parser."""
    if protocol is Protocol.PUSH:
        return  # a pushed tag has no device address (ingest.push.tags)
    points: list[ModbusPoint] = []
    for i, row in enumerate(rows):
        where = field_prefix.format(i=i)
        try:
            _registration_rules(protocol, row)
            tag = tag_spec(protocol, row, tag_id=i)
            if protocol is Protocol.OPCUA:
                from ingest.device.opcua import parse_node_id

                # What make_session and OpcUaSession do with each tag: its settings checked by
                # OpcUaTag, its node id parsed.
                opcua_tags(ConnectionSpec("", "", "", protocol, "", 1000, tags=(tag,)))
                parse_node_id(tag.address)
            else:
                points.append(parse_address(tag.address, tag_id=i))
        except InvalidDeviceSetting as e:
            raise InvalidRegistration(where + _TAG_FIELDS.get(e.field, e.field), e.reason) from None
    try:
        plan_reads(points)
    except ValueError as e:
        raise InvalidRegistration("tags", str(e)) from None


def _registration_rules(protocol: Protocol, row: Mapping[str, Any]) -> None:
    """What registration asks beyond what a session can run: no setting left to a silent guess."""
    if protocol is Protocol.OPCUA:
        if row["node_id"] is None:
            raise InvalidDeviceSetting("node_id", "required for an OPC UA connection")
        return
    for column, default in DEVICE_SETTINGS.items():
        if row.get(column) not in (None, default):
            # A Modbus session polls every tag each interval; it has no monitored items.
            raise InvalidDeviceSetting(column, "an OPC UA monitored item setting; not for Modbus tags")
    for column in ("modbus_register", "modbus_address"):
        if row[column] is None:
            raise InvalidDeviceSetting(column, "register type and address are required")
    is_string = row["modbus_data_type"] == "string"
    if is_string and row["modbus_length"] is None:
        # Without it the session would read one register (two characters) and say nothing.
        raise InvalidDeviceSetting("length", "a string tag states its length in registers")
    if not is_string and row["modbus_length"] is not None:
        raise InvalidDeviceSetting("length", "only string tags take a length")


class Scaler:
    """Applies each tag's scaling factor and offset to a chunk of readings."""

    def __init__(self, spec: ConnectionSpec) -> None:
        order = sorted(spec.tags, key=lambda t: t.tag_id)
        self.ids = np.array([t.tag_id for t in order], np.int32)
        self.factor = np.array([t.scaling_factor for t in order], np.float64)
        self.offset = np.array([t.offset for t in order], np.float64)
        self.trivial = bool(np.all(self.factor == 1.0) and np.all(self.offset == 0.0))

    def __call__(self, tag_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        if self.trivial:
            return values
        idx = np.searchsorted(self.ids, tag_ids)
        return values * self.factor[idx] + self.offset[idx]
