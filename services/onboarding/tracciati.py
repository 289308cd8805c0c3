"""Automatic assessment of the tracciati (record layouts of annexes A1, A2, B1) in XLSX or CSV.

The official templates are published only to enrolled structures, so the column sets are our
plausible reading, kept as versioned data (`contracts/data/onboarding/tracciati-<version>.toml`).
Header = row 1; every problem is named by sheet, spreadsheet row, column and A1 cell.

Rules, each a small function answering one question:
- every column of the layout is there; every required cell is filled and well formed
  (STS11, partita IVA and codice fiscale with their check characters, ISTAT, dates ...);
- the HUB and every SPOKE appear in the sheets that list structures (aggregations), or the
  requesting structure does (other branches);
- IUP_SSA_CODE is the HUB's STS11 (aggregations) or the STS11 of a structure of the entity that
  takes the service in charge (other branches) (seed 003, N.B. under annexes A1, A2, B1).

Numbers are never silently repaired: an ISTAT code typed as a number (63049) is refused with the
cell named, not padded back to 063049.

The findings' messages are Italian (the desk and the structures read them) and name the wrong value;
the rule is told by the message, the place by sheet, row, column (the note's "campo") and cell.
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from codicefiscale import codicefiscale
from openpyxl import load_workbook
from openpyxl.utils import get_column_letter
from stdnum.it import iva

from services.onboarding.findings import Finding
from services.onboarding.requirements import DATA_DIR, RequirementsError, sheet_key

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_STS11 = re.compile(r"^[0-9A-Z]{6}$")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    required: bool = True
    max_length: int | None = None
    values: tuple[str, ...] = ()
    pattern: str | None = None
    # what `pattern` takes, in words (the message a structure reads names it, never the regular expression)
    format: str | None = None
    iup_ssa_code: bool = False


@dataclass(frozen=True)
class SheetLayout:
    name: str
    columns: tuple[Column, ...]
    structure_column: str | None = None


@dataclass(frozen=True)
class Table:
    """One sheet as read: the header and the data rows, cells as text (empty = "")."""

    sheet: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class TracciatoContext:
    """What the request declares, against which the cross rules are judged."""

    structure_sts11: str
    aggregation: bool  # laboratory aggregation: HUB + SPOKEs, IUP_SSA_CODE = HUB
    spokes: tuple[str, ...] = ()
    other_structures: tuple[str, ...] = ()

    @property
    def takes_in_charge(self) -> frozenset[str]:
        if self.aggregation:
            return frozenset({self.structure_sts11})
        return frozenset({self.structure_sts11, *self.other_structures})


def load_layouts(version: str, data_dir: Path = DATA_DIR) -> dict[str, SheetLayout]:
    path = data_dir / f"tracciati-{version}.toml"
    if not path.exists():
        raise RequirementsError(f"tracciati version {version!r} not found ({path.name})")
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    layouts = {}
    for name, sheet in raw["sheets"].items():
        columns = tuple(
            Column(
                name=c["name"],
                type=c["type"],
                required=c.get("required", True),
                max_length=c.get("max_length"),
                values=tuple(c.get("values", ())),
                pattern=c.get("pattern"),
                format=c.get("format"),
                iup_ssa_code=c.get("iup_ssa_code", False),
            )
            for c in sheet["columns"]
        )
        for column in columns:
            if column.pattern is not None and not column.format:
                raise RequirementsError(
                    f"{path.name}: sheet {name}, column {column.name}: a pattern needs its `format`, the words the "
                    "structures read when a value breaks it"
                )
            if column.type not in _VALUE_RULES:
                raise RequirementsError(
                    f"{path.name}: sheet {name}, column {column.name}: unknown type {column.type!r}"
                )
        layouts[name] = SheetLayout(name=name, columns=columns, structure_column=sheet.get("structure_column"))
    return layouts


# -- reading ------------------------------------------------------------------------------------


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class UnreadableWorkbook(ValueError):
    """A file named .xlsx that is not a workbook openpyxl can read: damaged, truncated, another format."""

    def __init__(self, filename: str, cause: Exception) -> None:
        if isinstance(cause, zipfile.BadZipFile):
            problem = "non è un archivio ZIP, come ogni file XLSX: il file è danneggiato o in un altro formato"
        elif isinstance(cause, KeyError):
            said = str(cause.args[0]) if cause.args else ""  # zipfile: "There is no item named 'x' in the archive"
            named = re.search(r"named '([^']+)'", said)
            part = f" (manca la parte {named.group(1)})" if named else f" ({said.rstrip('.')})" if said else ""
            problem = f"è un archivio ZIP ma non una cartella di lavoro XLSX{part}"
        else:
            problem = str(cause) or type(cause).__name__
        super().__init__(f"{filename}: non è leggibile come cartella di lavoro XLSX: {problem}")


def _xlsx_tables(content: bytes) -> list[Table]:
    workbook = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    tables = []
    for ws in workbook.worksheets:
        rows = [tuple(_cell_text(v) for v in row) for row in ws.iter_rows(values_only=True)]
        while rows and not any(rows[-1]):
            rows.pop()  # trailing blank rows are formatting, not data
        header = rows[0] if rows else ()
        tables.append(Table(ws.title, tuple(h.strip() for h in header), tuple(rows[1:])))
    workbook.close()
    return tables


def read_tables(filename: str, content: bytes) -> list[Table]:
    """All sheets of an XLSX workbook, or the one table of a CSV (named after the file)."""
    suffix = Path(filename).suffix.lower()
    if suffix in {".xlsx", ".xlsm"}:
        try:
            return _xlsx_tables(content)
        except Exception as exc:  # openpyxl says "KeyError: '[Content_Types].xml'", "BadZipFile" ...
            raise UnreadableWorkbook(filename, exc) from exc
    if suffix in {".csv", ".txt"}:
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = content.decode("cp1252")  # Excel's "CSV (separato da ;)" on Italian Windows
        first = text.splitlines()[0] if text else ""
        delimiter = ";" if first.count(";") >= first.count(",") and ";" in first else ","
        rows = [tuple(c.strip() for c in r) for r in csv.reader(io.StringIO(text), delimiter=delimiter)]
        while rows and not any(rows[-1]):
            rows.pop()
        header = rows[0] if rows else ()
        return [Table(Path(filename).stem, tuple(header), tuple(rows[1:]))]
    raise ValueError(
        f"{filename}: un tracciato deve essere un file .xlsx o .csv, non {suffix or 'un file senza estensione'}"
    )


def pick_table(tables: Sequence[Table], layout: SheetLayout) -> Table | None:
    """The sheet named like the layout; a lone sheet (or a CSV) is taken whatever its name."""
    for table in tables:
        if sheet_key(table.sheet) == sheet_key(layout.name):
            return table
    return tables[0] if len(tables) == 1 else None


# -- value rules: each returns None when the value is good, else what is wrong --------------------


def _text(v: str, c: Column) -> str | None:
    if c.max_length and len(v) > c.max_length:
        return f"{v[:20]!r}{'...' if len(v) > 20 else ''} è lungo {len(v)} caratteri, al massimo {c.max_length}"
    return None


def _sts11(v: str, _c: Column) -> str | None:
    return None if _STS11.match(v) else f"{v!r} non è un codice STS11 (6 caratteri A-Z 0-9)"


def _vat(v: str, _c: Column) -> str | None:
    return None if v.isdigit() and len(v) == 11 and iva.is_valid(v) else f"{v!r} non è una partita IVA valida"


def _cf(v: str, _c: Column) -> str | None:
    if len(v) == 11 and v.isdigit():
        return None if iva.is_valid(v) else f"{v!r} non è un codice fiscale numerico valido"
    return None if codicefiscale.is_valid(v.upper()) else f"{v!r} non è un codice fiscale valido"


def _istat(v: str, _c: Column) -> str | None:
    if re.fullmatch(r"[0-9]{6}", v):
        return None
    hint = " (zeri iniziali persi? formattare la cella come testo)" if v.isdigit() and len(v) < 6 else ""
    return f"{v!r} non è un codice ISTAT di comune (6 cifre){hint}"


def _cap(v: str, _c: Column) -> str | None:
    return None if re.fullmatch(r"[0-9]{5}", v) else f"{v!r} non è un CAP (5 cifre)"


def _date(v: str, _c: Column) -> str | None:
    try:
        date.fromisoformat(v[:10])
    except ValueError:
        return f"{v!r} non è una data (AAAA-MM-GG)"
    return None


def _email(v: str, _c: Column) -> str | None:
    return None if _EMAIL.match(v) else f"{v!r} non è un indirizzo e-mail"


def _enum(v: str, c: Column) -> str | None:
    return None if v in c.values else f"{v!r} non è tra i valori ammessi: {', '.join(c.values)}"


def _code(v: str, c: Column) -> str | None:
    """A code against its pattern; refused in the words of its `format` (a regular expression told a structure
    nothing: "'AB-1' non rispetta il formato ^[0-9A-Z]{1,16}$")."""
    if c.pattern is None or re.fullmatch(c.pattern, v):
        return None
    return f"{v!r} non è valido: {c.format}" if c.format else f"{v!r} non rispetta il formato {c.pattern}"


_VALUE_RULES: dict[str, Callable[[str, Column], str | None]] = {
    "text": _text,
    "sts11": _sts11,
    "vat": _vat,
    "cf": _cf,
    "istat": _istat,
    "cap": _cap,
    "date": _date,
    "email": _email,
    "enum": _enum,
    "code": _code,
}


# -- assessment -------------------------------------------------------------------------------------


@dataclass
class _Located:
    table: Table
    layout: SheetLayout
    index: Mapping[str, int] = field(default_factory=dict)

    def finding(self, message: str, row: int | None = None, column: str | None = None) -> Finding:
        cell = None
        if column is not None and column in self.index and row is not None:
            cell = f"{get_column_letter(self.index[column] + 1)}{row}"
        return Finding(message, sheet=self.layout.name, row=row, column=column, cell=cell)

    def values(self, column: str) -> Iterable[tuple[int, str]]:
        i = self.index[column]
        for n, row in enumerate(self.table.rows, start=2):
            if any(row):
                yield n, (row[i] if i < len(row) else "")


def assess_table(table: Table, layout: SheetLayout, context: TracciatoContext) -> list[Finding]:
    """Every problem of one sheet; an empty list means compliant."""
    header = {name.upper(): i for i, name in enumerate(table.header) if name}
    located = _Located(table, layout, {c.name: header[c.name] for c in layout.columns if c.name in header})
    missing = [c.name for c in layout.columns if c.name not in header]
    findings = [
        located.finding(f"la colonna obbligatoria {name} manca nell'intestazione", row=1, column=name)
        for name in missing
    ]
    if not any(any(r) for r in table.rows):
        findings.append(located.finding("il foglio non contiene righe di dati"))
        return findings
    for column in layout.columns:
        if column.name in missing:
            continue
        for n, value in located.values(column.name):
            if not value:
                if column.required:
                    findings.append(located.finding("campo obbligatorio vuoto", n, column.name))
                continue
            broken = _VALUE_RULES[column.type](value, column)
            if broken:
                findings.append(located.finding(broken, n, column.name))
    findings += structures_are_all_listed(located, context)
    findings += iup_ssa_code_is_the_structure_taking_in_charge(located, context)
    return findings


def structures_are_all_listed(located: _Located, context: TracciatoContext) -> list[Finding]:
    """HUB and every SPOKE (aggregations), or the requesting structure, have a row (seed 003 N.B.)."""
    column = located.layout.structure_column
    if column is None or column not in located.index:
        return []
    listed = {v for _, v in located.values(column)}
    expected = [("l'HUB" if context.aggregation else "la struttura", context.structure_sts11)]
    expected += [("lo SPOKE", s) for s in context.spokes]
    return [
        located.finding(f"{role} {sts11} manca nel tracciato", column=column)
        for role, sts11 in expected
        if sts11 not in listed
    ]


def iup_ssa_code_is_the_structure_taking_in_charge(located: _Located, context: TracciatoContext) -> list[Finding]:
    """IUP_SSA_CODE = HUB STS11 (aggregations) or a structure of the entity (other branches): seed 003 N.B."""
    findings = []
    allowed = context.takes_in_charge
    for column in located.layout.columns:
        if not column.iup_ssa_code or column.name not in located.index:
            continue
        for n, value in located.values(column.name):
            if not value or value in allowed:
                continue
            if context.aggregation:
                why = f"{value} non è l'STS11 dell'HUB {context.structure_sts11}"
            else:
                why = (f"{value} non è l'STS11 di una struttura dell'Ente che prende in carico la prestazione "
                       f"({', '.join(sorted(allowed))})")
            findings.append(located.finding(why, n, column.name))
    return findings
