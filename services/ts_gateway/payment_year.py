"""The payment years of a 730 instance against the day Sistema TS receives it: what the operator is told before
sending.

ws-asincrono-spec-v2.5, documentoSpesa, dataPagamento: "La data di pagamento determina l'anno d'imposta di
riferimento ... L'anno della data di pagamento non può essere diverso dall'anno in corso (tranne che per il mese di
gennaio in cui è possibile acquisire i pagamenti dell'anno precedente)." So a document paid in 2026 is taken on any
day of 2026 and in January 2027, never later; one paid in 2020 and sent today is refused. The instance's period says
nothing of it (a load may be made, or sent, years late: the seed's list holds 730 instances of 2020), and the
platform can send on a later day the operator chooses (the transmission date), so the rule is asked of the day the
file is sent: the console's send page of today's date, `flows send-730` of the transmission date given.

Said, not refused, as the documents TS already has (services.ts_gateway.overlap): the rule is TS's, applied by TS to
each document, and the operator may have reasons this module cannot see (a file TS is known to take late, by an
extension the law gave). The January of the rule is the spec's, and it ends with the 730's own deadline for that
year's data when that is later: 31 January moves to the next working day when it falls on a weekend or a holiday
(contracts/data/deadlines.toml: 2025 data are due on Monday 2 February 2026), and a file sent by its deadline is
not refused for being late. So this module and the Scadenze page name the same last day.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import date
from typing import Any

from contracts.deadlines import DeadlineDataInvalid, DeadlineDataMissing, deadlines_for_month

_SQL = """
SELECT extract(year FROM d.payment_date)::int AS year, count(*) AS documents
FROM instance_list i JOIN snapshot_payment_document d ON d.snapshot_id = i.source_instance
WHERE i.instance = $1 AND i.flow_type = 'FLUSSO_730'
GROUP BY 1 ORDER BY 1"""


async def payment_years(pool: Any, instance: int) -> dict[int, int]:
    """How many documents of the instance's snapshot were paid in each year (none loaded: {})."""
    return {int(r["year"]): int(r["documents"]) for r in await pool.fetch(_SQL, instance)}


@functools.cache
def last_day_for(year: int) -> date:
    """The last day TS takes payments of `year`: 31 January after it, or the 730's deadline for `year`'s data
    (contracts.deadlines, the period ending in December) when that is later; 31 January when the data has none."""
    january = date(year + 1, 1, 31)
    try:
        due = [d.due for d in deadlines_for_month(year, 12, flow_types=["FLUSSO_730"])]
    except (DeadlineDataMissing, DeadlineDataInvalid):
        return january
    return max([january, *due])


def accepted_years(on: date) -> tuple[int, ...]:
    """The payment years Sistema TS takes on the day `on`: its own, and the year before until last_day_for it (in
    January, and up to its 730 deadline moved past a weekend)."""
    return (on.year - 1, on.year) if on <= last_day_for(on.year - 1) else (on.year,)


def refused_on(years: Mapping[int, int], on: date) -> dict[int, int]:
    """Of `years` (payment year -> documents), those TS refuses if the file reaches it on `on`."""
    accepted = accepted_years(on)
    return {year: n for year, n in sorted(years.items()) if year not in accepted}


def sending_window(years: Mapping[int, int]) -> tuple[date, date] | None:
    """The days on which TS takes every document of `years` (first, last), None when no day does (the payments span
    more than two years, or there are none)."""
    if not years:
        return None
    first, last = min(years), max(years)
    if last == first:
        return date(first, 1, 1), last_day_for(first)
    if last == first + 1:
        return date(last, 1, 1), last_day_for(first)
    return None


def _years_it(years: Mapping[int, int]) -> str:
    parts = [f"{n} {'documento pagato' if n == 1 else 'documenti pagati'} nel {year}" for year, n in years.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " e " + parts[-1]


def _still_open(window: tuple[date, date], today: date) -> tuple[date, date] | None:
    """The days of `window` still to come from `today` on (None: it is past). A transmission date chosen later than
    today may miss a window that today is in: the operator can still send within it."""
    return (max(window[0], today), window[1]) if window[1] >= today else None


def warning_it(years: Mapping[int, int], on: date, today: date | None = None) -> str | None:
    """What the console's send page says, in Italian, of sending on `on` (None when TS takes every document); the
    days that would take them all are said from `today` on (by default `on`)."""
    refused = refused_on(years, on)
    if not refused:
        return None
    window = sending_window(years)
    open_days = _still_open(window, today or on) if window is not None else None
    if window is None:
        when = ("nessun giorno di trasmissione li fa accettare tutti: i pagamenti sono di più di due anni "
                f"({', '.join(str(y) for y in years)}); carichi periodi separati")
    elif open_days is None:
        when = (f"tutti sarebbero stati accettati solo se trasmessi dal {window[0]:%d/%m/%Y} al {window[1]:%d/%m/%Y}, "
                "un periodo già passato")
    else:
        when = f"tutti sono accettati se trasmessi dal {open_days[0]:%d/%m/%Y} al {open_days[1]:%d/%m/%Y}"
    return (f"Sistema TS accetta un documento di spesa solo nell'anno del pagamento e, per i pagamenti dell'anno "
            f"precedente, nel mese di gennaio (fino alla scadenza del 730, se spostata al primo giorno lavorativo). "
            f"Trasmessi il {on:%d/%m/%Y}, saranno scartati {_years_it(refused)}; "
            f"{when}.")


def warning_en(instance: int, years: Mapping[int, int], on: date, today: date | None = None) -> str | None:
    """What `flows send-730` prints of sending on `on` (the CLI's English), None when TS takes every document; the
    days that would take them all are said from `today` on (by default `on`)."""
    refused = refused_on(years, on)
    if not refused:
        return None
    counted = "; ".join(f"{n} paid in {year}" for year, n in refused.items())
    window = sending_window(years)
    open_days = _still_open(window, today or on) if window is not None else None
    if window is None:
        when = "no transmission day takes them all: the payments span more than two years"
    elif open_days is None:
        when = f"they would all have been taken only from {window[0]} to {window[1]}, which is past"
    else:
        when = f"they are all taken from {open_days[0]} to {open_days[1]}"
    return (f"Sistema TS takes a payment document only in its payment year and, for the year before, in January "
            f"(up to the 730's deadline when it moves to the next working day): "
            f"sent on {on}, documents of instance {instance} will be refused ({counted}); {when}.")
