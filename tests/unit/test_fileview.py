"""A file viewed as a table (`flows files N --view`, the console's file and feedback pages): Italian column
titles, the feedback's severities as the operators say them, an empty cell for a value the record does not have;
the files themselves unchanged."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from cryptography import x509

from services.cli.fileview import file_rows
from services.formatter.chunks import ChunkFormatter
from services.formatter.columnar import ProblemLog
from services.formatter.layouts import LayoutRegistry, load_layout
from services.loader.feedback import RecordProblem, feedback_chunks
from services.runtime.sanitel import make_test_certificate
from tests.unit.test_formatter_support import service, table
from tests.unit.test_xml730 import a_month_of_documents, write


def _c_file(tmp_path: Path, kind: str) -> Path:
    out = ChunkFormatter(load_layout("FLUSSO_C", "2020"), ProblemLog()).format(
        table([service("RX1", 1), service("RX1", 2, delivery_date=date(2026, 11, 4))]))
    path = tmp_path / f"{kind}.txt"
    path.write_bytes(out.records[kind].tobytes())
    return path


def test_a_flusso_c_file_is_titled_by_its_italian_labels_and_a_missing_date_is_an_empty_cell(tmp_path: Path) -> None:
    caption, columns, rows = file_rows(_c_file(tmp_path, "C2"), "C2", "FLUSSO_C", "2020", 10, 0)
    assert caption == "record C2 da 1 a 3"
    assert columns[:6] == ["Regione addebitante", "Azienda inviante", "Struttura erogatrice", "Numero ricetta",
                           "Progressivo riga", "Data erogazione"]
    by_title = [dict(zip(columns, row, strict=True)) for row in rows]
    assert [(r["Progressivo riga"], r["Data erogazione"]) for r in by_title] == [
        ("1", "2026-11-03"), ("2", "2026-11-04"), ("99", "")]  # row 99 has no date of service: nothing shown
    assert all(value != "None" for row in rows for value in row)
    assert by_title[2]["Importo totale"] == "41.32"  # values as the file holds them: a column sorts by its text


def test_c1_of_flusso_c_and_of_c_pacc_is_shown_under_their_labels(tmp_path: Path) -> None:
    c1 = _c_file(tmp_path, "C1")
    shown = []
    for flow_type, version in LayoutRegistry().available():
        for record in load_layout(flow_type, version).records:
            if record.length != 150:  # a C1 file at hand: the C1 of FLUSSO_C and of FLUSSO_C_PACC
                continue
            _, columns, rows = file_rows(c1, record.kind, flow_type, version, 10, 0)
            assert columns == [f.label for f in record.fields] and len(rows) == 3
            assert "Codice fiscale assistito" in columns and "patient_cf" not in columns
            shown.append((flow_type, record.kind))
    # the loop found both: a record it skipped (or no layout listed) must not pass for one that was shown
    assert sorted(shown) == [("FLUSSO_C", "C1"), ("FLUSSO_C_PACC", "C1")], shown


def test_the_feedback_is_shown_with_italian_titles_and_severities_and_the_file_keeps_its_contract(
        tmp_path: Path) -> None:
    problems = [
        RecordProblem("CUP-1@RX1/01", "patient_cf", "CF_CHECK_CHAR", "error",
                      "il carattere di controllo del codice fiscale RSSMRA80A01F839X dovrebbe essere W, non X"),
        RecordProblem("CUP-1@RX1/01", "patient_surname", "SURNAME_TOO_LONG", "warning",
                      "il cognome ROSSI DI SANTA MARIA CAPUA VETERE ha 33 caratteri in ASCII: sarà troncato a 30")]
    path = tmp_path / "feedback_1947.csv"
    path.write_bytes(b"".join(feedback_chunks(problems)))
    caption, columns, rows = file_rows(path, "feedback", "FLUSSO_C", "2020", 10, 0)
    assert (caption, columns) == ("record da 1 a 2", ["Record", "Campo", "Codice", "Gravità", "Messaggio"])
    assert rows == [[p.record_key, p.field, p.code, {"error": "errore", "warning": "avviso"}[p.severity], p.message]
                    for p in problems]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "record_key;field;code;severity;message"  # the published format is unchanged
    assert [line.split(";")[3] for line in lines[1:]] == ["error", "warning"]
    _, _, second = file_rows(path, "feedback", "FLUSSO_C", "2020", 10, 1)
    assert second == rows[1:]


def test_a_730_is_shown_document_by_document_under_italian_titles(tmp_path: Path) -> None:
    cert = x509.load_pem_x509_certificate(make_test_certificate()[0])
    (part,) = write(a_month_of_documents(3), cert, tmp_path).parts
    caption, columns, rows = file_rows(part.path, "730-zip", "FLUSSO_730", "2020", 10, 0)
    assert caption.endswith(": documenti da 1 a 3")
    assert columns == ["Partita IVA", "Data emissione", "Dispositivo", "Numero documento", "Data pagamento",
                       "Tipo operazione", "Codice fiscale cittadino", "Pagamento tracciato", "Tipo documento",
                       "Opposizione", "Voci di spesa"]
    first = dict(zip(columns, rows[0], strict=True))
    assert first["Data emissione"] == "2026-11-01" and first["Tipo operazione"] == "I"
    assert first["Codice fiscale cittadino"].endswith("... (cifrato)")  # as sent: encrypted, shown cut
