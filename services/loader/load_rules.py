"""The rules a load request must meet to become an instance. The loader owns them: it refuses a request that breaks
one (no instance; the command goes to flows.load-requested.dlq with the reason, as for an unknown entity), and the
CLI, the console's form and its API ask the same function before sending, so an operator is told at once, next to
the field, rather than by a dead letter.

A period must be over when its load RUNS: the source data of a month that has not ended is not all there, and a
load of it came back Checked with what little there was (nothing, for a month not yet begun, with a
NO_SOURCE_DATA warning) as if the month were done. "When it runs" is now, or the scheduled start when that is
later: a load asked on 20 November for November, scheduled for 1 December at 06:00, is right; the same load with
no start time, or one still in November, is not. Days are Italy's (a period ends at midnight in Rome).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from contracts.deadlines import ITALY
from contracts.italian import italian_date


@dataclass(frozen=True)
class PeriodNotOver:
    """A load whose period has not ended on the day it would run."""

    period_end: date
    runs_on: date  # the Italian day the load would start
    scheduled: bool  # it would start at its scheduled time (later than now)

    @property
    def first_day(self) -> date:
        """The first day the period can be loaded."""
        return self.period_end + timedelta(days=1)

    def reason(self) -> str:
        """In English, for the CLI, the API and the dead letter (each names its own field before it)."""
        when = "its scheduled start" if self.scheduled else "today"
        return (f"the period is not over on {self.runs_on} ({when}, Italian time), when the load would run: a "
                f"period that has not ended cannot be loaded; load it from {self.first_day} on, or schedule its "
                "start then")

    def italian(self) -> str:
        """In Italian, for the console's form (beside Fine periodo di riferimento)."""
        when = "all'avvio pianificato, il" if self.scheduled else "oggi,"
        return (f"Il periodo finisce il {italian_date(self.period_end)}: {when} {italian_date(self.runs_on)}, non è "
                "ancora concluso, e un periodo non concluso non si può caricare. Lo carichi dal "
                f"{italian_date(self.first_day)}, oppure pianifichi l'avvio da quel giorno.")


def period_not_over(period_end: date, scheduled_at: datetime | None,
                    now: datetime | None = None) -> PeriodNotOver | None:
    """Why a load of a period ending on `period_end`, to start at `scheduled_at` (None: at once), cannot be made
    `now`; None when it can. A scheduled time in the past starts the load at once, as the loader does."""
    now = now or datetime.now(UTC)
    if scheduled_at is not None and scheduled_at.tzinfo is None:  # a time without a zone is Italy's, as everywhere
        scheduled_at = scheduled_at.replace(tzinfo=ITALY)
    scheduled = scheduled_at is not None and scheduled_at > now
    runs_at = scheduled_at if scheduled and scheduled_at is not None else now
    runs_on = runs_at.astimezone(ITALY).date()
    if period_end < runs_on:
        return None
    return PeriodNotOver(period_end=period_end, runs_on=runs_on, scheduled=scheduled)
