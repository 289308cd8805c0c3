"""The feedback file and its one-line summary."""

from __future__ import annotations

import csv
import io

from services.loader.feedback import CodeCount, ProblemCounts, RecordProblem, feedback_chunks, summarise


def test_feedback_has_the_header_and_one_line_per_problem() -> None:
    problems = [RecordProblem("CUP-1@RX1/01", "patient_cf", "CF_CHECK_CHAR", "error", "carattere di controllo W"),
                RecordProblem("CUP-2@RX2/99", "exemption_code", "EXEMPTION_REQUIRED", "error",
                              "nessun ticket; nessun codice")]
    text = b"".join(feedback_chunks(problems)).decode()
    assert text == ("record_key;field;code;severity;message\n"
                    "CUP-1@RX1/01;patient_cf;CF_CHECK_CHAR;error;carattere di controllo W\n"
                    'CUP-2@RX2/99;exemption_code;EXEMPTION_REQUIRED;error;"nessun ticket; nessun codice"\n')


def test_a_million_problems_stream_in_bounded_chunks() -> None:
    problems = (RecordProblem(f"CUP-{i}", "quantity", "QUANTITY_NOT_POSITIVE", "error", "quantity 0 is below 1")
                for i in range(1_000_000))
    sizes = [len(chunk) for chunk in feedback_chunks(problems, chunk_lines=50_000)]
    assert len(sizes) == 21 and max(sizes) < 4_000_000  # ~70 bytes x 50,000 lines
    assert sum(sizes) > 60_000_000


def test_messages_with_quotes_and_newlines_survive_a_csv_reader() -> None:
    tricky = RecordProblem("CUP-3", "patient_surname", "SURNAME_TOO_LONG", "warning", 'il cognome "D\'ANGELO\nX"')
    rows = list(csv.DictReader(io.StringIO(b"".join(feedback_chunks([tricky])).decode()), delimiter=";"))
    assert rows[0]["message"] == tricky.message


def test_summary_counts_errors_records_and_codes() -> None:
    counts = ProblemCounts(errors=3, warnings=1, error_records=2, by_code=(
        CodeCount("UNKNOWN_SERVICE_CODE", "error", 1), CodeCount("CF_CHECK_CHAR", "error", 2),
        CodeCount("SURNAME_TOO_LONG", "warning", 1)))
    assert summarise(counts) == ("3 errori in 2 record: 2 x CF_CHECK_CHAR, 1 x UNKNOWN_SERVICE_CODE; "
                                 "1 avviso: 1 x SURNAME_TOO_LONG")


def test_summary_of_warnings_only_is_plural() -> None:
    counts = ProblemCounts(0, 3, 0, (CodeCount("SURNAME_TOO_LONG", "warning", 2), CodeCount("NAME_TOO_LONG",
                                                                                          "warning", 1)))
    assert summarise(counts) == "3 avvisi: 2 x SURNAME_TOO_LONG, 1 x NAME_TOO_LONG"


def test_summary_of_a_clean_load() -> None:
    assert summarise(ProblemCounts(0, 0, 0, ())) == "nessun problema"


def test_summary_of_one_error_is_singular() -> None:
    counts = ProblemCounts(1, 0, 1, (CodeCount("TOO_MANY_SERVICES", "error", 1),))
    assert summarise(counts) == "1 errore in 1 record: 1 x TOO_MANY_SERVICES"
