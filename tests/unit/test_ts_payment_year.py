"""The payment years Sistema TS takes on a day (services.ts_gateway.payment_year): ws-asincrono-spec-v2.5,
dataPagamento, "L'anno della data di pagamento non può essere diverso dall'anno in corso (tranne che per il mese di
gennaio in cui è possibile acquisire i pagamenti dell'anno precedente)"."""

from __future__ import annotations

from datetime import date

import pytest

from services.ts_gateway.payment_year import accepted_years, refused_on, sending_window, warning_en, warning_it

RULE = ("Sistema TS accetta un documento di spesa solo nell'anno del pagamento e, per i pagamenti dell'anno "
        "precedente, nel mese di gennaio (fino alla scadenza del 730, se spostata al primo giorno lavorativo).")
EN_RULE = ("Sistema TS takes a payment document only in its payment year and, for the year before, in January (up to "
           "the 730's deadline when it moves to the next working day):")


@pytest.mark.parametrize(("on", "years"), [
    (date(2027, 1, 1), (2026, 2027)),
    (date(2027, 1, 31), (2026, 2027)),
    (date(2027, 2, 1), (2026, 2027)),  # 31 January 2027 is a Sunday: the 730 of 2026 is due on Monday 1 February
    (date(2027, 2, 2), (2027,)),
    (date(2026, 2, 2), (2025, 2026)),  # a Saturday: due on Monday 2 February
    (date(2026, 2, 3), (2026,)),
    (date(2028, 2, 1), (2028,)),  # a Monday: 31 January itself
    (date(2026, 12, 31), (2026,)),
    (date(2026, 6, 15), (2026,)),
])
def test_ts_takes_the_payments_of_its_year_and_in_january_those_of_the_year_before(on: date,
                                                                                   years: tuple[int, ...]) -> None:
    assert accepted_years(on) == years


def test_the_documents_refused_on_a_day_are_those_of_every_other_year_a_later_one_too() -> None:
    years = {2025: 3, 2026: 5, 2027: 1}
    assert refused_on(years, date(2026, 1, 20)) == {2027: 1}
    assert refused_on(years, date(2026, 2, 2)) == {2027: 1}
    assert refused_on(years, date(2026, 2, 3)) == {2025: 3, 2027: 1}
    assert refused_on(years, date(2027, 1, 31)) == {2025: 3}
    assert refused_on({}, date(2027, 3, 1)) == {}


@pytest.mark.parametrize(("years", "window"), [
    ({2026: 4}, (date(2026, 1, 1), date(2027, 2, 1))),
    ({2025: 1, 2026: 4}, (date(2026, 1, 1), date(2026, 2, 2))),
    ({2027: 4}, (date(2027, 1, 1), date(2028, 1, 31))),
    ({2024: 1, 2026: 4}, None),  # no day takes both
    ({}, None),
])
def test_the_days_that_take_every_document_of_an_instance(years: dict[int, int],
                                                           window: tuple[date, date] | None) -> None:
    assert sending_window(years) == window
    if window is not None:  # each end is a day that takes them all; the day after the last takes fewer
        assert refused_on(years, window[0]) == {} and refused_on(years, window[1]) == {}
        assert refused_on(years, date.fromordinal(window[1].toordinal() + 1)) != {}


def test_nothing_is_said_of_a_day_that_takes_every_document() -> None:
    assert warning_it({2026: 4}, date(2027, 1, 31)) is None
    assert warning_en(1950, {2026: 4}, date(2026, 12, 7)) is None
    assert warning_it({}, date(2026, 12, 7)) is None


def test_the_warning_counts_the_refused_documents_by_year_and_names_the_days_that_would_take_them() -> None:
    assert warning_it({2026: 1, 2027: 2}, date(2027, 2, 2)) == (
        f"{RULE} Trasmessi il 02/02/2027, saranno scartati 1 documento pagato nel 2026; tutti sarebbero "
        "stati accettati solo se trasmessi dal 01/01/2027 al 01/02/2027, un periodo già passato.")
    # a later day to come: the window is given as one to keep
    assert warning_it({2026: 3}, date(2026, 1, 10)) is None
    assert warning_it({2027: 3}, date(2026, 12, 7)) == (
        f"{RULE} Trasmessi il 07/12/2026, saranno scartati 3 documenti pagati nel 2027; tutti sono "
        "accettati se trasmessi dal 01/01/2027 al 31/01/2028.")
    assert warning_it({2019: 1, 2020: 2, 2021: 1}, date(2026, 12, 7)) == (
        f"{RULE} Trasmessi il 07/12/2026, saranno scartati 1 documento pagato nel 2019, 2 documenti "
        "pagati nel 2020 e 1 documento pagato nel 2021; nessun giorno di trasmissione li fa accettare tutti: i "
        "pagamenti sono di più di due anni (2019, 2020, 2021); carichi periodi separati.")
    assert warning_en(1960, {2020: 2}, date(2026, 12, 7)) == (
        f"{EN_RULE} sent on 2026-12-07, documents of instance 1960 will be refused (2 paid in 2020); they would all "
        "have been taken only from 2020-01-01 to 2021-01-31, which is past.")
    assert warning_en(1960, {2026: 2, 2028: 1}, date(2027, 5, 1)) == (
        f"{EN_RULE} sent on 2027-05-01, documents of instance 1960 will be refused (2 paid in 2026; 1 paid in "
        "2028); no transmission day takes them all: the payments span more than two years.")


def test_a_later_transmission_date_is_told_the_days_still_to_come_that_take_every_document() -> None:
    """Sent on 2 February 2027, documents paid in 2026 are refused (their 730 is due on Monday 1 February). Asked on
    7 December 2026 (a later transmission date chosen in the form or typed at the prompt), the window is not past:
    the operator can still send until 1 February, from today on."""
    today = date(2026, 12, 7)
    assert warning_it({2026: 2}, date(2027, 2, 2), today) == (
        f"{RULE} Trasmessi il 02/02/2027, saranno scartati 2 documenti pagati nel 2026; tutti sono "
        "accettati se trasmessi dal 07/12/2026 al 01/02/2027.")
    assert warning_en(1960, {2026: 2}, date(2027, 2, 2), today) == (
        f"{EN_RULE} sent on 2027-02-02, documents of instance 1960 will be refused (2 paid in 2026); they are all "
        "taken from 2026-12-07 to 2027-02-01.")
    # past for today too: said as past
    assert warning_it({2026: 2}, date(2027, 3, 1), date(2027, 2, 2)) == (
        f"{RULE} Trasmessi il 01/03/2027, saranno scartati 2 documenti pagati nel 2026; tutti sarebbero stati "
        "accettati solo se trasmessi dal 01/01/2026 al 01/02/2027, un periodo già passato.")
    # a window that has not begun: from its first day
    assert warning_it({2027: 2}, date(2026, 12, 20), today) == (
        f"{RULE} Trasmessi il 20/12/2026, saranno scartati 2 documenti pagati nel 2027; tutti sono "
        "accettati se trasmessi dal 01/01/2027 al 31/01/2028.")
