from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import holidays
import pytest

from contracts.deadlines import (
    Deadline,
    DeadlineDataInvalid,
    DeadlineDataMissing,
    covering_states,
    deadlines_for_month,
    default_month,
    italian_today,
    known_deadlines_for_month,
    next_working_day,
    rules,
)
from services.cli.common import UserError
from services.cli.deadlines import show

YEARS = (2025, 2026, 2027)
FLOW_TYPES = ("FLUSSO_C", "FLUSSO_C_PACC", "FLUSSO_MEF", "FLUSSO_ALPI_TA", "FLUSSO_730")


def _due(year: int, month: int, **kw: Any) -> dict[str, date]:
    return {d.flow_type: d.due for d in deadlines_for_month(year, month, **kw)}


def _book(**year_rule: Any) -> dict[str, Any]:
    """A one-flow rule book for 2026."""
    return {"TEST_FLOW": {"years": {"2026": year_rule}}}


# --- the shipped data ----------------------------------------------------------------------------


def test_flusso_c_of_october_is_due_on_the_tenth_of_november():
    assert _due(2026, 10)["FLUSSO_C"] == date(2026, 11, 10)


def test_a_monthly_deadline_covers_its_whole_month_from_the_first_to_the_last_day():
    """The reference period of a monthly flow is the calendar month, 1st to last day: an instance covers it only
    when its period contains both ends."""
    (c,) = deadlines_for_month(2026, 10, flow_types=["FLUSSO_C"])
    assert c == Deadline("FLUSSO_C", date(2026, 10, 1), date(2026, 10, 31), date(2026, 11, 10))


def test_mef_follows_the_official_calendar():
    assert _due(2026, 11)["FLUSSO_MEF"] == date(2026, 12, 14)
    assert _due(2026, 7)["FLUSSO_MEF"] == date(2026, 8, 14)


def test_every_flow_type_has_data_for_2025_to_2027_and_every_month_gives_a_date():
    assert set(rules()) == set(FLOW_TYPES)
    for year in YEARS:
        for month in range(1, 13):
            due = _due(year, month)
            assert {"FLUSSO_C", "FLUSSO_C_PACC", "FLUSSO_MEF"} <= set(due)
            assert all(d.weekday() < 5 for d in due.values())


def test_mef_calendars_list_every_month_between_the_10th_and_the_14th_of_the_next():
    for year in YEARS:
        for month in range(1, 13):
            (mef,) = deadlines_for_month(year, month, flow_types=["FLUSSO_MEF"])
            first = mef.period_end + timedelta(days=1)
            assert first.replace(day=10) <= mef.due <= first.replace(day=14), (year, month, mef.due)


def test_alpi_ta_has_four_index_weeks_a_year_each_due_in_the_month_after():
    it = holidays.country_holidays("IT", years=YEARS)
    for year in YEARS:
        weeks = [d for m in range(1, 13) for d in deadlines_for_month(year, m, flow_types=["FLUSSO_ALPI_TA"])]
        assert len(weeks) == 4, year
        for w in weeks:
            days = [w.period_start + timedelta(days=n) for n in range((w.period_end - w.period_start).days + 1)]
            assert w.period_start.weekday() == 0 and len(days) == 5 and not any(d in it for d in days)
            after = (w.period_end.replace(day=1) + timedelta(days=32)).replace(day=1)
            assert (w.due.year, w.due.month) == (after.year, after.month)


def test_alpi_ta_is_due_only_for_index_weeks():
    assert _due(2026, 10)["FLUSSO_ALPI_TA"] == date(2026, 11, 30)
    assert "FLUSSO_ALPI_TA" not in _due(2026, 11)


# --- the 730: semiannual through 2024 data, annual from 2025 data --------------------------------


