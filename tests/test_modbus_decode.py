"""Modbus address parsing, read planning and decoding (pure functions, no network).

Expected register words are built here with ``struct`` (little-endian packing for the swapped
orders), independently of the numpy byte permutations in ``modbus_decode``.
"""

from __future__ import annotations

import math
import random
import struct

import numpy as np
import pytest

from ingest.device.modbus_address import format_address, parse_address
from ingest.device.modbus_decode import (
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    ModbusPoint,
    decode,
    plan_reads,
)

ORDERS = ("ABCD", "DCBA", "BADC", "CDAB")
FORMATS = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
EDGES: dict[str, list[int | float]] = {
    "int16": [0, 1, -1, 2**15 - 1, -(2**15), 0x1234, -0x1234],
    "uint16": [0, 1, 2**16 - 1, 0x8000, 0xBEEF],
    "int32": [0, 1, -1, 2**31 - 1, -(2**31), 0x12345678, -0x12345678, 65536, -65536],
    "uint32": [0, 1, 2**32 - 1, 2**31, 0xDEADBEEF, 65535, 65536],
    "int64": [0, 1, -1, 2**63 - 1, -(2**63), 0x0123456789ABCDEF, -0x0123456789ABCDEF, 2**53],
    "uint64": [0, 1, 2**64 - 1, 2**63, 0x0123456789ABCDEF, 2**53 - 1],
    "float32": [0.0, -0.0, 1.5, -1234.5625, 3.4028234663852886e38, 1e-45, math.inf, -math.inf],
    "float64": [0.0, 1.0, -12345.678901234567, 1.7976931348623157e308, 5e-324, math.pi],
}


def _swap_words(b: bytes) -> bytes:
    return b"".join(reversed([b[i : i + 2] for i in range(0, len(b), 2)]))


def wire(value: int | float, data_type: str, order: str) -> list[int]:
    """Register words a device with ``order`` sends for ``value`` (built with struct)."""
    fmt = FORMATS[data_type]
    if order == "ABCD":
        raw = struct.pack(">" + fmt, value)
    elif order == "DCBA":
        raw = struct.pack("<" + fmt, value)
    elif order == "BADC":  # little-endian value, words then put back in big-endian order
        raw = _swap_words(struct.pack("<" + fmt, value))
    else:  # CDAB: big-endian words, least significant word first
        raw = _swap_words(struct.pack(">" + fmt, value))
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


def as_stored(value: int | float, data_type: str) -> float:
    """The float64 a value becomes in the readings table (float32 after its own rounding)."""
    if data_type == "float32":
        return float(struct.unpack(">f", struct.pack(">f", value))[0])
    return float(value)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


# --- every data type x every byte order -------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("data_type", list(FORMATS))
def test_round_trip_every_type_and_order(data_type: str, order: str) -> None:
    values = EDGES[data_type]
    regs: list[int] = [0xFFFF] * 3  # something in front, so offsets are not all zero
    points = []
    for i, v in enumerate(values):
        points.append(
            ModbusPoint(
                tag_id=100 + i,
                unit=1,
                register="holding",
                address=10 + len(regs),
                data_type=data_type,  # type: ignore[arg-type]
                byte_order=order,  # type: ignore[arg-type]
            )
        )
        regs += wire(v, data_type, order)
    [req] = plan_reads(points)
    assert req.address == 13 and req.count == len(regs) - 3
    tag_ids, got, strings = decode(req, np.array(regs[3:], dtype=np.uint16))
    assert strings == []
    assert tag_ids.tolist() == [p.tag_id for p in points]
    assert got.dtype == np.float64
    for p, v, g in zip(points, values, got.tolist(), strict=True):
        assert same(g, as_stored(v, data_type)), (p, v, g)


def test_blocks_read_as_one_view_beside_other_groups_from_either_payload() -> None:
    """Points of one type back to back decode by one view of the payload ("dense" groups), beside
    groups that do not (a word-swapped value, a 16-bit one between), from native uint16 words
    and from the read-only big-endian words ModbusLink hands over; same values either way."""
    rng = random.Random(11)
    layout = [("uint32", "ABCD")] * 5 + [("int16", "BADC")] + [("float32", "DCBA")] * 4
    layout += [("uint32", "CDAB"), ("int64", "ABCD"), ("uint16", "ABCD"), ("uint16", "ABCD")]
    regs: list[int] = []
    points: list[ModbusPoint] = []
    expected: list[float] = []
    for dt, order in layout:
        v = rng.choice(EDGES[dt])
        points.append(ModbusPoint(len(points) + 1, 1, "holding", 40 + len(regs), dt, order))  # type: ignore[arg-type]
        regs += wire(v, dt, order)
        expected.append(as_stored(v, dt))
    [req] = plan_reads(points, max_register_gap=0)
    assert [(g.data_type, g.byte_order) for g in req._groups if g.dense is None] == [("uint32", "CDAB")]
    payload = struct.pack(f">{len(regs)}H", *regs)
    for data in (np.array(regs, dtype=np.uint16), np.frombuffer(payload, dtype=">u2")):
        ids, got, _ = decode(req, data)
        assert ids.tolist() == [p.tag_id for p in points]
        for p, e, g in zip(points, expected, got.tolist(), strict=True):
            assert same(g, e), (p, e, g)


