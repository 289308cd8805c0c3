"""`flows deadlines`: when each flow is due, per entity, and whether an instance already covers it.
The rules are contracts/deadlines.py, shared with the console's Scadenze page."""

from __future__ import annotations

from contracts.deadlines import default_month, italian_today, known_deadlines_for_month, status
from services.runtime.coverage import coverage


async def show(ente: str | None, month: str | None) -> None:
    """The table of the flows whose due dates the data has; those it lacks (or cannot read) are named, and only
    when it has none at all is it an error (exit 1)."""
    from services.cli.common import UserError, console, database, err, table

    today = italian_today()
    year, mon = (int(x) for x in month.split("-")) if month else default_month(today)
    items, problems = known_deadlines_for_month(year, mon)
    if problems and not items:
        raise UserError("; ".join(str(exc) for exc in problems))
    for exc in problems:
        err.print(f"warning: {exc}; the other flows are listed", markup=False, highlight=False)
    async with database() as pool:
        found = await coverage(pool, items, ente)
    labels = {"covered": "covered by {}", "late": "[red]LATE[/]", "due-soon": "[yellow]due within 7 days[/]",
              "open": "open"}
    rows = [(e, d.flow_type, f"{d.period_start}..{d.period_end}", d.due.isoformat(),
             labels[status(d, covering, today)].format(covering)) for e, d, covering in found]
    console.print(table(f"Deadlines for periods ending {year:04d}-{mon:02d}",
                        ["ente", "flow", "period", "due", "status"], rows))
