"""`flows files <n> --view NAME`: a file as a table of named fields (the seed's detail view).

Fixed-width files are read through their layout (the same data the formatter wrote them with);
a 730 zip is shown document by document (the CFs stay encrypted, as sent); CSV feedback as is.
"""

from __future__ import annotations

import csv
import io
import itertools
import zipfile
from pathlib import Path

from lxml import etree

from services.cli.common import UserError, console, table
from services.formatter.fixedwidth import iter_table
from services.formatter.layouts import load_layout

_730_FIELDS = ("pIva", "dataEmissione", "dispositivo", "numDocumento", "dataPagamento", "flagOperazione",
               "cfCittadino", "pagamentoTracciato", "tipoDocumento", "flagOpposizione")


def render_file(path: Path, kind: str, flow_type: str, version: str, limit: int, offset: int) -> None:
    title, columns, rows = file_rows(path, kind, flow_type, version, limit, offset)
    console.print(table(title, columns, rows))


def file_rows(path: Path, kind: str, flow_type: str, version: str, limit: int,
              offset: int) -> tuple[str, list[str], list[list[str]]]:
    """Records offset..offset+limit of a file as (title, columns, rows), as the CLI and the console show it."""
    if kind == "730-zip":
        return _rows_730(path, limit, offset)
    if kind in ("feedback", "ts-errors"):
        return _rows_csv(path, limit, offset)
    if kind == "ts-receipt":
        raise UserError(f"{path.name} is the PDF receipt of Sistema TS, not a table: `flows export` writes it out")
    layout = load_layout(flow_type, version)
    if kind not in layout.kinds:
        raise UserError(f"layout {flow_type} {version} has no record kind {kind!r}")
    with path.open("rb") as lines:
        records = list(itertools.islice(iter_table(layout, kind, lines), offset, offset + limit))
    if not records:
        raise UserError(f"no records from {offset}")
    columns = list(records[0])
    return (f"{kind} records {offset + 1}..{offset + len(records)}", columns,
            [[str(row[c]) for c in columns] for row in records])


def _rows_csv(path: Path, limit: int, offset: int) -> tuple[str, list[str], list[list[str]]]:
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8")), delimiter=";")
    header = next(reader)
    rows = list(itertools.islice(reader, offset, offset + limit))
    return f"records {offset + 1}..{offset + len(rows)}", header, rows


def _rows_730(path: Path, limit: int, offset: int) -> tuple[str, list[str], list[list[str]]]:
    with zipfile.ZipFile(path) as archive:
        (entry,) = archive.namelist()
        with archive.open(entry) as xml:
            rows = []
            for _, doc in itertools.islice(etree.iterparse(xml, tag="documentoSpesa"), offset, offset + limit):
                values = {el.tag: (el.text or "") for el in doc.iter() if el.tag in _730_FIELDS}
                if values.get("cfCittadino"):
                    values["cfCittadino"] = values["cfCittadino"][:12] + "... (encrypted)"
                items = [f"{v.findtext('tipoSpesa')} {v.findtext('importo')}" for v in doc.iter("voceSpesa")]
                rows.append([*(values.get(f, "") for f in _730_FIELDS), ", ".join(items)])
                doc.clear()
    return f"{entry}: documents {offset + 1}..{offset + len(rows)}", [*_730_FIELDS, "voceSpesa"], rows