def test_730_was_semiannual_through_2024_data_and_is_annual_from_2025_data():
    def of_730(year: int, month: int) -> list[tuple[date, date, date]]:
        return [(d.period_start, d.period_end, d.due)
                for d in deadlines_for_month(year, month, flow_types=["FLUSSO_730"])]

    # 2024 data: two semesters, due 30 September and 31 January of the following year
    assert of_730(2024, 6) == [(date(2024, 1, 1), date(2024, 6, 30), date(2024, 9, 30))]
    assert of_730(2024, 12) == [(date(2024, 7, 1), date(2024, 12, 31), date(2025, 1, 31))]
    # 2025 data: one year, due 31 January 2026 (a Saturday: Monday 2 February); no first-half deadline
    assert of_730(2025, 6) == []
    assert of_730(2025, 12) == [(date(2025, 1, 1), date(2025, 12, 31), date(2026, 2, 2))]
    assert [m for m in range(1, 13) if of_730(2025, m)] == [12]
    assert _due(2026, 12)["FLUSSO_730"] == date(2027, 2, 1)  # 31 January 2027 is a Sunday
    assert _due(2027, 12)["FLUSSO_730"] == date(2028, 1, 31)


# --- weekends and holidays -----------------------------------------------------------------------


def test_a_due_date_on_a_saturday_moves_to_monday():
    # 10 January 2026 is a Saturday
    assert _due(2025, 12)["FLUSSO_C"] == date(2026, 1, 12)


def test_a_due_date_on_a_sunday_moves_to_monday():
    # 10 January 2027 is a Sunday
    assert _due(2026, 12)["FLUSSO_C"] == date(2027, 1, 11)
    assert _due(2026, 12)["FLUSSO_C_PACC"] == date(2027, 1, 11)


def test_a_due_date_on_a_public_holiday_moves_to_the_next_working_day():
    # 8 December 2026 (Immacolata) is a Tuesday; 6 April 2026 is Easter Monday
    assert _due(2026, 11, rule_book=_book(kind="monthly", day=8)) == {"TEST_FLOW": date(2026, 12, 9)}
    assert _due(2026, 3, rule_book=_book(kind="monthly", day=6)) == {"TEST_FLOW": date(2026, 4, 7)}


def test_christmas_and_st_stephen_are_skipped():
    assert next_working_day(date(2026, 12, 25)) == date(2026, 12, 28)


# --- months_after --------------------------------------------------------------------------------


def test_months_after_is_honoured_and_crosses_the_year():
    two_after = _book(kind="monthly", day=8, months_after=2)
    assert _due(2026, 10, rule_book=two_after) == {"TEST_FLOW": date(2026, 12, 9)}  # 8 Dec: holiday
    assert _due(2026, 12, rule_book=two_after) == {"TEST_FLOW": date(2027, 2, 8)}
    assert _due(2026, 10, rule_book=_book(kind="monthly", day=8)) == {"TEST_FLOW": date(2026, 11, 9)}  # 8 Nov: Sun


def test_the_first_and_the_last_day_of_a_month_are_valid_due_days():
    # day = 1: due on the 1st of the next month (Tuesday 1 December 2026); months_after = 1 is the default, written
    assert _due(2026, 11, rule_book=_book(kind="monthly", day=1, months_after=1)) == {"TEST_FLOW": date(2026, 12, 1)}
    # day = 31 in a month of 31 days: Saturday 31 October 2026 -> Monday 2 November
    assert _due(2026, 9, rule_book=_book(kind="monthly", day=31)) == {"TEST_FLOW": date(2026, 11, 2)}


def test_a_day_past_the_end_of_the_month_means_its_last_day():
    # 31 -> 28 February 2026, a Saturday -> Monday 2 March
    assert _due(2026, 1, rule_book=_book(kind="monthly", day=31)) == {"TEST_FLOW": date(2026, 3, 2)}


# --- missing or broken data: a clear error, never a guessed date ---------------------------------


def test_a_year_without_data_names_the_flow_types_and_the_year():
    with pytest.raises(DeadlineDataMissing) as caught:
        deadlines_for_month(2028, 3)
    assert caught.value.year == 2028
    assert set(caught.value.flow_types) == set(FLOW_TYPES)
    message = str(caught.value)
    assert "2028" in message and all(f in message for f in FLOW_TYPES)
    assert "contracts/data/deadlines.toml" in message


def test_a_year_known_for_one_flow_type_only_names_the_others():
    # 2024 is kept for the 730 (its last semiannual year), not for the monthly flows
    with pytest.raises(DeadlineDataMissing) as caught:
        deadlines_for_month(2024, 6)
    assert set(caught.value.flow_types) == {"FLUSSO_C", "FLUSSO_C_PACC", "FLUSSO_MEF", "FLUSSO_ALPI_TA"}
    with pytest.raises(DeadlineDataMissing, match=r"FLUSSO_730 in 2023"):
        deadlines_for_month(2023, 12, flow_types=["FLUSSO_730"])


