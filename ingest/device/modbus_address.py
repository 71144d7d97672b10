"""The Modbus address format stored in ``tag_mappings``, and how a stored tag becomes one.

``<register>:<unit>:<address>:<data_type>:<byte_order>[:bit=<n> | :len=<n>]``::

    holding:1:100:float32:CDAB        input:3:0:int16:ABCD
    holding:1:7:bool:ABCD:bit=3       holding:1:200:string:ABCD:len=8      coil:1:12:bool:ABCD

A tag's ``modbus_*`` columns become this text (``stored_address``), the session parses it back
into a ``ModbusPoint`` (``parse_address``); registration runs the same two steps on a payload,
so what it accepts is what a session can read. Byte orders and address numbering: see
``ingest/device/modbus_decode.py``.
"""

from __future__ import annotations

from typing import cast, get_args

from ingest.core.errors import InvalidDeviceSetting
from ingest.device.modbus_decode import ByteOrder, DataType, ModbusPoint, RegisterType

__all__ = ["format_address", "parse_address", "stored_address"]

_REGISTER_TYPES: tuple[str, ...] = get_args(RegisterType)
_DATA_TYPES: tuple[str, ...] = get_args(DataType)
_BYTE_ORDERS: tuple[str, ...] = get_args(ByteOrder)


def stored_address(
    register: str | None,
    unit: int | None,
    address: int | None,
    data_type: str | None,
    byte_order: str | None,
    bit: int | None = None,
    length: int | None = None,
) -> str | None:
    """A tag's ``modbus_*`` columns as an address; None without a register type and address.

    Unset columns take the defaults registration documents: unit 1, uint16, ABCD.
    """
    if register is None or address is None:
        return None
    spec = f"{register}:{1 if unit is None else unit}:{address}:{data_type or 'uint16'}:{byte_order or 'ABCD'}"
    # Rows from before registration refused both: the bit wins, as it always did.
    if bit is not None:
        return f"{spec}:bit={bit}"
    return spec if length is None else f"{spec}:len={length}"


def parse_address(spec: str, *, tag_id: int = 0) -> ModbusPoint:
    """``"holding:1:100:float32:CDAB"`` (plus ``:bit=n`` or ``:len=n``) -> ModbusPoint."""
    where = f"modbus address {spec!r}"
    parts = [p.strip() for p in spec.strip().split(":")]
    if len(parts) not in (5, 6):
        raise InvalidDeviceSetting(
            "address",
            "expected <register>:<unit>:<address>:<data_type>:<byte_order>[:bit=<n>|:len=<n>]",
            where,
        )
    register, unit_s, address_s, data_type, byte_order = parts[:5]
    register, data_type, byte_order = register.lower(), data_type.lower(), byte_order.upper()
    if register not in _REGISTER_TYPES:
        raise InvalidDeviceSetting("register", f"register must be one of {_REGISTER_TYPES}", where)
    if data_type not in _DATA_TYPES:
        raise InvalidDeviceSetting("data_type", f"data type must be one of {_DATA_TYPES}", where)
    if byte_order not in _BYTE_ORDERS:
        raise InvalidDeviceSetting("byte_order", f"byte order must be one of {_BYTE_ORDERS}", where)
    numbers: dict[str, int] = {}
    for name, text in (("unit", unit_s), ("address", address_s)):
        try:
            numbers[name] = int(text)
        except ValueError:
            raise InvalidDeviceSetting(name, f"{name} must be an integer", where) from None
    unit, address = numbers["unit"], numbers["address"]
    bit: int | None = None
    length = 1
    if len(parts) == 6:
        key, _, val = parts[5].partition("=")
        if key.strip().lower() not in ("bit", "len") or not val.strip().isdigit():
            raise InvalidDeviceSetting("address", "suffix must be bit=<n> or len=<n>", where)
        if key.strip().lower() == "bit":
            bit = int(val)
        else:
            length = int(val)
    try:
        return ModbusPoint(
            tag_id=tag_id,
            unit=unit,
            register=cast(RegisterType, register),
            address=address,
            data_type=cast(DataType, data_type),
            byte_order=cast(ByteOrder, byte_order),
            bit=bit,
            length=length,
        )
    except InvalidDeviceSetting as exc:
        raise InvalidDeviceSetting(exc.field, exc.reason, f"{where}: tag {tag_id}") from None


def format_address(point: ModbusPoint) -> str:
    """The inverse of ``parse_address``."""
    spec = f"{point.register}:{point.unit}:{point.address}:{point.data_type}:{point.byte_order}"
    if point.bit is not None:
        spec += f":bit={point.bit}"
    elif point.data_type == "string":
        spec += f":len={point.length}"
    return spec
