"""`flows deadlines`: when each flow is due, per entity, and whether an instance already covers it.
The rules are contracts/deadlines.py, shared with the console's Scadenze page."""

from __future__ import annotations

from contracts.deadlines import (
    DeadlineDataInvalid,
    DeadlineDataMissing,
    deadlines_for_month,
    default_month,
    italian_today,
    status,
)
from services.runtime.coverage import coverage


async def show(ente: str | None, month: str | None) -> None:
    from services.cli.common import UserError, console, database, table

    today = italian_today()
    year, mon = (int(x) for x in month.split("-")) if month else default_month(today)
    try:
        items = deadlines_for_month(year, mon)
    except (DeadlineDataMissing, DeadlineDataInvalid) as exc:
        raise UserError(str(exc)) from exc
    async with database() as pool:
        found = await coverage(pool, items, ente)
    labels = {"covered": "covered by {}", "late": "[red]LATE[/]", "due-soon": "[yellow]due within 7 days[/]",
              "open": "open"}
    rows = [(e, d.flow_type, f"{d.period_start}..{d.period_end}", d.due.isoformat(),
             labels[status(d, covering, today)].format(covering)) for e, d, covering in found]
    console.print(table(f"Deadlines for periods ending {year:04d}-{mon:02d}",
                        ["ente", "flow", "period", "due", "status"], rows))
