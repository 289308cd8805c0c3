"""`flows files <n> --view NAME`: a file as a table of named fields (the seed's detail view).

Fixed-width files are read through their layout (the same data the formatter wrote them with);
a 730 zip is shown document by document (the CFs stay encrypted, as sent); CSV feedback as is.

What the table shows is for the operators, so it is Italian (the CLI and the console's file page both show
`file_rows`): a fixed-width file's columns are titled by its layout's labels (contracts/layouts, e.g.
"Regione addebitante"), a 730's by the Italian names of its elements, a load's feedback by Record, Campo,
Codice, Gravità, Messaggio with the severity as errore / avviso. Only the view changes: the files keep their
bytes (the feedback file its `record_key;field;code;severity;message` header and error / warning). A value
the record does not have is an empty cell; the others are shown as the file holds them (ISO dates, amounts
with a decimal point), so a column still sorts by its text.
"""

from __future__ import annotations

import csv
import io
import itertools
import zipfile
from pathlib import Path
from typing import Any

from lxml import etree

from services.cli.common import UserError
from services.formatter.fixedwidth import iter_table
from services.formatter.layouts import load_layout

# the documentoSpesa elements shown, with their column titles
_730_COLUMNS = {"pIva": "Partita IVA", "dataEmissione": "Data emissione", "dispositivo": "Dispositivo",
                "numDocumento": "Numero documento", "dataPagamento": "Data pagamento",
                "flagOperazione": "Tipo operazione", "cfCittadino": "Codice fiscale cittadino",
                "pagamentoTracciato": "Pagamento tracciato", "tipoDocumento": "Tipo documento",
                "flagOpposizione": "Opposizione"}
_730_ITEMS = "Voci di spesa"
# a load's feedback file (contracts.feedback.FeedbackLine): its columns' titles, and its severities as shown
FEEDBACK_TITLES = {"record_key": "Record", "field": "Campo", "code": "Codice", "severity": "Gravità",
                   "message": "Messaggio"}
SEVERITY_SHOWN = {"error": "errore", "warning": "avviso"}


def cell(value: Any) -> str:
    """A value as a table shows it: nothing for a value the record does not have, never 'None'."""
    return "" if value is None else str(value)


def file_rows(path: Path, kind: str, flow_type: str, version: str, limit: int,
              offset: int) -> tuple[str, list[str], list[list[str]]]:
    """Records offset..offset+limit of a file as (title, columns, rows), as the CLI and the console show it."""
    if kind == "730-zip":
        return _rows_730(path, limit, offset)
    if kind == "feedback":
        return _rows_feedback(path, limit, offset)
    if kind == "ts-errors":  # Sistema TS's own columns (COD REGIONE, ... DESCRIZIONE ERRORE): already Italian
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
    fields = layout.record(kind).fields
    return (f"record {kind} da {offset + 1} a {offset + len(records)}", [f.title for f in fields],
            [[cell(row[f.name]) for f in fields] for row in records])


def _read_csv(path: Path, limit: int, offset: int) -> tuple[list[str], list[list[str]]]:
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8")), delimiter=";")
    header = next(reader)
    return header, list(itertools.islice(reader, offset, offset + limit))


def _rows_csv(path: Path, limit: int, offset: int) -> tuple[str, list[str], list[list[str]]]:
    header, rows = _read_csv(path, limit, offset)
    return f"record da {offset + 1} a {offset + len(rows)}", header, rows


def _rows_feedback(path: Path, limit: int, offset: int) -> tuple[str, list[str], list[list[str]]]:
    header, rows = _read_csv(path, limit, offset)
    if "severity" in header:
        at = header.index("severity")
        rows = [[*r[:at], SEVERITY_SHOWN.get(r[at], r[at]), *r[at + 1:]] if len(r) > at else r for r in rows]
    return (f"record da {offset + 1} a {offset + len(rows)}", [FEEDBACK_TITLES.get(c, c) for c in header], rows)


def _rows_730(path: Path, limit: int, offset: int) -> tuple[str, list[str], list[list[str]]]:
    with zipfile.ZipFile(path) as archive:
        (entry,) = archive.namelist()
        with archive.open(entry) as xml:
            rows = []
            for _, doc in itertools.islice(etree.iterparse(xml, tag="documentoSpesa"), offset, offset + limit):
                values = {el.tag: (el.text or "") for el in doc.iter() if el.tag in _730_COLUMNS}
                if values.get("cfCittadino"):
                    values["cfCittadino"] = values["cfCittadino"][:12] + "... (cifrato)"
                items = [f"{v.findtext('tipoSpesa')} {v.findtext('importo')}" for v in doc.iter("voceSpesa")]
                rows.append([*(values.get(f, "") for f in _730_COLUMNS), ", ".join(items)])
                doc.clear()
    return (f"{entry}: documenti da {offset + 1} a {offset + len(rows)}", [*_730_COLUMNS.values(), _730_ITEMS],
            rows)
