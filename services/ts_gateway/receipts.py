"""DettaglioErrori: the zip of CSV files with one row per document error or warning.

Columns (ricevute-spec-2015 3.5): CF PROPRIETARIO, COD REGIONE, COD ASL, COD SSA, PARTITA IVA,
DATA EMISSIONE, DOCUMENTO FISCALE DISPOSITIVO, DOCUMENTO FISCALE NUMERO, TIPO SPESA, CODICE ERRORE,
DESCRIZIONE ERRORE. The spec does not name the separator; TS files use ';' and we accept ',' too.

The CF PROPRIETARIO column is dropped on parsing: it is often the TS user itself, and the parsed
rows become the instance's feedback file, which must not carry credentials.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass

COLUMNS = (
    "CF PROPRIETARIO",
    "COD REGIONE",
    "COD ASL",
    "COD SSA",
    "PARTITA IVA",
    "DATA EMISSIONE",
    "DOCUMENTO FISCALE DISPOSITIVO",
    "DOCUMENTO FISCALE NUMERO",
    "TIPO SPESA",
    "CODICE ERRORE",
    "DESCRIZIONE ERRORE",
)


class ErrorReportFormatError(ValueError):
    """The DettaglioErrori archive is not what the spec describes; names the file and row."""


@dataclass(frozen=True)
class DocumentError:
    """One error or warning TS reports for one expense document (documentoSpesa)."""

    codice_regione: str
    codice_asl: str
    codice_ssa: str
    partita_iva: str
    data_emissione: str
    dispositivo: str
    numero_documento: str
    tipo_spesa: str
    codice_errore: str
    descrizione_errore: str


def _normalise(header: str) -> str:
    return " ".join(header.strip().upper().replace("_", " ").split())


def parse_error_report(archive: bytes) -> list[DocumentError]:
    try:
        zipped = zipfile.ZipFile(io.BytesIO(archive))
    except zipfile.BadZipFile as exc:
        raise ErrorReportFormatError("DettaglioErrori: the csv element is not a zip archive") from exc
    rows: list[DocumentError] = []
    with zipped:
        names = [name for name in zipped.namelist() if name.lower().endswith(".csv")]
        if not names:
            raise ErrorReportFormatError("DettaglioErrori: the zip holds no .csv file")
        for name in names:
            raw = zipped.read(name)
            # TS documents are Italian: accented descriptions may come as latin-1.
            text = raw.decode("utf-8-sig") if _is_utf8(raw) else raw.decode("latin-1")
            rows.extend(_parse_csv(name, text))
    return rows


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_csv(name: str, text: str) -> list[DocumentError]:
    first_line = text.splitlines()[0] if text else ""
    delimiter = ";" if first_line.count(";") >= first_line.count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return []
    index = {_normalise(column): position for position, column in enumerate(header)}
    missing = [column for column in COLUMNS[1:] if column not in index]
    if missing:
        raise ErrorReportFormatError(f"DettaglioErrori {name}: header lacks {', '.join(missing)}")
    rows = []
    for line_number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise ErrorReportFormatError(
                f"DettaglioErrori {name} row {line_number}: {len(row)} fields, header has {len(header)}"
            )

        def cell(column: str, row: list[str] = row) -> str:
            return row[index[column]].strip()

        rows.append(
            DocumentError(
                codice_regione=cell("COD REGIONE"),
                codice_asl=cell("COD ASL"),
                codice_ssa=cell("COD SSA"),
                partita_iva=cell("PARTITA IVA"),
                data_emissione=cell("DATA EMISSIONE"),
                dispositivo=cell("DOCUMENTO FISCALE DISPOSITIVO"),
                numero_documento=cell("DOCUMENTO FISCALE NUMERO"),
                tipo_spesa=cell("TIPO SPESA"),
                codice_errore=cell("CODICE ERRORE"),
                descrizione_errore=cell("DESCRIZIONE ERRORE"),
            )
        )
    return rows


def _cells(error: DocumentError) -> tuple[str, ...]:
    """An error's cells in COLUMNS order, after the CF proprietario."""
    return (error.codice_regione, error.codice_asl, error.codice_ssa, error.partita_iva, error.data_emissione,
            error.dispositivo, error.numero_documento, error.tipo_spesa, error.codice_errore, error.descrizione_errore)


def build_error_report(
    cf_proprietario: str, errors: list[DocumentError], csv_name: str = "errori.csv"
) -> bytes:
    """The TS side (simulator): a zip with one ';'-separated CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
    writer.writerow(COLUMNS)
    writer.writerows((cf_proprietario, *_cells(error)) for error in errors)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr(csv_name, buffer.getvalue().encode("utf-8"))
    return archive.getvalue()


def feedback_csv(errors: list[DocumentError]) -> bytes:
    """The per-document errors as the instance's feedback file (no CF proprietario column)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
    writer.writerow(COLUMNS[1:])
    writer.writerows(_cells(error) for error in errors)
    return buffer.getvalue().encode("utf-8")
