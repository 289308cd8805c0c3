"""Which instance covers a deadline (contracts/deadlines.py), per entity: read from the instance read
model. Shared by `flows deadlines`, the console's Scadenze page and the ops metrics."""

from __future__ import annotations

import asyncpg

from contracts.deadlines import Deadline, covering_states
from services.loader.catalogue import known_enti


async def coverage(pool: asyncpg.Pool, items: list[Deadline], ente: str | None,
                   enti: list[str] | None = None) -> list[tuple[str, Deadline, int | None]]:
    """(ente, deadline, covering instance or None) for each of `items` (contracts.deadlines): of `ente`, or of every
    one of `enti`, or of every entity the platform knows (its catalogue, and any other that has data). An entity
    that has loaded nothing yet is listed too: it is the one most likely to miss its deadline (it used to be left
    out whenever another had data)."""
    if ente:
        entes = [ente]
    elif enti is not None:
        entes = sorted(set(enti))
    else:
        with_data = {r["ente"] for r in await pool.fetch(
            "SELECT DISTINCT ente FROM instance_list UNION SELECT DISTINCT ente FROM source_service")}
        entes = sorted(known_enti() | with_data)
    out = []
    for e in entes:
        for d in items:
            covering = await pool.fetchval(
                """SELECT instance FROM instance_list WHERE flow_type = $1 AND ente = $2
                     AND period_start <= $3 AND period_end >= $4 AND state = ANY($5::text[])
                   ORDER BY instance DESC LIMIT 1""",
                d.flow_type, e, d.period_start, d.period_end, list(covering_states(d.flow_type)))
            out.append((e, d, covering))
    return out
