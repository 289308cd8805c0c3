"""Switch slots: 08:30-17:00, Monday-Friday, no public holiday nor patron-saint day, enough notice."""

from __future__ import annotations

from datetime import date, time
from pathlib import Path

import holidays
import pytest

from services.onboarding.switch import (
    SwitchCalendar,
    SwitchSlot,
    SwitchWindow,
    judge_switch,
    load_patron_days,
    window_is_within_office_hours,
)

CALENDAR = SwitchCalendar(load_patron_days())
NAPOLI, SALERNO, AVELLINO, CASERTA, BENEVENTO = "063049", "065116", "064008", "061022", "062008"
POZZUOLI = "063060"  # not in our patron-saint data
MORNING = SwitchWindow.parse("09:00-11:00")


def closed(day: date, municipality: str) -> str:
    return CALENDAR.closed_because(day, municipality) or "open"


def judge(day: date, complete_on: date = date(2026, 1, 7), credentials: str = "basic",
          municipality: str = NAPOLI, window: SwitchWindow = MORNING, today: date | None = None,
          asked_on: date | None = None):
    """Asked on the completion day unless `today` says otherwise."""
    return judge_switch(SwitchSlot(day, window), credentials, complete_on, municipality, CALENDAR,
                        today=today or complete_on, asked_on=asked_on)


@pytest.mark.parametrize(("day", "why"), [
    (date(2026, 12, 25), "venerdì 25/12/2026 è un giorno festivo (Natale)"),
    (date(2029, 4, 25), "Anniversario della Liberazione"),  # a Wednesday in 2029
    (date(2028, 6, 2), "Festa della Repubblica"),  # a Friday in 2028
    (date(2026, 12, 8), "Immacolata Concezione"),
    (date(2026, 10, 5), None),  # the Monday after San Francesco: an ordinary day
])
def test_italian_public_holidays_across_years_close_the_switch(day, why):
    reason = CALENDAR.closed_because(day, NAPOLI)
    if why is None:
        assert reason is None
    else:
        assert reason is not None and why in reason


def test_easter_monday_is_closed_in_2026_and_2027():
    assert "Lunedì dell'Angelo" in closed(date(2026, 4, 6), NAPOLI)
    assert "Lunedì dell'Angelo" in closed(date(2027, 3, 29), NAPOLI)
    assert CALENDAR.closed_because(date(2027, 4, 6), NAPOLI) is None  # a Tuesday, no longer Easter


def test_saint_francis_on_4_october_is_a_national_holiday_again_from_2026():
    assert CALENDAR.closed_because(date(2027, 10, 4), SALERNO) is not None  # a Monday
    assert CALENDAR.closed_because(date(2024, 10, 4), SALERNO) is None  # a Friday, before the law


def test_19_september_is_closed_in_naples_but_open_in_salerno():
    san_gennaro = date(2028, 9, 19)  # a Tuesday
    assert closed(san_gennaro, NAPOLI) == "martedì 19/09/2028 è la festa del santo patrono di Napoli (San Gennaro)"
    assert CALENDAR.closed_because(san_gennaro, SALERNO) is None


@pytest.mark.parametrize(("istat", "day"), [
    (SALERNO, date(2026, 9, 21)), (AVELLINO, date(2029, 2, 14)), (CASERTA, date(2027, 1, 20)),
    (BENEVENTO, date(2026, 8, 24)),
])
def test_each_campania_capoluogo_has_its_patron_saint_day(istat, day):
    assert "è la festa del santo patrono di" in closed(day, istat)
    assert CALENDAR.closed_because(day, NAPOLI) is None


def test_our_patron_saint_data_agrees_with_the_holidays_package_for_the_capoluoghi():
    province_of = {NAPOLI: "NA", SALERNO: "SA", AVELLINO: "AV", CASERTA: "CE", BENEVENTO: "BN"}
    national = set(holidays.country_holidays("IT", years=2026))
    for istat, province in province_of.items():
        entry = load_patron_days()[istat]
        local = set(holidays.country_holidays("IT", subdiv=province, years=2026)) - national
        assert local == {date(2026, entry.month, entry.day)}, entry


def test_saturday_and_sunday_are_closed():
    assert closed(date(2026, 2, 7), NAPOLI) == ("sabato 07/02/2026 non è un giorno lavorativo: lo switch si esegue "
                                                "dal lunedì al venerdì")
    assert closed(date(2026, 2, 8), NAPOLI).startswith("domenica 08/02/2026 non è un giorno lavorativo")


