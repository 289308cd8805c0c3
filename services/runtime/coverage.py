"""Which instance covers a deadline (contracts/deadlines.py), per entity: read from the instance read
model. Shared by `flows deadlines`, the console's Scadenze page and the ops metrics."""

from __future__ import annotations

import asyncpg

from contracts.deadlines import Deadline, covering_states
from services.loader.catalogue import known_enti

# The entities with data: those with an instance, and those with source data. source_service is the platform's
# largest table (millions of rows a month): its entities are read by a skip scan of its (ente, delivery_date)
# index, one probe per entity, not by a DISTINCT over every row at each refresh of the ops metrics.
_ENTI_WITH_DATA = """
    WITH RECURSIVE sourced AS (
        SELECT min(ente) AS ente FROM source_service
        UNION ALL
        SELECT (SELECT min(s.ente) FROM source_service s WHERE s.ente > sourced.ente)
        FROM sourced WHERE sourced.ente IS NOT NULL)
    SELECT ente FROM sourced WHERE ente IS NOT NULL
    UNION SELECT ente FROM instance_list"""

# Every (entity, deadline) pair in one statement, in the order asked. A deadline is covered when the periods of the
# entity's instances of its flow type whose state covers it (covering_states: a 730 once Sistema TS has it, the other
# flows once Formatted) together hold every day of its period: one instance of the whole period, or several of its
# parts (the seed's 730 instances are monthly, against a yearly deadline; a month may be loaded in two halves). The
# instance named is the latest of them; NULL when some day is left. One pass over the instances, not a query per pair.
_COVERING = """
    WITH d AS (SELECT * FROM unnest($1::text[], $2::date[], $3::date[])
                        WITH ORDINALITY AS d(flow_type, period_start, period_end, n)),
         e AS (SELECT * FROM unnest($4::text[]) WITH ORDINALITY AS e(ente, m)),
         covers AS (SELECT * FROM unnest($5::text[], $6::text[]) AS c(flow_type, state)),
         found AS (
             SELECT i.ente, d.n, max(i.instance) AS instance
             FROM d JOIN covers c ON c.flow_type = d.flow_type
                    JOIN instance_list i ON i.flow_type = d.flow_type AND i.state = c.state
                                        AND i.period_start <= d.period_end AND i.period_end >= d.period_start
             WHERE i.ente = ANY($4::text[])
             GROUP BY i.ente, d.n, d.period_start, d.period_end
             HAVING range_agg(daterange(i.period_start, i.period_end, '[]'))
                    @> daterange(d.period_start, d.period_end, '[]'))
    SELECT e.ente, d.n, f.instance FROM e CROSS JOIN d LEFT JOIN found f ON f.ente = e.ente AND f.n = d.n
    ORDER BY e.m, d.n"""


async def coverage(pool: asyncpg.Pool, items: list[Deadline], ente: str | None,
                   enti: list[str] | None = None) -> list[tuple[str, Deadline, int | None]]:
    """(ente, deadline, covering instance or None: the latest of those covering it, _COVERING) for each of `items`
    (contracts.deadlines): of `ente`, or of every one of `enti`, or of every entity the platform knows (its
    catalogue, and any other that has data). An entity that has loaded nothing yet is listed too: it is the one most
    likely to miss its deadline (it used to be left out whenever another had data). Entity by entity, each in the
    order of `items`."""
    if ente:
        entes = [ente]
    elif enti is not None:
        entes = sorted(set(enti))
    else:
        entes = sorted(known_enti() | {r["ente"] for r in await pool.fetch(_ENTI_WITH_DATA)})
    if not entes or not items:
        return []
    flow_types = sorted({d.flow_type for d in items})
    covers = [(flow_type, state) for flow_type in flow_types for state in covering_states(flow_type)]
    rows = await pool.fetch(_COVERING, [d.flow_type for d in items], [d.period_start for d in items],
                            [d.period_end for d in items], entes, [c[0] for c in covers], [c[1] for c in covers])
    return [(r["ente"], items[r["n"] - 1], r["instance"]) for r in rows]
