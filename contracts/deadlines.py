"""The deadline rules: when each flow is due, per entity, and what covers it. Pure (no I/O but
reading the rule data); `flows deadlines` and the console's Scadenze page both use it.

The rules are data (`contracts/data/deadlines.toml`, one table per flow type and data year) because
the law moves them; this module only reads them. A year the data does not list is an error naming
the flow type and the year, never a date guessed from another year. Covered = an instance of that flow type and
entity whose period contains the due period, Formatted for a flow the platform exports, sent to Sistema TS (Waiting
feedback, Confirmed, Confirmed with errors) for the 730, which it sends itself (`covering_states`).
"""

from __future__ import annotations

import calendar
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

DATA = Path(__file__).resolve().parent / "data" / "deadlines.toml"
DATA_NAME = "contracts/data/deadlines.toml"
# Tabella 1 (seed 000) dates the transmission to the competent body. A flow the platform only exports (C, C PACC,
# MEF, ALPI TA: the operator uploads the files) is covered once its files are Formatted, as far as the platform can
# see; the 730, which the platform sends to Sistema TS itself, once Sistema TS has it. A Formatted 730 is a file
# nobody has sent: it covers nothing; a Rejected one was refused.
EXPORTED_COVERED_BY = ("Formatted",)
SENT_COVERED_BY = ("Waiting feedback", "Confirmed", "Confirmed with errors")
ITALY = ZoneInfo("Europe/Rome")


def covering_states(flow_type: str) -> tuple[str, ...]:
    """The states in which an instance of `flow_type` covers its deadline."""
    # Imported here: contracts.states loads every event model (contracts.flows, ~0.25 s), and most importers of this
    # module (the `flows` commands) want a date or a zone from it, not the coverage rule.
    from contracts.states import SENDABLE_FLOW_TYPES

    return SENT_COVERED_BY if flow_type in SENDABLE_FLOW_TYPES else EXPORTED_COVERED_BY


def italian_today(now: datetime | None = None) -> date:
    """Today's date in Italy: the day the deadlines, a 730's transmission date and Sistema TS count in, whatever
    the host's time zone. Services run in UTC containers, where `date.today()` is still yesterday for the
    first hour or two of every Italian day (23:00 UTC in winter is 00:00 in Rome)."""
    return (now or datetime.now(UTC)).astimezone(ITALY).date()