@pytest.mark.parametrize(("window", "ok"), [
    ("08:30-10:00", True), ("08:29-10:00", False), ("15:00-17:00", True), ("15:00-17:01", False),
    ("11:00-10:00", False),
    ("08:30-17:00", True),  # the whole office day
    ("16:59-17:00", True),  # its last minute is a window
    ("10:00-10:00", False),  # a window of no minutes is no window
])
def test_the_window_must_lie_within_08_30_and_17_00(window, ok):
    assert (window_is_within_office_hours(SwitchWindow.parse(window)) is None) is ok


def test_a_malformed_patron_saint_row_is_named_by_its_line_in_the_file(tmp_path: Path):
    """The header is line 1, so the first data row is line 2: the line a spreadsheet or an editor shows."""
    data = tmp_path / "patron_saints.csv"
    data.write_text("istat,municipality,province,month,day,saint\n063049,Napoli,NA,9,19,San Gennaro\n"
                    "065116,Salerno,SA,2,31,San Matteo\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^patron_saints\.csv row 3: day is out of range for month"):
        load_patron_days(data)


def test_a_patron_saint_on_29_february_is_a_real_day(tmp_path: Path):
    data = tmp_path / "patron_saints.csv"
    data.write_text("istat,municipality,province,month,day,saint\n099999,Bisestile,NA,2,29,San Bisesto\n",
                    encoding="utf-8")
    assert load_patron_days(data)["099999"].day == 29


def test_a_window_out_of_office_hours_is_refused_in_the_words_of_the_note():
    assert window_is_within_office_hours(SwitchWindow.parse("15:00-17:01")) == \
        "la fascia oraria 15:00-17:01 non è compresa tra le ore 08:30 e le ore 17:00"
    assert window_is_within_office_hours(SwitchWindow.parse("11:00-10:00")) == \
        "la fascia oraria 11:00-10:00 finisce prima di cominciare"


def test_basic_credentials_need_three_weeks_of_notice_to_the_day():
    complete = date(2026, 1, 7)  # a Wednesday
    assert judge(date(2026, 1, 28), complete).accepted  # 21 days
    refused = judge(date(2026, 1, 27), complete)  # 20 days
    assert not refused.accepted and refused.reasons[0] == (
        "martedì 27/01/2026 è a 20 giorni dal completamento della richiesta (mercoledì 07/01/2026); per "
        "l'aggiornamento delle sole credenziali Basic è richiesto un preavviso minimo di 3 settimane: "
        "non prima di mercoledì 28/01/2026")
    assert refused.proposal == SwitchSlot(date(2026, 1, 28), MORNING)


def test_new_oauth2_credentials_need_four_weeks_of_notice_to_the_day():
    complete = date(2026, 1, 7)
    assert judge(date(2026, 2, 4), complete, "new-oauth2").accepted  # 28 days
    refused = judge(date(2026, 2, 3), complete, "new-oauth2")  # 27 days
    assert not refused.accepted and "per nuove credenziali OAuth2.0 è richiesto un preavviso minimo di 4 settimane" \
        in refused.reasons[0]


def test_a_slot_under_the_upper_bound_is_accepted_with_a_warning():
    decision = judge(date(2026, 2, 4), date(2026, 1, 7), "new-oauth2")  # 4 weeks, under 6
    assert decision.accepted and decision.warnings[0].startswith(
        "preavviso inferiore a 6 settimane (la nota indica 4/6 settimane per nuove credenziali OAuth2.0)")
    assert not judge(date(2026, 2, 18), date(2026, 1, 7), "new-oauth2").warnings  # 6 weeks


def test_basic_credentials_warn_under_four_weeks_and_not_from_the_fourth():
    """Basic credentials: "preavviso minimo di 3/4 settimane"; 3 weeks is the hard minimum, under 4 a warning."""
    complete = date(2026, 1, 7)
    assert not judge(date(2026, 2, 4), complete).warnings  # 28 days
    warned = judge(date(2026, 2, 3), complete)  # 27 days
    assert warned.accepted and warned.warnings == (
        "preavviso inferiore a 4 settimane (la nota indica 3/4 settimane per l'aggiornamento delle sole credenziali "
        "Basic): lo sportello potrebbe avere bisogno del preavviso più lungo",)


MONDAY_2_MARCH = date(2026, 3, 2)


def test_a_request_complete_for_months_takes_no_switch_for_tomorrow():
    """Seed 003: "preavviso minimo di 3/4 settimane". The notice runs from the day the switch is asked when the request
    was complete before: complete in November, asked on Monday 2 March, the switch is not before Monday 23 March."""
    refused = judge(date(2026, 3, 3), complete_on=date(2025, 11, 3), today=MONDAY_2_MARCH)
    assert not refused.accepted and refused.reasons == (
        "martedì 03/03/2026 è a 1 giorno dalla richiesta dello switch (lunedì 02/03/2026); per l'aggiornamento delle "
        "sole credenziali Basic è richiesto un preavviso minimo di 3 settimane: non prima di lunedì 23/03/2026",)
    assert refused.proposal == SwitchSlot(date(2026, 3, 23), MORNING)
    assert judge(date(2026, 3, 23), complete_on=date(2025, 11, 3), today=MONDAY_2_MARCH).accepted
    oauth2 = judge(date(2026, 3, 27), date(2025, 11, 3), "new-oauth2", today=MONDAY_2_MARCH)
    assert not oauth2.accepted and oauth2.reasons[0].endswith("preavviso minimo di 4 settimane: non prima di lunedì "
                                                               "30/03/2026")
    assert judge(date(2026, 3, 30), date(2025, 11, 3), "new-oauth2", today=MONDAY_2_MARCH).accepted


