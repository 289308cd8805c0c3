"""Switch dates for a software-house or interoperability change (seed 003).

A slot is a local date (Europe/Rome) and an `HH:MM-HH:MM` window. It is valid when:
- the window lies within 08:30-17:00 (seed 003: "compresa tra le ore 08:30 e le ore 17:00");
- the day is Monday to Friday, not an Italian public holiday ("festivi esclusi": the `holidays`
  package, which knows Easter Monday and, from 2026, 4 October) and not the patron-saint day of
  the structure's municipality (domain.md 8: Naples has 19 September; data in
  `contracts/data/onboarding/patron_saints.csv`, keyed by ISTAT code);
- it comes at least the notice after the later of the day the request became complete and the day the switch
  is asked: 3 weeks when only the Basic credentials change, 4 weeks for new OAuth2.0 credentials (a notice is
  given when asked: a request complete for months does not take a switch for tomorrow);
- it is after the day it is judged (`today`, in Italy): a day already past, or today, is never a switch day.
  A slot declared in the request's documents is asked when they were received, so its notice runs from the
  completion day even when the desk's last verdict comes later; it must still not be past by then.

Choice: the note says "3/4 weeks" and "4/6 weeks"; we take the LOWER bound as the hard minimum
and warn (without refusing) under the upper bound. A refusal always proposes the earliest valid
slot on or after the desired day, keeping the desired window when it is valid.
A municipality missing from the patron-saint data is not refused: the decision carries a
warning telling the desk to check that day by hand.

Reasons and warnings are Italian (the structure and the desk read them on the console), with days
written as Italian users write them (lunedì 21/09/2026) and holidays by their Italian names (the
`holidays` package's it_IT names: "Lunedì dell'Angelo", "Natale").
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path

import holidays

from services.onboarding.requirements import DATA_DIR, WINDOW

OFFICE_OPENS = time(8, 30)
OFFICE_CLOSES = time(17, 0)
# (hard minimum, upper bound) in weeks: seed 003, "preavviso minimo di 3/4 settimane" / "4/6 settimane"
NOTICE_WEEKS = {"basic": (3, 4), "new-oauth2": (4, 6)}
_WEEKDAYS = ("lunedì", "martedì", "mercoledì", "giovedì", "venerdì", "sabato", "domenica")
# what each credentials option changes, in the note's words: "aggiornamento delle sole credenziali Basic"
CREDENTIALS_TEXT = {
    "basic": "l'aggiornamento delle sole credenziali Basic",
    "new-oauth2": "nuove credenziali OAuth2.0",
}


@dataclass(frozen=True)
class PatronDay:
    istat: str
    municipality: str
    month: int
    day: int
    saint: str


def load_patron_days(path: Path = DATA_DIR / "patron_saints.csv") -> dict[str, PatronDay]:
    days = {}
    with path.open(encoding="utf-8", newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            try:
                entry = PatronDay(row["istat"], row["municipality"], int(row["month"]), int(row["day"]), row["saint"])
                date(2024, entry.month, entry.day)  # a leap year accepts every real day
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path.name} row {n}: {exc}") from exc
            days[entry.istat] = entry
    return days


@lru_cache(maxsize=64)
def _national_holidays(year: int) -> Mapping[date, str]:
    return dict(holidays.country_holidays("IT", years=year, language="it_IT").items())


def day_text(day: date) -> str:
    """A day as an Italian user reads it: "lunedì 21/09/2026"."""
    return f"{_WEEKDAYS[day.weekday()]} {day:%d/%m/%Y}"


@dataclass(frozen=True)
class SwitchWindow:
    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> SwitchWindow:
        match = WINDOW.match(text.strip())
        if not match:
            raise ValueError(f"fascia oraria {text!r} non nel formato OO:MM-OO:MM")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        try:
            return cls(time(h1, m1), time(h2, m2))
        except ValueError as exc:
            raise ValueError(f"fascia oraria {text!r} non valida: non è un orario della giornata") from exc

    def minutes(self) -> int:
        return (self.end.hour * 60 + self.end.minute) - (self.start.hour * 60 + self.start.minute)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class SwitchSlot:
    day: date
    window: SwitchWindow

    def __str__(self) -> str:
        return f"{day_text(self.day)} {self.window}"


@dataclass(frozen=True)
class SwitchDecision:
    accepted: bool
    requested: SwitchSlot
    reasons: tuple[str, ...]
    proposal: SwitchSlot  # = requested when accepted
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SwitchCalendar:
    patron_days: Mapping[str, PatronDay]

    def closed_because(self, day: date, municipality_istat: str) -> str | None:
        """Why no switch can happen on that day, or None when it can."""
        if day.weekday() >= 5:
            return f"{day_text(day)} non è un giorno lavorativo: lo switch si esegue dal lunedì al venerdì"
        national = _national_holidays(day.year).get(day)
        if national:
            return f"{day_text(day)} è un giorno festivo ({national})"
        patron = self.patron_days.get(municipality_istat)
        if patron and (day.month, day.day) == (patron.month, patron.day):
            return f"{day_text(day)} è la festa del santo patrono di {patron.municipality} ({patron.saint})"
        return None


def window_is_within_office_hours(window: SwitchWindow) -> str | None:
    if window.minutes() <= 0:
        return f"la fascia oraria {window} finisce prima di cominciare"
    if window.start < OFFICE_OPENS or window.end > OFFICE_CLOSES:
        return f"la fascia oraria {window} non è compresa tra le ore 08:30 e le ore 17:00"
    return None


def earliest_switch_day(complete_on: date, credentials: str, asked_on: date, today: date) -> date:
    """The first day the notice allows: the minimum notice after the later of the completion day and the day the
    switch is asked, and never before tomorrow (`today` is the day it is judged, in Italy)."""
    start = max(complete_on, asked_on)
    return max(start + timedelta(weeks=NOTICE_WEEKS[credentials][0]), today + timedelta(days=1))


def notice_is_respected(day: date, complete_on: date, credentials: str, asked_on: date, today: date) -> str | None:
    minimum = earliest_switch_day(complete_on, credentials, asked_on, today)
    if day >= minimum:
        return None
    if day <= today:
        when = "è oggi" if day == today else f"è già passato (oggi è {day_text(today)})"
        return f"{day_text(day)} {when}: lo switch si fissa per un giorno futuro, non prima di {day_text(minimum)}"
    weeks = NOTICE_WEEKS[credentials][0]
    since = (
        f"dalla richiesta dello switch ({day_text(asked_on)})"
        if asked_on > complete_on
        else f"dal completamento della richiesta ({day_text(complete_on)})"
    )
    days = (day - max(complete_on, asked_on)).days
    return (
        f"{day_text(day)} è a {days} {'giorno' if days == 1 else 'giorni'} {since}; per "
        f"{CREDENTIALS_TEXT[credentials]} è richiesto un preavviso minimo di {weeks} settimane: "
        f"non prima di {day_text(minimum)}"
    )


def _proposed_window(window: SwitchWindow) -> SwitchWindow:
    if window_is_within_office_hours(window) is None:
        return window
    minutes = window.minutes() if 0 < window.minutes() <= 510 else 120
    end = datetime.combine(date.min, OFFICE_OPENS) + timedelta(minutes=minutes)
    return SwitchWindow(OFFICE_OPENS, end.time())


def judge_switch(
    requested: SwitchSlot,
    credentials: str,
    complete_on: date,
    municipality_istat: str,
    calendar: SwitchCalendar,
    *,
    today: date,
    asked_on: date | None = None,
) -> SwitchDecision:
    """`today`: the day the slot is judged, in Italy; `asked_on`: the day the switch was asked (today, unless the
    slot was declared in the request's documents: then the day they were complete)."""
    asked = today if asked_on is None else asked_on
    if credentials not in NOTICE_WEEKS:
        raise ValueError(f"credenziali {credentials!r} sconosciute: previste {', '.join(NOTICE_WEEKS)}")
    reasons = [
        r
        for r in (
            window_is_within_office_hours(requested.window),
            calendar.closed_because(requested.day, municipality_istat),
            notice_is_respected(requested.day, complete_on, credentials, asked, today),
        )
        if r
    ]
    warnings = []
    if municipality_istat not in calendar.patron_days:
        warnings.append(
            f"il santo patrono del comune con codice ISTAT {municipality_istat} non è nei nostri dati: "
            "verificare a mano che il giorno non sia la sua festa"
        )
    day = max(requested.day, earliest_switch_day(complete_on, credentials, asked, today))
    while calendar.closed_because(day, municipality_istat):
        day += timedelta(days=1)
    proposal = SwitchSlot(day, _proposed_window(requested.window)) if reasons else requested
    lower, upper = NOTICE_WEEKS[credentials]
    if proposal.day < max(complete_on, asked) + timedelta(weeks=upper):
        warnings.append(
            f"preavviso inferiore a {upper} settimane (la nota indica {lower}/{upper} settimane per "
            f"{CREDENTIALS_TEXT[credentials]}): lo sportello potrebbe avere bisogno del preavviso più lungo"
        )
    return SwitchDecision(not reasons, requested, tuple(reasons), proposal, tuple(warnings))
