"""`flows deadlines`: when each flow is due, per entity, and whether an instance already covers it.
The rules are contracts/deadlines.py, shared with the console's Scadenze page."""

from __future__ import annotations

from datetime import date

import asyncpg

from contracts.deadlines import (
    COVERING_STATES,
    Deadline,
    DeadlineDataInvalid,
    DeadlineDataMissing,
    deadlines_for_month,
    default_month,
    status,
)


async def coverage(pool: asyncpg.Pool, items: list[Deadline], ente: str | None,
                   enti: list[str] | None = None) -> list[tuple[str, Deadline, int | None]]:
    """(ente, deadline, covering instance or None) for each of `items` (contracts.deadlines): of
    `ente`, or of `enti`, or of every entity known."""
    if ente:
        entes = [ente]
    else:
        entes = [r["ente"] for r in await pool.fetch(
            "SELECT DISTINCT ente FROM instance_list UNION SELECT DISTINCT ente FROM source_service ORDER BY 1")]
        if enti is not None:
            entes = [e for e in entes if e in enti] or sorted(enti)
    out = []
    for e in entes:
        for d in items:
            covering = await pool.fetchval(
                """SELECT instance FROM instance_list WHERE flow_type = $1 AND ente = $2
                     AND period_start <= $3 AND period_end >= $4 AND state = ANY($5::text[])
                   ORDER BY instance DESC LIMIT 1""",
                d.flow_type, e, d.period_start, d.period_end, list(COVERING_STATES))
            out.append((e, d, covering))
    return out


async def show(ente: str | None, month: str | None) -> None:
    from services.cli.common import UserError, console, database, table

    today = date.today()
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
    if not found:
        rows = [("(no entity yet)", "", "", "", "")]
    console.print(table(f"Deadlines for periods ending {year:04d}-{mon:02d}",
                        ["ente", "flow", "period", "due", "status"], rows))