def test_our_response_classes_decode_as_pymodbus_does() -> None:
    """ModbusLink registers PDU classes that keep the payload in numpy: same registers and bits
    as pymodbus' own classes, for every register and bit function."""
    from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
    from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

    from ingest.device.modbus_link import _RESPONSES, _Bits, _Words

    words = [0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x1234]
    frame = bytes([2 * len(words)]) + struct.pack(f">{len(words)}H", *words)
    bits_frame = bytes([3, 0b10100101, 0b00000001, 0b11110000])
    stock = {3: ReadHoldingRegistersResponse, 4: ReadInputRegistersResponse, 1: ReadCoilsResponse}
    stock[2] = ReadDiscreteInputsResponse
    assert sorted(r.function_code for r in _RESPONSES) == [1, 2, 3, 4]
    for ours in _RESPONSES:
        theirs = stock[ours.function_code]()
        mine = ours()
        if isinstance(mine, _Words):
            theirs.decode(frame)
            mine.decode(frame)
            assert mine.words.tolist() == theirs.registers
        else:
            assert isinstance(mine, _Bits)
            theirs.decode(bits_frame)
            mine.decode(bits_frame)
            assert mine.bit_array.tolist() == list(theirs.bits)
        assert str(mine).startswith(f"{type(mine).__name__}(dev_id=")


def test_float_nan_survives() -> None:
    for dt in ("float32", "float64"):
        for order in ORDERS:
            p = ModbusPoint(1, 1, "input", 0, dt, order)  # type: ignore[arg-type]
            [req] = plan_reads([p])
            _, got, _ = decode(req, np.array(wire(math.nan, dt, order), dtype=np.uint16))
            assert math.isnan(got[0])


def test_all_types_mixed_in_one_request() -> None:
    """Many groups (type x order) per response land in the right output positions."""
    rng = random.Random(7)
    regs: list[int] = []
    points: list[ModbusPoint] = []
    expected: list[float] = []
    for _ in range(6):
        for dt in FORMATS:
            for order in ORDERS:
                v = rng.choice(EDGES[dt])
                points.append(
                    ModbusPoint(len(points) + 1, 2, "input", len(regs), dt, order)  # type: ignore[arg-type]
                )
                regs += wire(v, dt, order)
                expected.append(as_stored(v, dt))
    rng.shuffle(points)  # planning sorts by address; output follows request.points
    reqs = plan_reads(points, max_register_gap=0)
    by_tag: dict[int, float] = {}
    for req in reqs:
        ids, vals, _ = decode(req, np.array(regs[req.address : req.address + req.count], np.uint16))
        by_tag.update(zip(ids.tolist(), vals.tolist(), strict=True))
    assert len(by_tag) == len(points)
    for p, e in zip(sorted(points, key=lambda q: q.tag_id), expected, strict=True):
        assert same(by_tag[p.tag_id], e), p


def test_sixteen_bit_orders_only_swap_bytes() -> None:
    reg = 0x12FE
    out = {}
    for order in ORDERS:
        [req] = plan_reads([ModbusPoint(1, 1, "holding", 0, "uint16", order)])  # type: ignore[arg-type]
        out[order] = decode(req, np.array([reg], dtype=np.uint16)).values[0]
    assert out["ABCD"] == out["CDAB"] == 0x12FE
    assert out["DCBA"] == out["BADC"] == 0xFE12


# --- bits, booleans, strings -------------------------------------------------------------------


def test_bits_of_a_register() -> None:
    word = 0b1010_0000_0101_0011
    swapped = ((word & 0xFF) << 8) | (word >> 8)
    points = [ModbusPoint(b + 1, 1, "holding", 5, "bool", "ABCD", bit=b) for b in range(16)]
    points += [ModbusPoint(b + 101, 1, "holding", 6, "bool", "BADC", bit=b) for b in range(16)]
    points += [
        ModbusPoint(201, 1, "holding", 7, "bool"),  # whole register: != 0
        ModbusPoint(202, 1, "holding", 8, "bool"),
    ]
    [req] = plan_reads(points)
    ids, vals, _ = decode(req, np.array([word, swapped, 0, 0x0100], dtype=np.uint16))
    got = dict(zip(ids.tolist(), vals.tolist(), strict=True))
    for b in range(16):
        assert got[b + 1] == float((word >> b) & 1), b
        assert got[b + 101] == float((word >> b) & 1), b
    assert got[201] == 0.0 and got[202] == 1.0


