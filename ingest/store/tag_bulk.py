"""Tags in bulk: CSV and JSON files read into rows, an import planned against the stored tags,
and the CSV export that imports back unchanged. Plain Python; ``tag_import`` writes the plan.

The CSV format (one header row, then one tag a row; columns in any order, only ``name`` required):

    name, node_id, modbus_unit, modbus_register, modbus_address, modbus_data_type, byte_order,
    modbus_bit, modbus_length, data_type, unit, scaling_factor, offset, valid_min, valid_max,
    deadband, out_of_range, zscore_threshold, well, sampling_interval_ms, queue_size,
    discard_oldest, deadband_type, deadband_value

Each column is the registration field of that name (``TagCreate``). A column left out of the
file, or a cell left empty in a column that cannot be null, is "not given": a new tag takes the
default, an existing tag (modes merge and replace) keeps what it has. An empty cell in a column
that can be null sets null (``zscore_threshold`` empty: no anomaly check). JSON is a list of
objects with the same fields (or ``{"tags": [...]}``); a key left out is "not given".

Row numbers are what a plant engineer sees in a spreadsheet: the header is row 1, the first tag
row 2. In JSON, row n is the n-th object (from 1).

Every row goes through the checks of single registration (``TagCreate`` and ``check_tags``, the
session's own code) on the tag as it would be stored, so a file cannot bring in a tag the API
would refuse one at a time.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from ingest.core.errors import InvalidRegistration
from ingest.core.models import Protocol
from ingest.device.session_inputs import check_tags
from ingest.store.registration import TagCreate

__all__ = [
    "CSV_COLUMNS",
    "ImportMode",
    "ImportPlan",
    "RowError",
    "export_csv",
    "plan_import",
    "read_csv",
    "read_json",
    "stored_fields",
]

ImportMode = Literal["create", "merge", "replace"]
CSV_COLUMNS: tuple[str, ...] = (
    "name",
    "node_id",
    "modbus_unit",
    "modbus_register",
    "modbus_address",
    "modbus_data_type",
    "byte_order",
    "modbus_bit",
    "modbus_length",
    "data_type",
    "unit",
    "scaling_factor",
    "offset",
    "valid_min",
    "valid_max",
    "deadband",
    "out_of_range",
    "zscore_threshold",
    "well",
    "sampling_interval_ms",
    "queue_size",
    "discard_oldest",
    "deadband_type",
    "deadband_value",
)
assert set(CSV_COLUMNS) == set(TagCreate.model_fields), "CSV columns and TagCreate fields drifted"
# Columns whose empty cell means null; in the others it means "not given".
_NULLABLE = frozenset(
    c for c in CSV_COLUMNS if c not in ("name", "data_type", "scaling_factor", "offset", "out_of_range")
) - {"discard_oldest", "deadband_value"}
MAX_ROWS = 100_000

Row = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class RowError:
    row: int
    field: str
    error: str


@dataclass
class ImportPlan:
    """What an import would do; ``errors`` empty means it may be written."""

    rows: int = 0
    create: list[TagCreate] = field(default_factory=list)
    update: list[tuple[int, TagCreate]] = field(default_factory=list)  # (tag_id, the tag as it becomes)
    unchanged: int = 0
    delete: list[int] = field(default_factory=list)  # tag_ids
    errors: list[RowError] = field(default_factory=list)


# -- reading files ----------------------------------------------------------------------------
def read_csv(text: str) -> tuple[list[Row], list[RowError]]:
    """Rows of a CSV file (header row first); unknown or missing columns are row-1 errors."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))  # a BOM from spreadsheet exports
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], [RowError(1, "header", "the file is empty; the first row names the columns")]
    except csv.Error as e:
        return [], [RowError(1, "header", f"not CSV: {e}")]
    errors = [
        RowError(1, h or f"column {i + 1}", "unknown column") for i, h in enumerate(header) if h not in CSV_COLUMNS
    ]
    errors += [RowError(1, h, "column appears twice") for h in sorted({h for h in header if header.count(h) > 1})]
    if "name" not in header:
        errors.append(RowError(1, "name", "a name column is required"))
    if errors:
        return [], errors
    rows: list[Row] = []
    try:
        for number, cells in enumerate(reader, start=2):
            if not any(c.strip() for c in cells):
                continue  # blank lines, e.g. at the end of a file
            if len(rows) >= MAX_ROWS:
                return rows, [RowError(number, "body", f"more than {MAX_ROWS} rows")]
            if len(cells) != len(header):
                errors.append(RowError(number, "body", f"{len(cells)} cells for {len(header)} columns"))
                continue
            row: dict[str, Any] = {}
            for column, cell in zip(header, cells, strict=True):
                if cell.strip():
                    row[column] = cell
                elif column in _NULLABLE:
                    row[column] = None
            rows.append((number, row))
    except csv.Error as e:
        errors.append(RowError(reader.line_num, "body", f"not CSV: {e}"))
    return rows, errors


