"""Record layouts as versioned data: `contracts/layouts/<FLOW_TYPE>/<version>.toml`.

A layout says, for one (flow type, version), which record kinds it produces (one file each, e.g.
C1 and C2), and for every field its position, length, type and where its value comes from. The
engine (`columnar.py`) is generic: a new layout year is a new TOML file, never new code.

Where a value comes from is a small closed vocabulary, exactly one per field:

- `column = "patient_surname"`  the snapshot column of that name (optionally through `map`);
- `constant = "1"`              the same text on every record;
- `filler = true`               spaces;
- `derive = "<name>"`           one of DERIVATIONS (computed by the engine, documented there).

`label` is the field's Italian name (the specifications' own, e.g. "Regione addebitante"): what the operators
read as the column title of a file viewed as a table (services/cli/fileview.py). `name` stays the identifier;
a field without a label is titled by its name (`FieldSpec.title`).

`rows` says on which records of a group the value is written: "all" (default), "detail" (rows
01..98 only) or "closing" (row 99 only); elsewhere the field is blank (AN, DATE) or zero (N,
AMOUNT). A layout without `[grouping]` has no closing rows (one record per source row).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

from contracts import data_file

FieldType = Literal["AN", "N", "DATE", "AMOUNT"]
RowScope = Literal["all", "detail", "closing"]

FIELD_TYPES: frozenset[str] = frozenset({"AN", "N", "DATE", "AMOUNT"})
ROW_SCOPES: frozenset[str] = frozenset({"all", "detail", "closing"})

# name -> (result type, source columns it reads). The meaning of each is in columnar.derive().
DERIVATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "row_number": ("N", ("row_number",)),
    "row_total": ("AMOUNT", ("quantity", "tariff", "ticket")),
    "closing_date": ("DATE", ("delivery_date",)),
    "ticket_position": ("AN", ("exemption_code",)),
    "waiting_days": ("N", ("booking_date", "appointment_date")),
}

DEFAULT_ROOT = data_file("layouts")


class LayoutError(ValueError):
    """A layout file that cannot be used; the message names the file, record kind and field."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    start: int  # 1-based, as in the specifications
    length: int
    type: FieldType
    column: str | None = None
    constant: str | None = None
    derive: str | None = None
    filler: bool = False
    map: dict[str, str] | None = None
    allowed: tuple[str, ...] | None = None  # the only values accepted (after case folding)
    rows: RowScope = "all"
    required: bool = False
    truncate: bool = False  # only names: a longer value is cut and reported as a warning
    case: Literal["upper", "keep"] = "upper"
    notes: str = ""
    label: str | None = None  # the Italian name the operators read (column title); None: the name

    @property
    def title(self) -> str:
        """The column title of the field in a table view: its label, or its name when it has none."""
        return self.label if self.label is not None else self.name

    @property
    def end(self) -> int:
        return self.start + self.length - 1

    @property
    def offset(self) -> int:
        return self.start - 1


@dataclass(frozen=True)
class RecordKind:
    kind: str
    length: int
    fields: tuple[FieldSpec, ...]
    description: str = ""

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"record {self.kind} has no field {name!r}")


@dataclass(frozen=True)
class Grouping:
    """Groups (prescriptions) closed by a derived row, e.g. row 99 of Flusso C."""

    by: str
    row_number: str = "row_number"
    closing_row: int = 99
    max_rows: int = 98
    sum: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    flow_type: str
    version: str
    records: tuple[RecordKind, ...]
    source: str = "snapshot_service"
    order_by: tuple[str, ...] = ()
    record_id: str | None = None
    grouping: Grouping | None = None
    description: str = ""
    path: Path | None = field(default=None, compare=False)

    def record(self, kind: str) -> RecordKind:
        for r in self.records:
            if r.kind == kind:
                return r
        raise KeyError(f"layout {self.flow_type} {self.version} has no record kind {kind!r}")

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(r.kind for r in self.records)

    def columns(self) -> tuple[str, ...]:
        """Every source column the layout reads, in a stable order."""
        wanted: list[str] = []
        if self.grouping:
            wanted += [self.grouping.by, self.grouping.row_number, *self.grouping.sum]
        wanted += list(self.order_by)
        if self.record_id:
            wanted.append(self.record_id)
        for rec in self.records:
            for f in rec.fields:
                if f.column:
                    wanted.append(f.column)
                if f.derive:
                    wanted += DERIVATIONS[f.derive][1]
        return tuple(dict.fromkeys(wanted))


