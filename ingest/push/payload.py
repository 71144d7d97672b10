"""Seed 002's push payload: decoded and checked in one pass with msgspec.

A body that is not JSON, or not the schema, is refused whole (400) with every offending field
named the way a client indexes it (``data_points[3].value``). msgspec stops at the first error,
so a failed body is looked at again, point by point, to name up to ``MAX_DETAILS`` of them; that
slower pass runs only for bodies that are refused anyway.

``unit`` and ``parameter_name`` are free strings here, not seed 002's enums: an unknown one is a
per-point rejection (the rest of the batch lands), decided where tags and units are known.

Beyond seed 002, and only additive: ``quality_code`` may be ``DATA_LOST``, a gap marker (stored
with quality Bad_DataLost). Its ``value`` counts the readings of that tag lost from its timestamp
on, or is ``null`` when the count is unknown; only a gap marker may carry a ``null`` value. The
edge agent sends these for what its bounded buffer had to drop (ingest.edge).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from ingest.core.models import Quality, quality_as_int4
from ingest.push.errors import PayloadInvalid

MAX_DETAILS = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
QUALITY_CODES = {
    "GOOD": int(Quality.GOOD),
    "UNCERTAIN": quality_as_int4(Quality.UNCERTAIN),
    "BAD": quality_as_int4(Quality.BAD),
    "DATA_LOST": quality_as_int4(Quality.BAD_DATA_LOST),
}

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
ZonedTime = Annotated[datetime, msgspec.Meta(tz=True, description="ISO 8601 with a time zone")]
IngestionId = Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,200}$")]


class DataPoint(msgspec.Struct, frozen=True):
    well_id: Name
    timestamp: ZonedTime
    parameter_name: Name
    value: float | None  # None only for a gap marker whose count is unknown (checked on decode)
    unit: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    quality_code: Literal["GOOD", "BAD", "UNCERTAIN", "DATA_LOST"] = "GOOD"
    source: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class PushPayload(msgspec.Struct, frozen=True):
    tenant_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    data_points: Annotated[list[DataPoint], msgspec.Meta(min_length=1)]
    ingestion_timestamp: ZonedTime | None = None
    # Not in seed 002: a client-chosen id; repeating it makes a retry write nothing twice, like
    # the Idempotency-Key header.
    ingestion_id: IngestionId | None = None


_decoder = msgspec.json.Decoder(PushPayload)
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")


def _field_error(e: msgspec.ValidationError, prefix: str = "") -> dict[str, str]:
    """msgspec's message -> ``{"field": "data_points[3].value", "error": "must be a number"}``."""
    m = _AT.match(str(e))
    msg, path = (m.group("msg"), m.group("path") or "") if m else (str(e), "")
    path = prefix + path
    missing = _MISSING.match(msg)
    if missing:
        path, msg = f"{path}.{missing.group('field')}", "is required"
    elif msg.startswith(("Expected `float", "Expected `int | float")):
        msg = "must be a number"
    elif msg == "Number out of range":
        msg = "must be a finite number"
    elif msg.startswith("Expected `datetime` with a timezone"):
        msg = "must be an ISO 8601 time with a time zone (Z or +hh:mm)"
    elif msg.startswith("Expected `str`"):
        msg = "must be a string"
    return {"field": path.lstrip(".") or "body", "error": msg}


def decode_payload(body: bytes, max_points: int) -> PushPayload:
    """The payload, or PayloadInvalid naming each bad field (at most MAX_DETAILS)."""
    try:
        payload = _decoder.decode(body)
    except msgspec.ValidationError as e:
        raise PayloadInvalid("Invalid data schema", _all_errors(body, e)) from None
    except msgspec.DecodeError as e:
        raise PayloadInvalid("Malformed JSON", [{"field": "body", "error": str(e)}]) from None
    nulls = [
        {"field": f"data_points[{i}].value", "error": "must be a number"}
        for i, p in enumerate(payload.data_points)
        if p.value is None and p.quality_code != "DATA_LOST"
    ]
    if nulls:
        raise PayloadInvalid("Invalid data schema", nulls[:MAX_DETAILS])
    if len(payload.data_points) > max_points:
        raise PayloadInvalid(
            "Invalid data schema",
            [
                {
                    "field": "data_points",
                    "error": f"at most {max_points} points per request ({len(payload.data_points)} sent)",
                }
            ],
        )
    return payload


def _all_errors(body: bytes, first: msgspec.ValidationError) -> list[dict[str, str]]:
    try:
        raw: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return [_field_error(first)]
    points = raw.get("data_points") if isinstance(raw, dict) else None
    if not isinstance(points, list) or not points:
        return [_field_error(first)]
    details: list[dict[str, str]] = []
    top = {k: v for k, v in raw.items() if k != "data_points"}
    top["data_points"] = [points[0]]
    try:
        msgspec.convert(top, PushPayload)
    except msgspec.ValidationError as e:
        if not str(e).endswith("`$.data_points[0]`") and "$.data_points[0]." not in str(e):
            details.append(_field_error(e))
    for i, p in enumerate(points):
        try:
            msgspec.convert(p, DataPoint)
        except msgspec.ValidationError as e:
            details.append(_field_error(e, prefix=f".data_points[{i}]"))
            if len(details) >= MAX_DETAILS:
                break
    return details or [_field_error(first)]


def time_us(points: list[DataPoint]) -> npt.NDArray[np.int64]:
    """Source times as microseconds since the Unix epoch (exact; no float rounding)."""
    return np.fromiter(((p.timestamp - _EPOCH) // _US for p in points), np.int64, len(points))
