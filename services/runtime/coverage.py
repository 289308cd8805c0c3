"""Which instance covers a deadline (contracts/deadlines.py), per entity: read from the instance read
model. Shared by `flows deadlines`, the console's Scadenze page and the ops metrics."""

from __future__ import annotations

import asyncpg

from contracts.deadlines import COVERING_STATES, Deadline


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