def test_coils_and_discrete_inputs() -> None:
    bits = np.array([i % 3 == 0 for i in range(40)], dtype=np.bool_)
    points = [ModbusPoint(i + 1, 1, "coil", i + 100, "bool") for i in range(0, 40, 2)]
    [req] = plan_reads(points)
    assert (req.address, req.count) == (100, 39)
    ids, vals, _ = decode(req, bits[:39])
    for tid, v in zip(ids.tolist(), vals.tolist(), strict=True):
        assert v == float(bits[tid - 1])
    [dreq] = plan_reads([ModbusPoint(1, 1, "discrete", 0, "bool")])
    assert dreq.register == "discrete" and dreq.is_bits


def test_strings() -> None:
    text = b"PUMP-07 OK"  # 10 chars in 6 registers: two NUL bytes of padding
    raw = text.ljust(12, b"\x00")
    high_first = list(struct.unpack(">6H", raw))
    low_first = list(struct.unpack("<6H", raw))
    points = [
        ModbusPoint(1, 1, "holding", 0, "string", "ABCD", length=6),
        ModbusPoint(2, 1, "holding", 6, "string", "BADC", length=6),
        ModbusPoint(3, 1, "holding", 12, "string", "CDAB", length=6),
        ModbusPoint(4, 1, "holding", 18, "string", "DCBA", length=6),
        ModbusPoint(5, 1, "holding", 24, "string", "ABCD", length=2),  # odd text, space padded
        ModbusPoint(6, 1, "holding", 26, "int16"),
    ]
    regs = high_first + low_first + high_first + low_first
    regs += list(struct.unpack(">2H", b"AB C")) + [7]
    [req] = plan_reads(points)
    ids, vals, strings = decode(req, np.array(regs, dtype=np.uint16))
    assert dict(strings) == {
        1: "PUMP-07 OK",
        2: "PUMP-07 OK",
        3: "PUMP-07 OK",
        4: "PUMP-07 OK",
        5: "AB C",
    }
    got = dict(zip(ids.tolist(), vals.tolist(), strict=True))
    assert all(math.isnan(got[t]) for t in range(1, 6)) and got[6] == 7.0


def test_short_response_is_refused() -> None:
    [req] = plan_reads([ModbusPoint(1, 1, "holding", 0, "uint32")])
    with pytest.raises(ValueError, match="asked for 2"):
        decode(req, np.array([1], dtype=np.uint16))


# --- planning ----------------------------------------------------------------------------------


def test_contiguous_block_is_one_request() -> None:
    points = [ModbusPoint(i + 1, 1, "holding", 100 + 2 * i, "float32") for i in range(50)]
    [req] = plan_reads(points)
    assert (req.address, req.count) == (100, 100)
    assert req.offsets == tuple(range(0, 100, 2))


def test_register_limit_125() -> None:
    points = [ModbusPoint(i + 1, 1, "holding", i, "uint16") for i in range(300)]
    reqs = plan_reads(points)
    assert [r.count for r in reqs] == [125, 125, 50]
    # 200 registers of uint32: a point never straddles two reads, so 124 + 76.
    counters = [ModbusPoint(i + 1, 1, "holding", 1000 + 2 * i, "uint32") for i in range(100)]
    reqs = plan_reads(counters)
    assert len(reqs) == 2 and all(r.count <= MAX_REGISTERS_PER_READ for r in reqs)
    assert sum(len(r.points) for r in reqs) == 100


def test_bit_limit_2000() -> None:
    points = [ModbusPoint(i + 1, 1, "coil", i, "bool") for i in range(4500)]
    reqs = plan_reads(points)
    assert [r.count for r in reqs] == [2000, 2000, 500]
    assert max(r.count for r in reqs) <= MAX_BITS_PER_READ


def test_gaps() -> None:
    a = ModbusPoint(1, 1, "holding", 0, "uint16")
    near = ModbusPoint(2, 1, "holding", 17, "uint16")  # 16 unused registers in between
    far = ModbusPoint(3, 1, "holding", 18, "uint16")  # 17 unused
    assert len(plan_reads([a, near])) == 1
    assert len(plan_reads([a, far])) == 2
    assert len(plan_reads([a, far], max_register_gap=17)) == 1
    assert len(plan_reads([a, near], max_register_gap=0)) == 2
    c1 = ModbusPoint(1, 1, "discrete", 0, "bool")
    assert len(plan_reads([c1, ModbusPoint(2, 1, "discrete", 65, "bool")])) == 1  # 64 unused
    assert len(plan_reads([c1, ModbusPoint(2, 1, "discrete", 66, "bool")])) == 2  # 65 unused


