"""Modbus points: what one tag reads, read planning and vectorised decoding.

Pure numpy, no I/O: ``ingest/device/modbus.py`` issues the requests this module plans and hands
the raw words (or bits) back to ``decode``. How a point is stored in ``tag_mappings`` (the address
format) is ``ingest/device/modbus_address.py``.

Addresses are 0-based protocol addresses (what goes on the wire), not 40001-style numbers.

Byte order names the wire position of the bytes of a big-endian value ``A B C D`` (A most
significant), generalised to 64-bit values by words:
- ``ABCD``: words most significant first, each word big-endian (the Modbus default);
- ``DCBA``: all bytes reversed (a little-endian value);
- ``BADC``: words most significant first, bytes swapped inside each word;
- ``CDAB``: words least significant first ("word swap"), each word big-endian.
For 16-bit types only the in-word order matters (ABCD = CDAB, BADC = DCBA). For strings, ABCD and
CDAB put the first character in the high byte of each register, BADC and DCBA in the low byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, NamedTuple, cast, get_args

import numpy as np
import numpy.typing as npt

from ingest.core.errors import InvalidDeviceSetting

__all__ = [
    "MAX_BITS_PER_READ",
    "MAX_REGISTERS_PER_READ",
    "ByteOrder",
    "DataType",
    "Decoded",
    "ModbusPoint",
    "ReadRequest",
    "RegisterType",
    "decode",
    "plan_reads",
    "register_width",
]

RegisterType = Literal["coil", "discrete", "holding", "input"]
DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"]
ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]

_REGISTER_TYPES: tuple[str, ...] = get_args(RegisterType)
_DATA_TYPES: tuple[str, ...] = get_args(DataType)
_BYTE_ORDERS: tuple[str, ...] = get_args(ByteOrder)
_BIT_TYPES = frozenset(("coil", "discrete"))

# A Modbus PDU is at most 253 bytes: function code (1) + byte count (1) + data. 125 registers
# (250 bytes) and 2000 bits (250 bytes) are the largest reads that fit, and the spec caps the
# request counts there (0x7D / 0x7D0); devices answer anything larger with exception 3.
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000

_WORDS: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
# Big-endian numpy dtypes: after reordering, the bytes of every value are most significant first.
_DTYPES: dict[str, np.dtype[np.generic]] = {
    "bool": np.dtype(">u2"),
    "int16": np.dtype(">i2"),
    "uint16": np.dtype(">u2"),
    "int32": np.dtype(">i4"),
    "uint32": np.dtype(">u4"),
    "float32": np.dtype(">f4"),
    "int64": np.dtype(">i8"),
    "uint64": np.dtype(">u8"),
    "float64": np.dtype(">f8"),
}


@dataclass(frozen=True)
class ModbusPoint:
    """One tag on a Modbus device: where it lives and how its registers become a value."""

    tag_id: int
    unit: int
    register: RegisterType
    address: int
    data_type: DataType
    byte_order: ByteOrder = "ABCD"
    bit: int | None = None  # a single bit 0-15 (0 = least significant) of one 16-bit register
    length: int = 1  # registers; only strings span a configurable number

    def __post_init__(self) -> None:
        # Each refusal names the field at fault, so registration can point at what to change.
        def bad(field: str, reason: str) -> InvalidDeviceSetting:
            return InvalidDeviceSetting(field, reason, f"tag {self.tag_id}")

        if not -(2**31) <= self.tag_id < 2**31:
            raise bad("tag_id", "tag_id does not fit int32")
        if not 0 <= self.unit <= 255:
            raise bad("unit", f"unit must be 0..255, got {self.unit}")
        if self.register not in _REGISTER_TYPES:
            raise bad("register", f"register must be one of {_REGISTER_TYPES}")
        if self.data_type not in _DATA_TYPES:
            raise bad("data_type", f"data_type must be one of {_DATA_TYPES}")
        if self.byte_order not in _BYTE_ORDERS:
            raise bad("byte_order", f"byte_order must be one of {_BYTE_ORDERS}")
        if self.register in _BIT_TYPES and self.data_type != "bool":
            raise bad("data_type", f"{self.register} points are data_type bool")
        if self.register in _BIT_TYPES and self.bit is not None:
            raise bad("bit", f"{self.register} points are single bits already: no bit=")
        if self.bit is not None:
            if self.data_type != "bool":
                raise bad("bit", "bit= needs data_type bool (one bit of a 16-bit register)")
            if not 0 <= self.bit <= 15:
                raise bad("bit", f"bit must be 0..15, got {self.bit}")
        if self.data_type == "string":
            if not 1 <= self.length <= MAX_REGISTERS_PER_READ:
                raise bad("length", "string length must be 1..125 registers")
        elif self.length != 1:
            raise bad("length", "len= applies to strings only")
        if not 0 <= self.address or self.address + self.width > 65536:
            raise bad("address", f"address {self.address} (+{self.width}) outside 0..65535")

    @property
    def width(self) -> int:
        """Registers (or bits, for coils and discrete inputs) the point occupies."""
        return register_width(self)


def register_width(point: ModbusPoint) -> int:
    if point.register in _BIT_TYPES:
        return 1
    if point.data_type == "string":
        return point.length
    return _WORDS[point.data_type]


# --- planning ------------------------------------------------------------------------------


class _Group(NamedTuple):
    """Points of one request that decode the same way, as index arrays ready for numpy."""

    positions: npt.NDArray[np.intp]  # where their values go in the request's output columns
    where: npt.NDArray[np.intp]  # (n, words) word positions in the response, or (n,) bits
    data_type: str
    byte_order: str
    bits: npt.NDArray[np.intp] | None  # bit numbers, for bit-of-register points
    # Values back to back in the response, in point order, in a byte order numpy reads directly:
    # (first word, first position, dtype), decoded by one view of the payload.
    dense: tuple[int, int, np.dtype[np.generic]] | None = None


@dataclass(frozen=True)
class ReadRequest:
    """One read on the wire and the points it serves.

    ``points[i]`` starts at ``address + offsets[i]``. ``decode`` returns values in the order of
    ``points`` (so ``tag_ids`` lines up with them).
    """

    unit: int
    register: RegisterType
    address: int
    count: int  # registers, or bits for coils and discrete inputs
    points: tuple[ModbusPoint, ...]
    offsets: tuple[int, ...] = field(repr=False)

    @property
    def is_bits(self) -> bool:
        return self.register in _BIT_TYPES

    @cached_property
    def tag_ids(self) -> npt.NDArray[np.int32]:
        ids = np.fromiter((p.tag_id for p in self.points), dtype=np.int32, count=len(self.points))
        ids.flags.writeable = False
        return ids

    @cached_property
    def _groups(self) -> tuple[_Group, ...]:
        # Built once per request; every poll then decodes with a few fancy-index operations.
        keyed: dict[tuple[str, str, bool], list[int]] = {}
        for i, p in enumerate(self.points):
            order: str = p.byte_order
            if p.data_type == "string":
                order = "BADC" if order in ("BADC", "DCBA") else "ABCD"
            elif _WORDS.get(p.data_type) == 1:
                order = "BADC" if order in ("BADC", "DCBA") else "ABCD"
            keyed.setdefault((p.data_type, order, p.bit is not None), []).append(i)
        groups: list[_Group] = []
        for (data_type, order, has_bit), members in keyed.items():
            pos = np.array(members, dtype=np.intp)
            starts = np.array([self.offsets[i] for i in members], dtype=np.intp)
            if self.is_bits or data_type == "string":
                # Strings of one group may differ in length: ``decode`` slices them one by one.
                index = starts
            else:
                width = np.arange(_WORDS[data_type], dtype=np.intp)
                index = starts[:, None] + width[None, :]
            bits = np.array([self.points[i].bit for i in members], dtype=np.intp) if has_bit else None
            dense = None
            if not self.is_bits and not has_bit and data_type not in ("string", "bool"):
                dense = _dense(pos, starts, data_type, order)
            groups.append(_Group(pos, index, data_type, order, bits, dense))
        return tuple(groups)


def _dense(
    pos: npt.NDArray[np.intp], starts: npt.NDArray[np.intp], data_type: str, order: str
) -> tuple[int, int, np.dtype[np.generic]] | None:
    w = _WORDS[data_type]
    steps = np.arange(pos.shape[0], dtype=np.intp)
    if not (np.array_equal(pos, pos[0] + steps) and np.array_equal(starts, starts[0] + w * steps)):
        return None
    if order == "ABCD":
        return int(starts[0]), int(pos[0]), _DTYPES[data_type]
    if order == ("BADC" if w == 1 else "DCBA"):  # the bytes of each value reversed: little-endian
        return int(starts[0]), int(pos[0]), _DTYPES[data_type].newbyteorder("<")
    return None


def plan_reads(
    points: Iterable[ModbusPoint],
    *,
    max_register_gap: int = 16,
    max_bit_gap: int = 64,
    max_registers: int = MAX_REGISTERS_PER_READ,
    max_bits: int = MAX_BITS_PER_READ,
) -> list[ReadRequest]:
    """Coalesce points into the fewest reads.

    Per (unit, register type), points sorted by address share a read while the unused gap
    between them is at most ``max_register_gap`` registers (``max_bit_gap`` bits) and the read
    stays within ``max_registers`` / ``max_bits``: reading a few unused registers is cheaper than
    a round trip, but some devices answer exception 2 for addresses they do not map, so the gap
    is kept small and configurable (0 = only touching points share a read).
    """
    if not 1 <= max_registers <= MAX_REGISTERS_PER_READ:
        raise ValueError(f"max_registers must be 1..{MAX_REGISTERS_PER_READ}")
    if not 1 <= max_bits <= MAX_BITS_PER_READ:
        raise ValueError(f"max_bits must be 1..{MAX_BITS_PER_READ}")
    if max_register_gap < 0 or max_bit_gap < 0:
        raise ValueError("gaps must be >= 0")
    by_key: dict[tuple[int, str], list[ModbusPoint]] = {}
    for p in points:
        by_key.setdefault((p.unit, p.register), []).append(p)
    requests: list[ReadRequest] = []
    for (unit, register), members in sorted(by_key.items()):
        bits = register in _BIT_TYPES
        limit = max_bits if bits else max_registers
        gap = max_bit_gap if bits else max_register_gap
        members.sort(key=lambda p: (p.address, -p.width, p.tag_id))
        chunk: list[ModbusPoint] = []
        start = end = 0
        for p in members:
            if p.width > limit:
                raise ValueError(f"tag {p.tag_id}: {p.width} registers exceed one read of {limit}")
            p_end = p.address + p.width
            if chunk and p.address - end <= gap and max(end, p_end) - start <= limit:
                chunk.append(p)
                end = max(end, p_end)
                continue
            if chunk:
                requests.append(_request(unit, register, start, end, chunk))
            chunk, start, end = [p], p.address, p_end
        if chunk:
            requests.append(_request(unit, register, start, end, chunk))
    return requests


def _request(unit: int, register: str, start: int, end: int, chunk: list[ModbusPoint]) -> ReadRequest:
    return ReadRequest(
        unit=unit,
        register=cast(RegisterType, register),
        address=start,
        count=end - start,
        points=tuple(chunk),
        offsets=tuple(p.address - start for p in chunk),
    )


# --- decoding ------------------------------------------------------------------------------


class Decoded(NamedTuple):
    tag_ids: npt.NDArray[np.int32]  # in the order of request.points
    values: npt.NDArray[np.float64]  # NaN for strings
    strings: list[tuple[int, str]]  # (tag_id, text) for string points


def _byte_permutation(words: int, order: str) -> npt.NDArray[np.intp]:
    """Wire byte position of each byte of the big-endian value."""
    n = 2 * words
    idx = np.arange(n, dtype=np.intp)
    if order == "ABCD":
        return idx
    if order == "DCBA":
        return idx[::-1].copy()
    if order == "BADC":
        return (idx ^ 1).astype(np.intp)
    # CDAB: whole words in reverse order, bytes inside each word kept.
    return (idx.reshape(words, 2)[::-1]).reshape(n).copy()


_PERMS: dict[tuple[int, str], npt.NDArray[np.intp]] = {
    (w, o): _byte_permutation(w, o) for w in (1, 2, 4) for o in _BYTE_ORDERS
}


def _words_to_values(words: npt.NDArray[np.uint16], data_type: str, byte_order: str) -> npt.NDArray[np.float64]:
    """(n, w) register words as received -> n values as float64."""
    n, w = words.shape
    raw = words.astype(">u2").view(np.uint8).reshape(n, 2 * w)  # wire byte order
    ordered = np.ascontiguousarray(raw[:, _PERMS[(w, byte_order)]])
    return ordered.view(_DTYPES[data_type]).reshape(n).astype(np.float64)


def _view(wire: npt.NDArray[np.uint8], dense: tuple[int, int, np.dtype[np.generic]], n: int) -> npt.NDArray[Any]:
    start, _, dtype = dense
    return wire[2 * start : 2 * start + n * dtype.itemsize].view(dtype)


def _decode_string(words: npt.NDArray[np.uint16], order: str) -> str:
    raw = words.astype("<u2" if order == "BADC" else ">u2").tobytes()
    return raw.split(b"\x00", 1)[0].decode("ascii", errors="replace").rstrip(" ")


def decode(request: ReadRequest, data: npt.NDArray[np.uint16] | npt.NDArray[np.bool_]) -> Decoded:
    """Decode one response: ``data`` is the uint16 registers or the bools of ``request``.

    Integers and booleans come back as float64 (the column type); 64-bit integers beyond 2**53
    lose their low bits there, which is the storage's limit, not this function's.
    """
    if data.shape[0] < request.count:
        raise ValueError(f"response has {data.shape[0]} values, the read asked for {request.count}")
    groups = request._groups
    strings: list[tuple[int, str]] = []
    if request.is_bits:
        values = np.full(len(request.points), np.nan, dtype=np.float64)
        bits = np.asarray(data, dtype=np.bool_)
        for g in groups:
            values[g.positions] = bits[g.where]
        return Decoded(request.tag_ids, values, strings)
    # Big-endian words: their memory is the payload as received (no copy for ModbusLink's).
    regs = np.asarray(data, dtype=">u2")
    wire = regs.view(np.uint8)
    n_points = len(request.points)
    if len(groups) == 1 and (d := groups[0].dense) is not None:
        # One type, back to back: the whole request is one view of the payload.
        return Decoded(request.tag_ids, _view(wire, d, n_points).astype(np.float64), strings)
    values = np.full(n_points, np.nan, dtype=np.float64)
    for g in groups:
        if g.dense is not None:
            n = g.positions.shape[0]
            values[g.dense[1] : g.dense[1] + n] = _view(wire, g.dense, n)
            continue
        if g.data_type == "string":
            for pos, start in zip(g.positions.tolist(), g.where.tolist(), strict=True):
                p = request.points[pos]
                strings.append((p.tag_id, _decode_string(regs[start : start + p.length], g.byte_order)))
            continue
        words = regs[g.where]  # (n, width)
        if g.bits is not None:
            word = words[:, 0]
            if g.byte_order == "BADC":
                word = word.byteswap()
            values[g.positions] = (word >> g.bits.astype(np.uint16)) & 1
        elif g.data_type == "bool":
            values[g.positions] = words[:, 0] != 0
        else:
            values[g.positions] = _words_to_values(words, g.data_type, g.byte_order)
    return Decoded(request.tag_ids, values, strings)
