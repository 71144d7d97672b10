"""Push ingest without the stack: unit conversion against known figures, the payload's schema
errors, body limits (gzip bomb included) and the per-point verdicts of a batch."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import numpy as np
import pytest

from ingest.core.models import Quality, quality_as_int4
from ingest.push.batch import prepare_batch
from ingest.push.body import check_declared_length, read_limited
from ingest.push.errors import PayloadInvalid, PayloadTooLarge, UnsupportedEncoding
from ingest.push.payload import decode_payload
from ingest.push.tags import PushTag
from ingest.push.units import UnitError, coefficients, convert

# (value, from, to, expected): NIST / SPE conversion factors.
KNOWN = [
    (1.0, "bar", "psi", 14.503773773),
    (1.0, "psi", "bar", 0.0689475729),
    (100.0, "kPa", "psi", 14.503773773),
    (1.0, "MPa", "psi", 145.03773773),
    (6750.5, "psi", "kPa", 46543.0591075),
    (212.0, "degF", "degC", 100.0),
    (-40.0, "degC", "degF", -40.0),
    (0.0, "degC", "K", 273.15),
    (32.0, "degF", "K", 273.15),
    (300.0, "K", "degC", 26.85),
    (1.0, "bbl/day", "m3/day", 0.158987294928),
    (1000.0, "m3/day", "bbl/day", 6289.81077),
    (1.0, "klbs", "kN", 4.4482216152605),
    (100.0, "kN", "klbs", 22.480894387),
]


@pytest.mark.parametrize(("value", "src", "dst", "expected"), KNOWN)
def test_known_conversions(value: float, src: str, dst: str, expected: float) -> None:
    got = convert(np.array([value]), src, dst)[0]
    assert math.isclose(got, expected, rel_tol=1e-8, abs_tol=1e-9), (src, dst, got)


def test_same_unit_is_untouched_and_bad_units_are_named() -> None:
    v = np.array([1.5])
    assert convert(v, "psi", "psi") is v
    with pytest.raises(UnitError) as e:
        coefficients("psi", "degC")
    assert e.value.reason == "incompatible_unit"
    for bad in ("furlongs_per_fortnight_x", "12psi", "psi;drop", ""):
        with pytest.raises(UnitError) as e:
            coefficients(bad, "psi")
        assert e.value.reason in ("unknown_unit", "incompatible_unit")


def point(i: int = 0, **over: object) -> dict[str, object]:
    p: dict[str, object] = {
        "well_id": "WELL_001",
        "timestamp": "2025-11-06T14:30:00Z",
        "parameter_name": "wellhead_pressure",
        "value": 6750.5 + i,
        "unit": "psi",
    }
    p.update(over)
    return p


def body(points: list[dict[str, object]], **over: object) -> bytes:
    b: dict[str, object] = {"tenant_id": "acme", "data_points": points}
    b.update(over)
    return json.dumps(b).encode()


def details(raw: bytes, max_points: int = 1000) -> list[dict[str, str]]:
    with pytest.raises(PayloadInvalid) as e:
        decode_payload(raw, max_points)
    assert e.value.status == 400
    return e.value.details


def test_schema_errors_name_the_field() -> None:
    pts = [point(i) for i in range(6)]
    pts[3]["value"] = "NaN"
    pts[1]["timestamp"] = "2025-11-06T14:30:00"  # no zone
    del pts[2]["unit"]
    pts[4]["quality_code"] = "MEH"
    pts[5]["value"] = True
    d = details(body(pts))
    fields = {x["field"]: x["error"] for x in d}
    assert fields["data_points[3].value"] == "must be a number"
    assert "time zone" in fields["data_points[1].timestamp"]
    assert fields["data_points[2].unit"] == "is required"
    assert "data_points[4].quality_code" in fields
    assert fields["data_points[5].value"] == "must be a number"


def test_whole_body_errors() -> None:
    assert details(b"{not json")[0]["field"] == "body"
    assert details(b"[1, 2]")[0]["field"] == "body"
    assert details(body([]))[0]["field"] == "data_points"
    assert details(body([point()] * 1001))[0]["field"] == "data_points"
    assert details(body([point()]).replace(b"6750.5", b"1e999"))[0] == {
        "field": "data_points[0].value",
        "error": "must be a finite number",
    }
    assert details(b'{"data_points": [' + json.dumps(point()).encode() + b"]}")[0] == {
        "field": "tenant_id",
        "error": "is required",
    }
    # JSON has no NaN literal
    assert details(body([point()]).replace(b"6750.5", b"NaN"))[0]["field"] == "body"


def test_payload_decodes() -> None:
    p = decode_payload(body([point(quality_code="BAD", source="SCADA_OPC_UA")]), 1000)
    assert p.data_points[0].timestamp == datetime(2025, 11, 6, 14, 30, tzinfo=UTC)
    assert p.data_points[0].quality_code == "BAD"


async def chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_body_limits_while_streaming() -> None:
    with pytest.raises(PayloadTooLarge):
        check_declared_length(str(11 * 1024 * 1024), 10 * 1024 * 1024)
    check_declared_length("100", 1000)
    with pytest.raises(PayloadInvalid):
        check_declared_length("ten", 1000)
    # No (or a false) Content-Length: cut off while reading.
    with pytest.raises(PayloadTooLarge):
        await read_limited(chunks(b"x" * 5000), None, 4096, 4096)
    data, wire = await read_limited(chunks(b"y" * 4000), None, 4096, 4096)
    assert len(data) == wire == 4000


async def test_gzip_and_gzip_bomb() -> None:
    raw = body([point(i) for i in range(100)])
    data, wire = await read_limited(chunks(gzip.compress(raw)), "gzip", 10_000, 100_000)
    assert data == raw and wire < len(raw)
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024))  # ~200 KB that inflates to 200 MB
    assert len(bomb) < 300_000
    with pytest.raises(PayloadTooLarge):
        await read_limited(chunks(bomb, 65536), "gzip", 10 * 1024 * 1024, 10 * 1024 * 1024)
    with pytest.raises(PayloadInvalid):
        await read_limited(chunks(b"not gzip at all"), "gzip", 1000, 1000)
    with pytest.raises(PayloadInvalid):
        await read_limited(chunks(gzip.compress(raw)[:-20]), "gzip", 10_000, 100_000)
    with pytest.raises(UnsupportedEncoding):
        await read_limited(chunks(raw), "br", 10_000, 100_000)


def test_batch_verdicts_and_conversion() -> None:
    now_us = int(datetime(2025, 11, 6, 15, 0, tzinfo=UTC).timestamp() * 1e6)
    tags = {
        ("W1", "wellhead_pressure"): PushTag(1, "psi"),
        ("W1", "downhole_temperature"): PushTag(2, "degC"),
        ("W1", "free"): PushTag(3, None),
    }
    pts = [
        point(well_id="W1", value=10.0, unit="bar"),
        point(
            well_id="W1", parameter_name="downhole_temperature", value=212.0, unit="degF", quality_code="UNCERTAIN"
        ),
        point(well_id="W2"),  # unknown pair
        point(well_id="W1", unit="degC"),  # incompatible
        point(well_id="W1", unit="bogus"),  # unknown unit
        point(well_id="W1", timestamp="2099-01-01T00:00:00Z"),  # far future
        point(well_id="W1", parameter_name="free", value=7.0, unit="anything"),
        point(well_id="W1", timestamp="2025-11-06T16:30:00+02:00", value=1.0),
    ]
    p = decode_payload(body(pts), 1000)
    out = prepare_batch("push:x", p.data_points, tags, now_us, 300)
    assert out.accepted == 4 and out.rejected_count == 4
    assert [(r.index, r.field, r.reason) for r in out.rejected] == [
        (2, "data_points[2].parameter_name", "unknown_tag"),
        (3, "data_points[3].unit", "incompatible_unit"),
        (4, "data_points[4].unit", "unknown_unit"),
        (5, "data_points[5].timestamp", "timestamp_in_future"),
    ]
    b = out.batch
    assert b is not None and b.batch_id == "push:x"
    assert list(b.tag_id) == [1, 2, 3, 1]
    assert math.isclose(b.value[0], 145.03773773, rel_tol=1e-9)
    assert math.isclose(b.value[1], 100.0, rel_tol=1e-12)
    assert b.value[2] == 7.0
    assert b.quality[1] == quality_as_int4(Quality.UNCERTAIN)
    assert b.time_us[3] == int(datetime(2025, 11, 6, 14, 30, tzinfo=UTC).timestamp() * 1e6)