def test_the_flows_with_data_are_given_and_the_others_named():
    """The 730 of 2024 (its last semiannual year) is known, the monthly flows of 2024 are not: they no longer hide
    it. A year nobody has data for gives nothing, and names them all."""
    known, problems = known_deadlines_for_month(2024, 12)
    assert known == [Deadline("FLUSSO_730", date(2024, 7, 1), date(2024, 12, 31), date(2025, 1, 31))]
    (missing,) = problems
    assert isinstance(missing, DeadlineDataMissing) and missing.year == 2024
    assert set(missing.flow_types) == {"FLUSSO_C", "FLUSSO_C_PACC", "FLUSSO_MEF", "FLUSSO_ALPI_TA"}
    none, problems = known_deadlines_for_month(2030, 5)
    assert none == [] and [set(p.flow_types) for p in problems if isinstance(p, DeadlineDataMissing)] == [
        set(FLOW_TYPES)]
    # an unreadable table is said on its own, the readable ones still given
    book = {**_book(kind="weekly"), "OTHER_FLOW": _book(kind="monthly", day=10)["TEST_FLOW"]}
    known, problems = known_deadlines_for_month(2026, 1, rule_book=book)
    assert [d.flow_type for d in known] == ["OTHER_FLOW"]
    assert [type(p).__name__ for p in problems] == ["DeadlineDataInvalid"]
    assert known == deadlines_for_month(2026, 1, rule_book=book, flow_types=["OTHER_FLOW"])


def test_the_cli_turns_a_year_without_data_into_a_user_error_before_touching_the_database():
    with pytest.raises(UserError, match=r"FLUSSO_C.* in 2030"):
        asyncio.run(show(None, "2030-05"))


def test_an_incomplete_calendar_is_an_error_not_the_default_rule():
    book = _book(kind="monthly", calendar={"2026-01": "2026-02-10"})
    assert _due(2026, 1, rule_book=book) == {"TEST_FLOW": date(2026, 2, 10)}
    with pytest.raises(DeadlineDataMissing, match=r"TEST_FLOW.*2026-02"):
        deadlines_for_month(2026, 2, rule_book=book)


@pytest.mark.parametrize(("rule", "message"), [
    ({"kind": "weekly"}, "unknown kind 'weekly'"),
    ({"kind": "monthly"}, "integer `day`"),
    ({"kind": "monthly", "day": 10, "months_after": 0}, "months_after"),
    ({"kind": "monthly", "day": 0}, r"day = 0 must be 1\.\.31"),  # no month has a day 0 ...
    ({"kind": "monthly", "day": 32}, r"day = 32 must be 1\.\.31"),  # ... nor a 32nd
    # due on the period's last day is not after it: the data of a day cannot be sent by the end of that day
    ({"kind": "annual", "due": "2026-12-31"}, r"due date 2026-12-31 is not after the period 2026-01-01\.\.2026-12-31"),
    ({"kind": "monthly", "day": 10, "calendar": {"2026-01": "2026-02-10"}}, "not both"),
    ({"kind": "monthly", "calendar": {"2025-01": "2025-02-10"}}, "another year"),
    ({"kind": "annual", "due": "2026-12-01"}, "not after the period"),
    ({"kind": "annual", "due": "31/01/2027"}, "not a YYYY-MM-DD date"),
    ({"kind": "calendar", "periods": [{"start": "2025-10-13", "end": "2025-10-17", "due": "2025-11-28"}]},
     "must end in 2026"),
    # an index week typed backwards is named by its place in the calendar
    ({"kind": "calendar", "periods": [{"start": "2026-10-12", "end": "2026-10-16", "due": "2026-11-30"},
                                      {"start": "2026-10-16", "end": "2026-10-12", "due": "2026-11-30"}]},
     r"period 2 \(2026-10-16\.\.2026-10-12\) must end in 2026 and start before it ends"),
])
def test_broken_data_is_an_error_naming_the_flow_and_year(rule, message):
    with pytest.raises(DeadlineDataInvalid, match=message) as caught:
        for month in range(1, 13):
            deadlines_for_month(2026, month, rule_book=_book(**rule))
    assert "[TEST_FLOW.years.2026]" in str(caught.value)


