"""Rules and naming of the 730 file, and the promise that memory does not grow with the documents."""

from __future__ import annotations

import tracemalloc
from datetime import date
from pathlib import Path

import pytest
from cryptography import x509
from stdnum.it import codicefiscale

from services.formatter.xml730_rules import is_valid_codice_fiscale, part_file_name, period_label
from services.runtime.sanitel import make_test_certificate
from tests.unit.test_xml730 import a_month_of_documents, patient_cf, write


@pytest.mark.parametrize(("start", "end", "label"), [
    (date(2026, 7, 1), date(2026, 12, 31), "2026S2"),
    (date(2026, 1, 1), date(2026, 6, 30), "2026S1"),
    (date(2026, 11, 1), date(2026, 11, 30), "2026S2"),
    (date(2025, 1, 1), date(2025, 12, 31), "2025"),  # annual from 2025 data
    (date(2026, 7, 1), date(2027, 1, 31), "202607-202701"),
])
def test_the_period_label_says_semester_year_or_range(start, end, label):
    assert period_label(start, end) == label


def test_a_part_name_tells_region_ente_structure_period_instance_and_part():
    assert part_file_name("150", "201", "000123", "2026S2", 1947, 1) == "730_150201_000123_2026S2_1947_p1.zip"


def test_a_part_name_longer_than_ts_accepts_is_an_error():
    with pytest.raises(ValueError, match="6-60 basic-Latin"):
        part_file_name("150", "201", "000123", "2026S2", 10**40, 1)


def test_the_codice_fiscale_check_agrees_with_stdnum_on_good_and_corrupted_codes():
    for n in range(0, 3000, 7):
        cf = patient_cf(n)
        corrupted = cf[:-1] + chr((ord(cf[-1]) - ord("A") + 1) % 26 + ord("A"))
        assert is_valid_codice_fiscale(cf) and codicefiscale.is_valid(cf)
        assert not is_valid_codice_fiscale(corrupted) and not codicefiscale.is_valid(corrupted)


@pytest.mark.parametrize("cf", ["rssmra80a01f839w", "RSSMRA80A01F839W ", "RSS MRA80A01F839W", "12345678901"])
def test_a_codice_fiscale_must_be_exactly_as_ts_reads_it(cf):
    assert not is_valid_codice_fiscale(cf)


def test_memory_does_not_grow_with_the_number_of_documents(tmp_path: Path):
    cert = x509.load_pem_x509_certificate(make_test_certificate()[0])
    peaks = []
    tracemalloc.start()
    try:
        for count in (500, 5_000):
            (tmp_path / str(count)).mkdir()
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            writer = write(a_month_of_documents(count), cert, tmp_path / str(count))
            peaks.append(tracemalloc.get_traced_memory()[1] - before)
            assert sum(p.records for p in writer.parts) == count
    finally:
        tracemalloc.stop()
    small, large = peaks
    assert large < small * 1.5, f"peak grew from {small} to {large} bytes for 10x the documents"


def test_a_run_keeps_the_first_problems_and_counts_them_all() -> None:
    from services.formatter.xml730_rules import DocumentProblem, ProblemList, Xml730Rejected

    problems = ProblemList(limit=3)
    problems.extend(DocumentProblem(f"CUP-{i}", "patient_cf", "not a codice fiscale") for i in range(10))
    assert len(problems) == 3 and problems.total == 10 and problems
    rejected = Xml730Rejected(problems)
    assert rejected.total == 10 and [p.source_id for p in rejected.problems] == ["CUP-0", "CUP-1", "CUP-2"]
    assert str(rejected).startswith("10 problem(s) in the 730 source: ") and "(and 5 more" in str(rejected)
