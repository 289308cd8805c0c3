"""`flows deadlines`: when each flow is due, per entity, and whether an instance already covers it.

The rules are data (`contracts/data/deadlines.toml`, per flow type and year) because the law moves
them; this module only reads them. Covered = a Formatted (or, for the 730, Confirmed / Waiting
feedback) instance of that flow type and entity whose period contains the due period.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import holidays

DATA = Path(__file__).resolve().parents[2] / "contracts" / "data" / "deadlines.toml"
COVERING_STATES = ("Formatted", "Waiting feedback", "Confirmed", "Confirmed with errors")


@dataclass(frozen=True)
class Deadline:
    flow_type: str
    period_start: date
    period_end: date
    due: date


@lru_cache(maxsize=1)
def rules(path: Path = DATA) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def next_working_day(day: date) -> date:
    it = holidays.country_holidays("IT", years=[day.year, day.year + 1])
    while day.weekday() >= 5 or day in it:
        day += timedelta(days=1)
    return day


def _month_end(year: int, month: int) -> date:
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    return nxt - timedelta(days=1)


def deadlines_for_month(year: int, month: int, rule_book: dict[str, Any] | None = None) -> list[Deadline]:
    """The deadlines whose reference period ends in (year, month)."""
    book = rule_book or rules()
    out: list[Deadline] = []
    start, end = date(year, month, 1), _month_end(year, month)
    for flow_type, rule in book.items():
        kind = rule["kind"]
        if kind == "monthly":
            key = f"{year:04d}-{month:02d}"
            override = rule.get("overrides", {}).get(key)
            due = date.fromisoformat(override) if override else date(year + (month == 12), month % 12 + 1,
                                                                      int(rule["day"]))
            out.append(Deadline(flow_type, start, end, next_working_day(due)))
        elif kind == "calendar":
            for p in rule.get("periods", []):
                p_end = date.fromisoformat(p["end"])
                if p_end.year == year and p_end.month == month:
                    out.append(Deadline(flow_type, date.fromisoformat(p["start"]), p_end,
                                        next_working_day(date.fromisoformat(p["due"]))))
        elif kind == "by_year":
            for r in rule["rules"]:
                if not (r.get("from_year", 0) <= year <= r.get("until_year", 9999)):
                    continue
                if r["kind"] == "semester" and month in (6, 12):
                    mm, dd = (r["first_half_due"] if month == 6 else r["second_half_due"]).split("-")
                    due = date(year + (month == 12), int(mm), int(dd))
                    out.append(Deadline(flow_type, date(year, month - 5, 1), end, next_working_day(due)))
                elif r["kind"] == "annual" and month == 12:
                    due = date(year + 1, int(r["month"]), int(r["day"]))
                    out.append(Deadline(flow_type, date(year, 1, 1), end, next_working_day(due)))
    return sorted(out, key=lambda d: (d.due, d.flow_type))


async def show(ente: str | None, month: str | None) -> None:
    from services.cli.common import console, database, table

    today = date.today()
    if month:
        year, mon = (int(x) for x in month.split("-"))
    else:
        year, mon = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
    items = deadlines_for_month(year, mon)
    async with database() as pool:
        entes = [ente] if ente else [r["ente"] for r in await pool.fetch(
            "SELECT DISTINCT ente FROM instance_list UNION SELECT DISTINCT ente FROM source_service ORDER BY 1")]
        rows = []
        for e in entes or ["(no entity yet)"]:
            for d in items:
                covering = await pool.fetchval(
                    """SELECT instance FROM instance_list WHERE flow_type = $1 AND ente = $2
                         AND period_start <= $3 AND period_end >= $4 AND state = ANY($5::text[])
                       ORDER BY instance DESC LIMIT 1""",
                    d.flow_type, e, d.period_start, d.period_end, list(COVERING_STATES))
                late = covering is None and today > d.due
                status = f"covered by {covering}" if covering else ("[red]LATE[/]" if late else "open")
                rows.append((e, d.flow_type, f"{d.period_start}..{d.period_end}", d.due.isoformat(), status))
    console.print(table(f"Deadlines for periods ending {year:04d}-{mon:02d}",
                        ["ente", "flow", "period", "due", "status"], rows))