def test_units_and_tables_never_share_a_read() -> None:
    points = [
        ModbusPoint(1, 1, "holding", 0, "uint16"),
        ModbusPoint(2, 2, "holding", 1, "uint16"),
        ModbusPoint(3, 1, "input", 1, "uint16"),
        ModbusPoint(4, 1, "coil", 0, "bool"),
    ]
    reqs = plan_reads(points)
    assert len(reqs) == 4
    assert {(r.unit, r.register) for r in reqs} == {
        (1, "holding"),
        (2, "holding"),
        (1, "input"),
        (1, "coil"),
    }


def test_overlapping_points_share_registers() -> None:
    points = [
        ModbusPoint(1, 1, "holding", 10, "uint32"),
        ModbusPoint(2, 1, "holding", 10, "uint16"),  # high word of the same value
        ModbusPoint(3, 1, "holding", 11, "bool", bit=0),
    ]
    [req] = plan_reads(points)
    assert (req.address, req.count) == (10, 2)
    got = dict(zip(*decode(req, np.array([0x0001, 0x0003], np.uint16))[:2], strict=True))
    assert got == {1: 65539.0, 2: 1.0, 3: 1.0}


def test_random_plans_cover_every_point_within_limits() -> None:
    rng = random.Random(1234)
    for _ in range(30):
        points = []
        for tid in range(1, rng.randint(1, 400)):
            reg = rng.choice(["holding", "input", "coil", "discrete"])
            if reg in ("coil", "discrete"):
                points.append(ModbusPoint(tid, rng.randint(1, 3), reg, rng.randint(0, 5000), "bool"))
            else:
                dt = rng.choice(list(FORMATS))
                points.append(
                    ModbusPoint(tid, rng.randint(1, 3), reg, rng.randint(0, 3000), dt)  # type: ignore[arg-type]
                )
        gap = rng.randint(0, 40)
        reqs = plan_reads(points, max_register_gap=gap, max_bit_gap=gap * 4)
        seen = []
        for r in reqs:
            limit = MAX_BITS_PER_READ if r.is_bits else MAX_REGISTERS_PER_READ
            assert 1 <= r.count <= limit
            for p, off in zip(r.points, r.offsets, strict=True):
                assert (p.unit, p.register) == (r.unit, r.register)
                assert p.address == r.address + off and off + p.width <= r.count
                seen.append(p.tag_id)
        assert sorted(seen) == sorted(p.tag_id for p in points)
        # Greedy is tight: two neighbouring reads of one table could not have been one.
        for r1, r2 in zip(reqs, reqs[1:], strict=False):
            if (r1.unit, r1.register) == (r2.unit, r2.register):
                limit = MAX_BITS_PER_READ if r1.is_bits else MAX_REGISTERS_PER_READ
                g = gap * 4 if r1.is_bits else gap
                end2 = max(p.address + p.width for p in r2.points)
                assert r2.address - (r1.address + r1.count) > g or end2 - r1.address > limit


# --- the stored address format -----------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "holding:1:100:float32:CDAB",
        "input:3:0:int16:ABCD",
        "holding:1:7:bool:ABCD:bit=3",
        "holding:1:200:string:ABCD:len=8",
        "coil:1:12:bool:ABCD",
        "discrete:255:65535:bool:ABCD",
        "input:0:65532:uint64:DCBA",
    ],
)
def test_address_round_trip(spec: str) -> None:
    p = parse_address(spec, tag_id=42)
    assert p.tag_id == 42
    assert format_address(p) == spec


def test_address_is_lenient_about_case_and_spaces() -> None:
    p = parse_address(" Holding:1:100:FLOAT32:cdab ")
    assert (p.register, p.data_type, p.byte_order) == ("holding", "float32", "CDAB")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("holding:1:100:float32", "expected"),
        ("register:1:100:float32:ABCD", "register must be"),
        ("holding:1:100:float16:ABCD", "data type must be"),
        ("holding:1:100:float32:ABDC", "byte order must be"),
        ("holding:x:100:float32:ABCD", "integer"),
        ("holding:256:100:float32:ABCD", "unit must be"),
        ("holding:1:65535:float32:ABCD", "outside"),
        ("holding:1:7:uint16:ABCD:bit=3", "bit= needs data_type bool"),
        ("holding:1:7:bool:ABCD:bit=16", "bit must be"),
        ("coil:1:7:uint16:ABCD", "coil points are data_type bool"),
        ("holding:1:7:string:ABCD:len=126", "string length"),
        ("holding:1:7:uint16:ABCD:len=2", "strings only"),
        ("holding:1:7:bool:ABCD:foo=1", "suffix"),
    ],
)
def test_bad_addresses_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_address(spec)