def test_a_due_date_the_day_after_the_period_is_accepted():
    # 1 January 2027 (Capodanno, a Friday) -> Monday 4 January
    assert _due(2026, 12, rule_book=_book(kind="annual", due="2027-01-01")) == {"TEST_FLOW": date(2027, 1, 4)}


def test_a_calendar_period_of_one_day_is_a_period():
    """A period's days are inclusive: start = end is one day, not a period that ends before it starts."""
    book = _book(kind="calendar", periods=[{"start": "2026-10-14", "end": "2026-10-14", "due": "2026-11-30"}])
    assert deadlines_for_month(2026, 10, rule_book=book) == [
        Deadline("TEST_FLOW", date(2026, 10, 14), date(2026, 10, 14), date(2026, 11, 30))]


@pytest.mark.parametrize("month", [0, 13])
def test_a_month_outside_1_to_12_is_refused(month: int) -> None:
    with pytest.raises(ValueError, match=rf"^month {month} is not 1\.\.12$"):
        deadlines_for_month(2026, month)


@pytest.mark.parametrize(("today", "month"), [
    (date(2027, 1, 1), (2026, 12)),  # in January the month that matters is December of the year before
    (date(2027, 1, 31), (2026, 12)),
    (date(2026, 2, 3), (2026, 1)),  # in February, January of the same year
    (date(2026, 12, 31), (2026, 11)),
    # ... but on the 730's due day, 31 January moved past a weekend, December still: the 730 of 2025 is due on Monday
    # 2 February 2026, that of 2026 on Monday 1 February 2027 (2027's 31 January is a Sunday)
    (date(2026, 2, 1), (2025, 12)),
    (date(2026, 2, 2), (2025, 12)),
    (date(2027, 2, 1), (2026, 12)),
    (date(2027, 2, 2), (2027, 1)),
    (date(2028, 2, 1), (2028, 1)),  # 31 January 2028 is a Monday: due that day
    (date(2031, 2, 1), (2031, 1)),  # no data for 2030: the previous month, as before
])
def test_the_month_whose_deadlines_matter_today_is_the_previous_one(today: date, month: tuple[int, int]) -> None:
    assert default_month(today) == month


def test_status_marks_what_is_due_within_7_days_and_not_covered():
    from contracts.deadlines import status

    d = Deadline("FLUSSO_C", date(2026, 10, 1), date(2026, 10, 31), date(2026, 11, 16))
    assert status(d, None, date(2026, 11, 8)) == "open"
    assert status(d, None, date(2026, 11, 9)) == "due-soon"
    assert status(d, None, date(2026, 11, 16)) == "due-soon"
    assert status(d, None, date(2026, 11, 17)) == "late"
    assert status(d, 1947, date(2026, 11, 17)) == "covered"


def test_an_exported_flow_is_covered_once_formatted_and_the_730_once_sent_to_sistema_ts():
    """Tabella 1 (seed 000) dates the TRANSMISSION to the competent body. C, C PACC, MEF and ALPI TA are exported (the
    upload is the operator's, outside the platform): their Formatted files are as far as the platform sees. The 730
    is sent by the platform itself: Formatted, its file has reached nobody, and its deadline is not met until Sistema
    TS has it (Waiting feedback, then Confirmed or Confirmed with errors); a Rejected one was refused."""
    assert covering_states("FLUSSO_730") == ("Waiting feedback", "Confirmed", "Confirmed with errors")
    for flow_type in ("FLUSSO_C", "FLUSSO_C_PACC", "FLUSSO_MEF", "FLUSSO_ALPI_TA"):
        assert covering_states(flow_type) == ("Formatted",), flow_type


@pytest.mark.parametrize(("utc", "italian"), [
    ("2026-12-03T22:59:59", date(2026, 12, 3)),  # winter, CET = UTC+1
    ("2026-12-03T23:00:00", date(2026, 12, 4)),  # on a UTC host date.today() still says the 3rd for an hour
    ("2026-07-10T21:59:59", date(2026, 7, 10)),  # summer, CEST = UTC+2
    ("2026-07-10T22:00:00", date(2026, 7, 11)),
    ("2026-12-31T23:30:00", date(2027, 1, 1)),
])
def test_today_is_the_date_in_italy_whatever_the_host_clock_zone(utc: str, italian: date) -> None:
    assert italian_today(datetime.fromisoformat(utc).replace(tzinfo=UTC)) == italian
