"""esiti.esiti_csv: every esito of an instance in one CSV, each line once, led by its esito; one esito as is."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from services.runtime.esiti import esiti_csv, esiti_csv_name

LOAD = (b"record_key;field;code;severity;message\n"
        b"S1;surname;SURNAME_TOO_LONG;warning;\"il cognome; troppo lungo\"\n"
        b"S2;notes;X;error;\"due\nrighe\"\n")
TS = b"COD REGIONE;DESCRIZIONE ERRORE\r\n150;documento \"DOC-1\" rifiutato\r\n"


def _written(tmp_path: Path, esiti: dict[str, bytes]) -> bytes:
    files = []
    for name, data in esiti.items():
        (tmp_path / name).write_bytes(data)
        files.append((name, tmp_path / name))
    return b"".join(esiti_csv(files))


def _rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline=""), delimiter=";"))


def test_one_esito_is_its_file_byte_for_byte(tmp_path: Path) -> None:
    assert _written(tmp_path, {"feedback_7.csv": LOAD}) == LOAD
    assert esiti_csv_name(7, ["feedback_7.csv"]) == "feedback_7.csv"


def test_several_esiti_keep_every_field_as_it_was_even_a_semicolon_a_quote_or_a_line_break(tmp_path: Path) -> None:
    rows = _rows(_written(tmp_path, {"feedback_7.csv": LOAD, "ts_errors_7_p1.csv": TS}))
    assert rows == [["esito", "record_key", "field", "code", "severity", "message"],
                    ["feedback_7.csv", "S1", "surname", "SURNAME_TOO_LONG", "warning", "il cognome; troppo lungo"],
                    ["feedback_7.csv", "S2", "notes", "X", "error", "due\nrighe"],
                    ["esito", "COD REGIONE", "DESCRIZIONE ERRORE"],
                    ["ts_errors_7_p1.csv", "150", 'documento "DOC-1" rifiutato']]
    assert esiti_csv_name(7, ["feedback_7.csv", "ts_errors_7_p1.csv"]) == "esiti_7.csv"