@pytest.mark.parametrize(("day", "reason"), [
    (date(2026, 2, 20), "venerdì 20/02/2026 è già passato (oggi è lunedì 02/03/2026): lo switch si fissa per un giorno "
                        "futuro, non prima di lunedì 23/03/2026"),
    (MONDAY_2_MARCH, "lunedì 02/03/2026 è oggi: lo switch si fissa per un giorno futuro, non prima di lunedì "
                     "23/03/2026"),
])
def test_a_day_already_past_or_today_is_refused_naming_the_earliest_day(day: date, reason: str):
    refused = judge(day, complete_on=date(2025, 11, 3), today=MONDAY_2_MARCH)
    assert not refused.accepted and reason in refused.reasons
    assert refused.proposal.day == date(2026, 3, 23)


def test_a_slot_declared_in_the_documents_keeps_its_notice_from_the_completion_but_must_not_be_past():
    """Declared when the documents were received (complete on 2 March), judged on 25 March after a late verdict:
    the notice ran from 2 March (23 March on), but 24 March is gone: the 26th is the first day."""
    refused = judge(date(2026, 3, 24), MONDAY_2_MARCH, asked_on=MONDAY_2_MARCH, today=date(2026, 3, 25))
    assert not refused.accepted and refused.reasons == (
        "martedì 24/03/2026 è già passato (oggi è mercoledì 25/03/2026): lo switch si fissa per un giorno futuro, "
        "non prima di giovedì 26/03/2026",)
    assert refused.proposal.day == date(2026, 3, 26)
    assert judge(date(2026, 3, 26), MONDAY_2_MARCH, asked_on=MONDAY_2_MARCH, today=date(2026, 3, 25)).accepted


def test_a_refusal_on_san_gennaro_proposes_the_next_working_day():
    decision = judge(date(2028, 9, 19), complete_on=date(2028, 6, 1))
    assert not decision.accepted and "San Gennaro" in decision.reasons[0]
    assert decision.proposal == SwitchSlot(date(2028, 9, 20), MORNING)


def test_when_the_notice_ends_on_easter_monday_the_proposal_is_the_tuesday():
    early = judge(date(2026, 3, 30), complete_on=date(2026, 3, 16))  # Mon 16 Mar + 3 weeks = Easter Monday
    assert not early.accepted
    assert early.proposal.day == date(2026, 4, 7)


def test_a_window_outside_office_hours_gets_a_proposal_of_the_same_length_from_08_30():
    decision = judge(date(2026, 3, 4), window=SwitchWindow.parse("17:00-18:30"))
    assert not decision.accepted
    assert decision.proposal.window == SwitchWindow(time(8, 30), time(10, 0))


def test_a_municipality_without_patron_data_is_accepted_with_a_check_by_hand_warning():
    decision = judge(date(2026, 3, 4), municipality=POZZUOLI)
    assert decision.accepted and "il santo patrono del comune con codice ISTAT 063060 non è nei nostri dati: " \
        "verificare a mano che il giorno non sia la sua festa" in decision.warnings


@pytest.mark.parametrize(("window", "proposed"), [
    ("09:00-17:30", "08:30-17:00"),  # 510 minutes, the whole office day: kept
    ("16:30-18:00", "08:30-10:00"),  # 90 minutes, starting on the half hour
    ("17:00-17:01", "08:30-08:31"),  # one minute, the shortest window: kept
    ("08:00-16:31", "08:30-10:30"),  # 511 minutes do not fit in 08:30-17:00: two hours instead
    ("10:00-10:00", "08:30-10:30"),  # no length to keep: two hours
    ("11:00-10:00", "08:30-10:30"),
])
def test_a_refused_window_is_proposed_from_08_30_with_its_length_when_the_office_day_holds_it(window, proposed):
    """The proposal must itself be a valid slot: the desired length when 08:30 + length <= 17:00, else two hours."""
    decision = judge(date(2026, 3, 4), window=SwitchWindow.parse(window))
    assert not decision.accepted
    assert str(decision.proposal.window) == proposed
    assert window_is_within_office_hours(decision.proposal.window) is None
