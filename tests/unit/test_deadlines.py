from __future__ import annotations

from datetime import date

from services.cli.deadlines import deadlines_for_month, next_working_day


def _due(year: int, month: int) -> dict[str, date]:
    return {d.flow_type: d.due for d in deadlines_for_month(year, month)}


def test_flusso_c_of_october_is_due_on_the_tenth_of_november():
    assert _due(2026, 10)["FLUSSO_C"] == date(2026, 11, 10)


def test_a_due_date_on_a_saturday_moves_to_monday():
    # 10 January 2026 is a Saturday
    assert _due(2025, 12)["FLUSSO_C"] == date(2026, 1, 12)


def test_mef_follows_the_official_calendar_override():
    assert _due(2026, 11)["FLUSSO_MEF"] == date(2026, 12, 14)


def test_730_was_semiannual_through_2024_and_is_annual_from_2025():
    assert _due(2024, 6)["FLUSSO_730"] == date(2024, 9, 30)
    assert _due(2024, 12)["FLUSSO_730"] == date(2025, 1, 31)
    assert "FLUSSO_730" not in _due(2025, 6)
    assert _due(2025, 12)["FLUSSO_730"] == date(2026, 2, 2)  # 31 Jan 2026 is a Saturday


def test_alpi_ta_is_due_only_for_index_weeks():
    assert _due(2026, 10)["FLUSSO_ALPI_TA"] == date(2026, 11, 30)
    assert "FLUSSO_ALPI_TA" not in _due(2026, 11)


def test_christmas_and_st_stephen_are_skipped():
    assert next_working_day(date(2026, 12, 25)) == date(2026, 12, 28)