def italian_time(when: datetime, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A recorded instant as the operators read it, in Italian time, whatever zone it comes in (PostgreSQL hands
    timestamps over in its session's zone, UTC on these hosts): the CLI's tables and the console's `ora` filter."""
    return when.astimezone(ITALY).strftime(fmt)


def italian_day_start_sql(day: str) -> str:
    """SQL for the instant an Italian day begins (a timestamptz), `day` being SQL for a date (a parameter such as
    `$2::date`). A search "created from / to" a date means Italian days, as the console and the CLI show times in
    Italy: `created_at >= $2::date` would start the day at the database session's midnight (UTC on these hosts, so an
    instance made at 00:30 in Rome would fall on the day before)."""
    return f"(({day})::timestamp AT TIME ZONE '{ITALY.key}')"


@dataclass(frozen=True)
class Deadline:
    flow_type: str
    period_start: date
    period_end: date
    due: date


class DeadlineDataMissing(LookupError):
    """The deadline data has no rule for these flow types in this data year."""

    def __init__(self, year: int, flow_types: Iterable[str], detail: str | None = None) -> None:
        self.year = year
        self.flow_types = tuple(flow_types)
        names = ", ".join(self.flow_types)
        what = detail or f"add a [{self.flow_types[0]}.years.{year}] table with the official dates"
        super().__init__(f"no deadline data for {names} in {year} in {DATA_NAME}: {what} "
                         "(deadlines change by law: they are never guessed from another year)")


class DeadlineDataInvalid(ValueError):
    """The deadline data for a flow type and year cannot be read as a rule."""

    def __init__(self, flow_type: str, year: int, message: str) -> None:
        self.flow_type, self.year = flow_type, year
        super().__init__(f"{DATA_NAME}, [{flow_type}.years.{year}]: {message}")


@lru_cache(maxsize=1)
def rules(path: Path = DATA) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def next_working_day(day: date) -> date:
    # Imported here, at the first working day asked for: the package loads every country's calendars (~0.2 s of CPU),
    # and most processes that import this module (every `flows` command) never ask.
    import holidays

    it = holidays.country_holidays("IT", years=[day.year, day.year + 1])
    while day.weekday() >= 5 or day in it:
        day += timedelta(days=1)
    return day


def _month_end(year: int, month: int) -> date:
    return date(year, month, calendar.monthrange(year, month)[1])


def _iso(flow_type: str, year: int, rule: dict[str, Any], key: str) -> date:
    try:
        return date.fromisoformat(str(rule[key]))
    except KeyError:
        raise DeadlineDataInvalid(flow_type, year, f"`{key}` is missing") from None
    except ValueError:
        raise DeadlineDataInvalid(flow_type, year, f"`{key}` = {rule[key]!r} is not a YYYY-MM-DD date") from None


def _monthly_due(flow_type: str, year: int, month: int, rule: dict[str, Any]) -> date:
    table = rule.get("calendar")
    if table is not None:
        if "day" in rule or "months_after" in rule:
            raise DeadlineDataInvalid(flow_type, year, "give either a `calendar` or `day`/`months_after`, not both")
        key = f"{year:04d}-{month:02d}"
        stray = sorted(k for k in table if not k.startswith(f"{year:04d}-"))
        if stray:
            raise DeadlineDataInvalid(flow_type, year, f"the calendar lists months of another year: {stray}")
        if key not in table:
            raise DeadlineDataMissing(year, [flow_type], f"the {year} calendar of {flow_type} lists no due date "
                                                        f"for {key}; it must list all twelve months")
        return _iso(flow_type, year, table, key)
    try:
        day, months_after = int(rule["day"]), int(rule.get("months_after", 1))
    except (KeyError, TypeError, ValueError):
        raise DeadlineDataInvalid(flow_type, year, "a monthly rule needs an integer `day` (and optionally "
                                                   "`months_after`), or a `calendar`") from None
    if not 1 <= day <= 31 or months_after < 1:
        raise DeadlineDataInvalid(flow_type, year, f"day = {day} must be 1..31 and months_after = "
                                                   f"{months_after} at least 1")
    carry, index = divmod(month - 1 + months_after, 12)
    due_year, due_month = year + carry, index + 1
    return date(due_year, due_month, min(day, calendar.monthrange(due_year, due_month)[1]))


def _deadlines_of(flow_type: str, year: int, month: int, rule: dict[str, Any]) -> list[Deadline]:
    """The deadlines of one flow type whose reference period ends in (year, month)."""
    start, end = date(year, month, 1), _month_end(year, month)
    kind = rule.get("kind")
    found: list[tuple[date, date, date]] = []  # (period start, period end, due before moving)
    if kind == "monthly":
        found.append((start, end, _monthly_due(flow_type, year, month, rule)))
    elif kind == "calendar":
        for n, p in enumerate(rule.get("periods", []), start=1):
            p_start, p_end = _iso(flow_type, year, p, "start"), _iso(flow_type, year, p, "end")
            if p_end.year != year or p_start > p_end:
                raise DeadlineDataInvalid(flow_type, year, f"period {n} ({p_start}..{p_end}) must end in {year} "
                                                           "and start before it ends")
            if p_end.month == month:
                found.append((p_start, p_end, _iso(flow_type, year, p, "due")))
    elif kind == "semester":
        if month in (6, 12):
            due = _iso(flow_type, year, rule, "first_half_due" if month == 6 else "second_half_due")
            found.append((date(year, month - 5, 1), end, due))
    elif kind == "annual":
        if month == 12:
            found.append((date(year, 1, 1), end, _iso(flow_type, year, rule, "due")))
    else:
        raise DeadlineDataInvalid(flow_type, year, f"unknown kind {kind!r} (monthly, calendar, semester, annual)")
    out = []
    for p_start, p_end, due in found:
        if due <= p_end:
            raise DeadlineDataInvalid(flow_type, year, f"due date {due} is not after the period {p_start}..{p_end}")
        out.append(Deadline(flow_type, p_start, p_end, next_working_day(due)))
    return out


def deadlines_for_month(year: int, month: int, rule_book: dict[str, Any] | None = None,
                        flow_types: Iterable[str] | None = None) -> list[Deadline]:
    """The deadlines whose reference period ends in (year, month), of every flow type (or of `flow_types`).

    Raises DeadlineDataMissing, naming the flow types and the year, when the data has no rule for
    that data year (or for a flow type asked for).
    """
    if not 1 <= month <= 12:
        raise ValueError(f"month {month} is not 1..12")
    book = rule_book if rule_book is not None else rules()
    wanted = list(book) if flow_types is None else list(flow_types)
    missing = [f for f in wanted if str(year) not in book.get(f, {}).get("years", {})]
    if missing:
        raise DeadlineDataMissing(year, missing)
    out = [d for f in wanted for d in _deadlines_of(f, year, month, book[f]["years"][str(year)])]
    return sorted(out, key=lambda d: (d.due, d.flow_type))


def known_deadlines_for_month(year: int, month: int, rule_book: dict[str, Any] | None = None
                              ) -> tuple[list[Deadline], list[DeadlineDataMissing | DeadlineDataInvalid]]:
    """deadlines_for_month of every flow type whose data it can read, and what it cannot: one DeadlineDataMissing
    naming every flow type without data for the year, one DeadlineDataInvalid per unreadable table. A flow type
    whose year is not listed yet (the MEF's official calendar comes out later than the others' rules) no longer
    hides the deadlines of every other flow."""
    book = rule_book if rule_book is not None else rules()
    found: list[Deadline] = []
    missing: list[str] = []
    invalid: list[DeadlineDataMissing | DeadlineDataInvalid] = []
    for flow_type in book:
        try:
            found += deadlines_for_month(year, month, book, flow_types=[flow_type])
        except DeadlineDataMissing:
            missing.append(flow_type)
        except DeadlineDataInvalid as exc:
            invalid.append(exc)
    problems = ([DeadlineDataMissing(year, missing)] if missing else []) + invalid
    return sorted(found, key=lambda d: (d.due, d.flow_type)), problems


DUE_SOON_DAYS = 7


def status(deadline: Deadline, covering: int | None, today: date) -> str:
    """covered, late (past due, not covered), due-soon (within DUE_SOON_DAYS, not covered) or open."""
    if covering is not None:
        return "covered"
    if today > deadline.due:
        return "late"
    if (deadline.due - today).days <= DUE_SOON_DAYS:
        return "due-soon"
    return "open"


def month_before(day: date, back: int) -> tuple[int, int]:
    """(year, month) `back` months before the month of `day` (0: its own)."""
    index = day.year * 12 + day.month - 1 - back
    return index // 12, index % 12 + 1


def default_month(today: date, rule_book: dict[str, Any] | None = None) -> tuple[int, int]:
    """The month whose deadlines matter now: the previous one, unless the one before it still has a deadline due
    today or later. That is the 730 of a year, whose period ends in December and which is due on 31 January moved
    past a weekend: on 1 or 2 February the Scadenze page and `flows deadlines` would have opened on January and left
    out the 730 due that very day."""
    previous, before = month_before(today, 1), month_before(today, 2)
    due, _ = known_deadlines_for_month(*before, rule_book=rule_book)
    return before if any(d.due >= today for d in due) else previous