def read_json(data: Any) -> tuple[list[Row], list[RowError]]:
    """Rows of a JSON import: a list of tag objects, or ``{"tags": [...]}``."""
    if isinstance(data, Mapping) and set(data) == {"tags"}:
        data = data["tags"]
    if not isinstance(data, list):
        return [], [RowError(0, "body", 'expected a list of tags, or {"tags": [...]}')]
    if len(data) > MAX_ROWS:
        return [], [RowError(0, "body", f"more than {MAX_ROWS} rows")]
    rows: list[Row] = []
    errors: list[RowError] = []
    for number, item in enumerate(data, start=1):
        if isinstance(item, dict):
            rows.append((number, item))
        else:
            errors.append(RowError(number, "body", "each tag is a JSON object"))
    return rows, errors


# -- planning ---------------------------------------------------------------------------------
def stored_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored tag (``tag_mappings`` columns plus its well's name) as registration fields."""
    return {k: row[k] for k in CSV_COLUMNS}


def plan_import(
    protocol: Protocol,
    rows: Sequence[Row],
    existing: Mapping[str, Mapping[str, Any]],
    mode: ImportMode,
) -> ImportPlan:
    """Decide, row by row, what an import does to a connection's tags.

    ``existing``: the connection's live tags by name (``stored_fields`` plus ``tag_id``).
    create: every row is a new tag (a name that exists is an error); merge: a row naming an
    existing tag updates the fields it gives, keeping its ``tag_id``; other rows are new tags;
    replace: as merge, and the connection's tags the file does not name are deleted.
    """
    plan = ImportPlan(rows=len(rows))
    seen: dict[str, int] = {}
    checked: list[tuple[int, TagCreate]] = []
    for number, given in rows:
        name = given.get("name")
        key = name.strip() if isinstance(name, str) else None
        if key is not None and key in seen:
            plan.errors.append(RowError(number, "name", f"appears also in row {seen[key]}"))
            continue
        stored = existing.get(key) if key is not None else None
        if stored is not None and mode == "create":
            plan.errors.append(RowError(number, "name", f"a tag named {key!r} exists already (mode create)"))
            continue
        if key is not None:
            seen[key] = number
        merged = dict(given) if stored is None else stored_fields(stored) | dict(given)
        try:
            tag = TagCreate.model_validate(merged)
            check_tags(protocol, [tag.model_dump()], field_prefix="")
        except ValidationError as e:
            for err in e.errors():
                where = ".".join(str(x) for x in err["loc"]) or "body"
                plan.errors.append(RowError(number, where, str(err["msg"]).removeprefix("Value error, ")))
            continue
        except InvalidRegistration as e:
            plan.errors.append(RowError(number, e.field, e.message))
            continue
        checked.append((number, tag))
        if stored is None:
            plan.create.append(tag)
        elif tag.model_dump() == TagCreate.model_validate(stored_fields(stored)).model_dump():
            plan.unchanged += 1
        else:
            plan.update.append((int(stored["tag_id"]), tag))
    if mode == "replace":
        plan.delete = [int(t["tag_id"]) for name, t in existing.items() if name not in seen]
    if not plan.errors and protocol is Protocol.MODBUS:
        # What only the whole set shows (the session plans its reads over all points at once).
        kept = [stored_fields(t) for n, t in existing.items() if n not in seen and mode != "replace"]
        try:
            check_tags(protocol, kept + [t.model_dump() for _, t in checked], field_prefix="")
        except InvalidRegistration as e:
            plan.errors.append(RowError(0, e.field, e.message))
    return plan


# -- export -----------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # the shortest text that reads back as the same float
    return str(v)


def export_csv(tags: Sequence[Mapping[str, Any]]) -> str:
    """The tags as CSV in the import format: every column, a header row, ordered by tag_id."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for t in tags:
        writer.writerow([_cell(t[c]) for c in CSV_COLUMNS])
    return out.getvalue()