# ---------------------------------------------------------------------------------------------
# loading and validation


def _field_from(where: str, raw: dict[str, Any]) -> FieldSpec:
    known = set(FieldSpec.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise LayoutError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        values = dict(raw)
        if "allowed" in values:
            values["allowed"] = tuple(values["allowed"])
        return FieldSpec(**values)
    except TypeError as exc:
        raise LayoutError(f"{where}: {exc}") from exc


def validate_record(where: str, rec: RecordKind, grouped: bool) -> None:
    """Positions contiguous from 1, lengths summing to the record length, one source per field."""
    position = 1
    names: set[str] = set()
    titles: set[str] = set()
    for f in rec.fields:
        at = f"{where} record {rec.kind} field {f.name!r}"
        if f.name in names:
            raise LayoutError(f"{at}: duplicate field name")
        names.add(f.name)
        if f.label is not None and (not isinstance(f.label, str) or not f.label.strip()):
            raise LayoutError(f"{at}: label {f.label!r} must be a non-empty text")
        if f.title in titles:
            raise LayoutError(f"{at}: title {f.title!r} repeats another field's (a table view's columns must differ)")
        titles.add(f.title)
        if f.type not in FIELD_TYPES:
            raise LayoutError(f"{at}: type {f.type!r} is not one of {sorted(FIELD_TYPES)}")
        if f.length < 1:
            raise LayoutError(f"{at}: length {f.length} must be at least 1")
        if f.start != position:
            raise LayoutError(f"{at}: starts at {f.start}, expected {position} (positions must be contiguous)")
        position += f.length
        sources = [f.column is not None, f.constant is not None, f.derive is not None, f.filler]
        if sum(sources) != 1:
            raise LayoutError(f"{at}: needs exactly one of column, constant, derive, filler")
        if f.rows not in ROW_SCOPES:
            raise LayoutError(f"{at}: rows {f.rows!r} is not one of {sorted(ROW_SCOPES)}")
        if f.rows != "all" and not grouped:
            raise LayoutError(f"{at}: rows = {f.rows!r} needs a [grouping] section")
        if f.type == "DATE" and f.length != 8:
            raise LayoutError(f"{at}: DATE fields are 8 characters (DDMMYYYY)")
        if f.type == "AMOUNT" and f.length < 4:
            raise LayoutError(f"{at}: AMOUNT fields need at least 4 characters (n,dd)")
        if f.constant is not None and len(f.constant) > f.length:
            raise LayoutError(f"{at}: constant {f.constant!r} is longer than {f.length}")
        if f.map is not None:
            too_long = [v for v in f.map.values() if len(v) > f.length]
            if too_long or f.column is None:
                raise LayoutError(f"{at}: map needs a column and values of at most {f.length} chars")
        if f.derive is not None:
            if f.derive not in DERIVATIONS:
                raise LayoutError(f"{at}: derive {f.derive!r} is not one of {sorted(DERIVATIONS)}")
            if DERIVATIONS[f.derive][0] != f.type and not (f.type == "AN" and DERIVATIONS[f.derive][0] == "N"):
                raise LayoutError(f"{at}: derive {f.derive!r} gives {DERIVATIONS[f.derive][0]}, not {f.type}")
            if f.derive in ("closing_date",) and not grouped:
                raise LayoutError(f"{at}: derive {f.derive!r} needs a [grouping] section")
        if f.truncate and f.type != "AN":
            raise LayoutError(f"{at}: only AN fields may be truncated")
    if position - 1 != rec.length:
        raise LayoutError(f"{where} record {rec.kind}: fields cover {position - 1} characters, "
                          f"the record length is {rec.length}")


def parse_layout(raw: dict[str, Any], where: str = "<layout>", path: Path | None = None) -> Layout:
    try:
        records_raw = raw["records"]
        flow_type, version = str(raw["flow_type"]), str(raw["version"])
    except KeyError as exc:
        raise LayoutError(f"{where}: missing key {exc}") from exc
    grouping = None
    if "grouping" in raw:
        g = dict(raw["grouping"])
        g["sum"] = tuple(g.get("sum", ()))
        try:
            grouping = Grouping(**g)
        except TypeError as exc:
            raise LayoutError(f"{where} [grouping]: {exc}") from exc
    records = []
    for i, rec in enumerate(records_raw):
        kind = str(rec.get("kind", f"#{i}"))
        fields = tuple(_field_from(f"{where} record {kind} field #{j + 1}", f) for j, f in enumerate(rec["fields"]))
        record = RecordKind(kind=kind, length=int(rec["length"]), fields=fields,
                            description=str(rec.get("description", "")))
        validate_record(where, record, grouped=grouping is not None)
        records.append(record)
    if not records:
        raise LayoutError(f"{where}: no records")
    return Layout(flow_type=flow_type, version=version, records=tuple(records),
                  source=str(raw.get("source", "snapshot_service")), order_by=tuple(raw.get("order_by", ())),
                  record_id=raw.get("record_id"), grouping=grouping,
                  description=str(raw.get("description", "")), path=path)


def load_layout_file(path: Path) -> Layout:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise LayoutError(f"{path}: not valid TOML: {exc}") from exc
    layout = parse_layout(raw, where=str(path), path=path)
    if path.parent.name != layout.flow_type or path.stem != layout.version:
        raise LayoutError(f"{path}: declares {layout.flow_type} {layout.version}; "
                          f"the file must be <flow_type>/<version>.toml")
    return layout


class LayoutRegistry:
    """The layouts of a folder, keyed by (flow type, version); files are read on first use."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)
        self._cache: dict[tuple[str, str], Layout] = {}

    def get(self, flow_type: str, version: str) -> Layout:
        key = (flow_type, version)
        if key not in self._cache:
            path = self.root / flow_type / f"{version}.toml"
            if not path.is_file():
                raise LayoutError(f"no layout for {flow_type} version {version} (looked for {path})")
            self._cache[key] = load_layout_file(path)
        return self._cache[key]

    def available(self) -> list[tuple[str, str]]:
        return sorted((p.parent.name, p.stem) for p in self.root.glob("*/*.toml"))


# A flow type without a layout of this folder when it has no version of its own.
DEFAULT_VERSION = "2020"


def versions_without_layout(flow_type: str) -> tuple[str, ...]:
    """The versions of a flow type whose file is not a layout of this folder: the 730 is XML
    (services/formatter/xml730.py), and its versions are its XSD's (contracts.ts730.SCHEMA_FILES: a new year is a new
    file and one line there). Read at each call, as the layouts' folder is."""
    from contracts import ts730

    return tuple(sorted(ts730.SCHEMA_FILES)) if flow_type == "FLUSSO_730" else ()


def version_in_force(flow_type: str, period_start: date, versions: Iterable[str] | None = None) -> str:
    """The layout version a load of a period starting on `period_start` takes: a version is a year, in force from its
    year on, so the latest one not after the period's year; the earliest when all are later. `versions`: the flow's
    (default: those of the layouts folder); a flow without layouts takes its own (versions_without_layout: the 730's
    XSD years), DEFAULT_VERSION when it has none. A console load took "2020" whatever the period, so a new year's
    layout (or 730 XSD) would never have been used by it."""
    if versions is None:
        versions = [v for f, v in LayoutRegistry().available() if f == flow_type]
    years = sorted(int(v) for v in versions if v.isdigit())
    if not years:
        years = sorted(int(v) for v in versions_without_layout(flow_type) if v.isdigit())
    if not years:
        return DEFAULT_VERSION
    return str(max((y for y in years if y <= period_start.year), default=years[0]))


def load_layout(flow_type: str, version: str, root: Path | None = None) -> Layout:
    return LayoutRegistry(root or DEFAULT_ROOT).get(flow_type, version)
