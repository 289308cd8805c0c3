"""The loader's rule on a load's period: over on the Italian day the load would run, now or at its scheduled start."""

from __future__ import annotations

from datetime import UTC, date, datetime

from contracts.deadlines import ITALY
from services.loader.load_rules import period_not_over

NOVEMBER_END = date(2026, 11, 30)


def test_a_month_is_loadable_from_the_first_italian_minute_of_the_next_day() -> None:
    # 23:30 UTC on 30 November is already 1 December in Rome; 22:30 UTC is still 30 November there
    assert period_not_over(NOVEMBER_END, None, datetime(2026, 11, 30, 23, 30, tzinfo=UTC)) is None
    refused = period_not_over(NOVEMBER_END, None, datetime(2026, 11, 30, 22, 30, tzinfo=UTC))
    assert refused is not None and (refused.runs_on, refused.scheduled) == (NOVEMBER_END, False)
    assert refused.first_day == date(2026, 12, 1)


def test_a_month_not_yet_begun_is_not_over_either() -> None:
    refused = period_not_over(date(2027, 1, 31), None, datetime(2026, 12, 5, 9, tzinfo=UTC))
    assert refused is not None
    assert refused.reason() == ("the period is not over on 2026-12-05 (today, Italian time), when the load would run: "
                                "a period that has not ended cannot be loaded; load it from 2027-02-01 on, or "
                                "schedule its start then")
    assert refused.italian() == ("Il periodo finisce il 31/01/2027: oggi, 05/12/2026, non è ancora concluso, e un "
                                 "periodo non concluso non si può caricare. Lo carichi dal 01/02/2027, oppure "
                                 "pianifichi l'avvio da quel giorno.")


def test_a_load_asked_in_advance_is_judged_at_its_scheduled_start() -> None:
    asked = datetime(2026, 11, 20, 10, tzinfo=UTC)
    assert period_not_over(NOVEMBER_END, datetime(2026, 12, 1, 6, tzinfo=ITALY), asked) is None
    too_soon = period_not_over(NOVEMBER_END, datetime(2026, 11, 30, 23, 0, tzinfo=ITALY), asked)
    assert too_soon is not None and too_soon.scheduled and too_soon.runs_on == NOVEMBER_END
    assert "all'avvio pianificato, il 30/11/2026" in too_soon.italian()
    assert "(its scheduled start, Italian time)" in too_soon.reason()
    # a time without a zone is Italy's, as the CLI and the console read it
    assert period_not_over(NOVEMBER_END, datetime(2026, 12, 1, 0, 30), asked) is None


def test_a_scheduled_start_already_past_runs_now_and_is_judged_now() -> None:
    now = datetime(2026, 11, 25, 10, tzinfo=UTC)
    refused = period_not_over(NOVEMBER_END, datetime(2026, 11, 1, 6, tzinfo=ITALY), now)
    assert refused is not None and not refused.scheduled and refused.runs_on == date(2026, 11, 25)


def test_a_scheduled_start_at_this_very_moment_runs_now_as_the_loader_does() -> None:
    """The loader schedules a load only when its start is LATER than now (handlers.py: `scheduled_at > now`); a start
    at this very moment runs at once, so the refusal speaks of today, not of a scheduled start."""
    now = datetime(2026, 11, 25, 10, tzinfo=UTC)
    refused = period_not_over(NOVEMBER_END, now, now)
    assert refused is not None and not refused.scheduled and refused.runs_on == date(2026, 11, 25)
    assert "(today, Italian time)" in refused.reason()
