"""The register images a simulated Modbus device holds, and the points that read them.

Register layout, the same for every unit (0-based protocol addresses):

holding registers
    0..79     one point of every numeric type in every byte order: for each data type in
              ``NUMERIC_TYPES`` (int16, uint16, int32, uint32, int64, uint64, float32, float64)
              and each byte order (ABCD, DCBA, BADC, CDAB), in that nesting, packed back to back
    80        0       bool (register != 0) -> False
    81        0x0100  bool -> True
    82        0xA053  bit points bit=0..15, ABCD
    83        0xA053 with its bytes swapped: bit points bit=0..15, BADC
    84..107   the text ``HOLDING-TXT`` as a 6-register string (NUL padded) in ABCD, DCBA, BADC, CDAB
    1000..    counters (``counters`` of them): uint32 ABCD at 1000 + 2 * k; in ``counting`` mode
              every counter reads ``counter_value()``, which goes up by one every ``interval_ms``
              from ``start()`` on (wrapping at 2**32); in ``static`` mode they read 0.
input registers
    0..107    the same layout as holding 0..107 with ``INPUT_VALUES`` and the text ``INPUT-TXT``.
coils             0..31: ``COIL_BITS``
discrete inputs   0..31: ``DISCRETE_BITS``

Addresses in between (108..999 of the holding registers) are not mapped: reading them is answered
with exception 2, as a real device does. ``points()`` lists the typed points (tag ids 1..n) and
``expected_values()`` what each one must decode to; the register images are built here with
``struct`` so that they check our decoder rather than repeat it.
"""

from __future__ import annotations

import struct
from typing import Any

from ingest.device.modbus_decode import ByteOrder, DataType, ModbusPoint, RegisterType

__all__ = ["COUNTER_BASE", "MAX_COUNTERS", "bit_points", "register_image"]

NUMERIC_TYPES: tuple[DataType, ...] = (
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
)
BYTE_ORDERS: tuple[ByteOrder, ...] = ("ABCD", "DCBA", "BADC", "CDAB")
_STRUCT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
# Values with distinct bytes, so that any byte or word order mix-up changes them; floats are
# exactly representable in their width.
HOLDING_VALUES: dict[str, int | float] = {
    "int16": -0x1234,
    "uint16": 0xBEEF,
    "int32": -0x12345678,
    "uint32": 0xDEADBEEF,
    "int64": -0x0123456789ABCDEF,
    "uint64": 0x0123456789ABCDEF,
    "float32": -1234.5625,
    "float64": 12345.678901234567,
}
# Edge values: the extremes of each integer type.
INPUT_VALUES: dict[str, int | float] = {
    "int16": -(2**15),
    "uint16": 2**16 - 1,
    "int32": -(2**31),
    "uint32": 2**32 - 1,
    "int64": -(2**63),
    "uint64": 2**64 - 1,
    "float32": 3.0517578125e-05,
    "float64": -1.0e300,
}
BIT_REGISTER = 0xA053
STRING_REGISTERS = 6
TEXTS = {"holding": "HOLDING-TXT", "input": "INPUT-TXT"}
COIL_BITS = [i % 3 == 0 for i in range(32)]
DISCRETE_BITS = [i % 5 in (1, 2) for i in range(32)]
COUNTER_BASE = 1000
MAX_COUNTERS = (65536 - COUNTER_BASE) // 2


def _wire_words(big_endian: bytes, order: str) -> list[int]:
    """Bytes of a big-endian value -> the register words a device with that byte order sends."""
    pairs = [big_endian[i : i + 2] for i in range(0, len(big_endian), 2)]
    if order == "DCBA":
        wire = big_endian[::-1]
    elif order == "BADC":
        wire = b"".join(p[::-1] for p in pairs)
    elif order == "CDAB":
        wire = b"".join(reversed(pairs))
    else:
        wire = big_endian
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]


def _string_words(text: str, order: str) -> list[int]:
    raw = text.encode("ascii").ljust(2 * STRING_REGISTERS, b"\x00")
    if order in ("BADC", "DCBA"):  # first character in the low byte of each register
        raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def register_image(register: RegisterType, unit: int) -> tuple[list[int], list[tuple[ModbusPoint, float | str]]]:
    """The register image of one register table and its points (tag ids assigned later)."""
    values = HOLDING_VALUES if register == "holding" else INPUT_VALUES
    image: list[int] = []
    points: list[tuple[ModbusPoint, float | str]] = []

    def add(words: list[int], value: float | str, **kw: Any) -> None:
        points.append((ModbusPoint(tag_id=0, unit=unit, register=register, **kw), value))
        image.extend(words)

    for dt in NUMERIC_TYPES:
        v = values[dt]
        for order in BYTE_ORDERS:
            words = _wire_words(struct.pack(">" + _STRUCT[dt], v), order)
            add(words, float(v), address=len(image), data_type=dt, byte_order=order)
    add([0], 0.0, address=len(image), data_type="bool")
    add([0x0100], 1.0, address=len(image), data_type="bool")
    for order, word in (("ABCD", BIT_REGISTER), ("BADC", _wire_words(b"\xa0\x53", "BADC")[0])):
        addr = len(image)
        for bit in range(16):
            points.append(
                (
                    ModbusPoint(
                        tag_id=0,
                        unit=unit,
                        register=register,
                        address=addr,
                        data_type="bool",
                        byte_order=order,
                        bit=bit,
                    ),
                    float((BIT_REGISTER >> bit) & 1),
                )
            )
        image.append(word)
    for order in BYTE_ORDERS:
        add(
            _string_words(TEXTS[register], order),
            TEXTS[register],
            address=len(image),
            data_type="string",
            byte_order=order,
            length=STRING_REGISTERS,
        )
    return image, points


def bit_points(register: RegisterType, unit: int, bits: list[bool]) -> list[tuple[ModbusPoint, float]]:
    return [
        (ModbusPoint(tag_id=0, unit=unit, register=register, address=i, data_type="bool"), float(b))
        for i, b in enumerate(bits)
    ]
