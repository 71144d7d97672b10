"""Unit conversion for pushed values, with pint.

A pushed point's unit is converted to its tag's unit. Every conversion between the units an
operator uses is affine (``y = a * x + b``: degF -> degC has an offset), so the pair's two
coefficients are computed once with pint and cached; a batch is then converted with one numpy
expression per unit pair instead of one pint call per value.

Oilfield names that pint reads otherwise are mapped first: ``bbl`` is the 42-gallon oil barrel
(pint's ``bbl`` is the 31.5-gallon US barrel), ``klbs`` a force (hook load, kip), ``m3`` is m**3.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pint

from ingest.core.errors import IngestError


class UnitError(IngestError, ValueError):
    """A unit pint does not know, or two units of different dimensions; ``reason`` is the code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# Whole-token rewrites applied before pint parses a unit string.
_ALIASES = {
    "bbl": "oil_barrel",
    "bbls": "oil_barrel",
    "klbs": "kip",
    "klb": "kip",
    "klbf": "kip",
    "lbs": "lbf",
    "m3": "m**3",
    "ft3": "ft**3",
    "scf": "ft**3",
    "d": "day",
}
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNIT_TEXT = re.compile(r"^[A-Za-z0-9_ */^.()\-]{1,32}$")


@lru_cache(maxsize=1)
def _registry() -> pint.UnitRegistry:  # type: ignore[type-arg]
    # Built on first use: loading pint's definitions takes a moment a CLI start need not pay.
    return pint.UnitRegistry(autoconvert_offset_to_baseunit=True, cache_folder=None)


def _rewrite(unit: str) -> str:
    return _TOKEN.sub(lambda m: _ALIASES.get(m.group(0), m.group(0)), unit.strip())


@lru_cache(maxsize=1024)
def parse_unit(unit: str) -> Any:
    """The pint unit of ``unit``; UnitError('unknown_unit') when pint cannot read it."""
    if not _UNIT_TEXT.match(unit):
        raise UnitError("unknown_unit", f"unit {unit!r} is not a unit expression")
    try:
        q = _registry().Quantity(1.0, _rewrite(unit))
    except Exception as e:  # pint raises several types (UndefinedUnitError, DefinitionSyntaxError...)
        raise UnitError("unknown_unit", f"unknown unit {unit!r}") from e
    if not isinstance(q.magnitude, float | int) or q.magnitude != 1.0:
        raise UnitError("unknown_unit", f"unit {unit!r} has a number in it")
    return q.units


@lru_cache(maxsize=4096)
def coefficients(from_unit: str, to_unit: str) -> tuple[float, float]:
    """``(a, b)`` with ``value_in_to = a * value_in_from + b``."""
    src, dst = parse_unit(from_unit), parse_unit(to_unit)
    if src == dst:
        return 1.0, 0.0
    try:
        y0 = float(_registry().Quantity(0.0, src).to(dst).magnitude)
        y1 = float(_registry().Quantity(1.0, src).to(dst).magnitude)
    except pint.DimensionalityError as e:
        raise UnitError("incompatible_unit", f"cannot convert {from_unit!r} to the tag's unit {to_unit!r}") from e
    return y1 - y0, y0


def convert(values: npt.NDArray[np.float64], from_unit: str, to_unit: str) -> npt.NDArray[np.float64]:
    """Values in ``from_unit`` expressed in ``to_unit``."""
    a, b = coefficients(from_unit, to_unit)
    if a == 1.0 and b == 0.0:
        return values
    out: npt.NDArray[np.float64] = values * a + b
    return out


def check_unit(unit: str) -> None:
    """Raise UnitError when pint cannot read ``unit``."""
    parse_unit(unit)
