"""Source snapshots ("istanze fonte"): freeze the rows a load works on.

A snapshot is ONE `INSERT ... SELECT` from the source tables: PostgreSQL's MVCC gives it a
consistent view while intake keeps writing, and later corrections never reach it (rows are copied).
Which rows a flow type takes is data (`SELECTIONS`), not branches in code.

Period rule (spec/flusso-c.md "General rules"): a prescription spanning two periods belongs to the
period of its LAST service, and is taken whole (also the services of the earlier period).
Row numbers 01..n per prescription follow delivery_date, then source_id.

A prescription's ID is unique per year (spec/flusso-c.md, C1 131-150: "unique per year with structure data"), so
an ID may come back in another year for another prescription: a structure that numbers its IDs from 1 each year.
The rows of one prescription are those of its ID in the load's year, and in the period before or after the load's
when that is in another year (a prescription begun in December and ended in January). Rows of its ID further away
are another prescription's: they neither hold it back as unfinished nor come into it. Within the year a row
outside the two periods is still taken, and the checks name it (DATE_OUTSIDE_PERIOD).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import date, timedelta

import asyncpg

from contracts.flows import FlowType
from services.loader.intake import KINDS
from services.runtime.db import fused_transaction


@dataclass(frozen=True)
class Selection:
    """Which source rows a flow type takes for an entity and a period."""

    source_table: str
    snapshot_table: str
    period_column: str
    condition: str  # SQL over the source row `s`
    by_prescription: bool  # apply the period rule of the last service


SELECTIONS: dict[FlowType, Selection] = {
    # Flusso C: SSN outpatient services outside PACC pathways
    FlowType.FLUSSO_C: Selection("source_service", "snapshot_service", "delivery_date",
                                 "s.regime = 'SSN' AND NOT s.pacc", True),
    # C PACC: only SSN services delivered inside a PACC (our assumption until the regional spec, see spec); an
    # intramoenia (ALPI) service flagged PACC is paid privately: no SSN flow takes it, as no other ALPI service
    FlowType.FLUSSO_C_PACC: Selection("source_service", "snapshot_service", "delivery_date",
                                      "s.regime = 'SSN' AND s.pacc", True),
    # MEF art. 50 DL 269/2003: SSN prescriptions, PACC included
    FlowType.FLUSSO_MEF: Selection("source_service", "snapshot_service", "delivery_date", "s.regime = 'SSN'", True),
    FlowType.FLUSSO_ALPI_TA: Selection("source_intramoenia_booking", "snapshot_booking", "booking_date", "TRUE",
                                       False),
    FlowType.FLUSSO_730: Selection("source_payment_document", "snapshot_payment_document", "payment_date", "TRUE",
                                   False),
}

# snapshot tables repeat the source columns (same names, same order)
SOURCE_COLUMNS: dict[str, tuple[str, ...]] = {k.table: k.columns for k in KINDS.values()}


WORK_MEM = "128MB"


class SnapshotConflict(RuntimeError):
    """A snapshot id is already used for another flow, entity or period."""


@dataclass(frozen=True)
class SnapshotStats:
    snapshot_id: int
    snapshot_table: str
    rows: int
    reused: bool  # the snapshot existed already (a redelivered load request): nothing was copied


async def next_number(conn: asyncpg.Connection) -> int:
    """Next instance / source-snapshot number (one sequence for both, as in the seed: 1947 -> 1948)."""
    return int(await conn.fetchval("SELECT nextval('flow_instance_seq')"))


# The snapshot's row, made first in its transaction: its `rows` are set by the UPDATE that travels with the COMMIT.
# A number taken already fails here, on the primary key. (A CTE of the copy's statement would spare this round trip;
# tried, bench/load.py at 1 M looked slower in two alternated pairs and an in-process alternation did not confirm
# it: the copy's statement is kept as it was measured.)
_CREATE = ("INSERT INTO source_snapshot (snapshot_id, instance, flow_type, version, ente, period_start, period_end, "
           "source_table, rows) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0)")
# The same row sent with the BEGIN (db.fused_transaction: a simple-query text, no parameters), one round trip less,
# when every value in it is one this code made or checked: numbers formatted as numbers, the flow type and the
# tables from this module, dates from date objects, and an entity and a layout version of letters, digits, '.', '_'
# and '-' only (the catalogue's codes are). Anything else goes by _CREATE's parameters.
_PLAIN = re.compile(r"[0-9A-Za-z._-]{1,32}")


def _create_text(snapshot_id: int, instance: int, flow: FlowType, version: str, ente: str, period_start: date,
                 period_end: date, table: str) -> str | None:
    if not (_PLAIN.fullmatch(version) and _PLAIN.fullmatch(ente) and _PLAIN.fullmatch(flow.value)
            and _PLAIN.fullmatch(table)):
        return None
    return ("INSERT INTO source_snapshot (snapshot_id, instance, flow_type, version, ente, period_start, period_end, "
            f"source_table, rows) VALUES ({int(snapshot_id):d}, {int(instance):d}, '{flow.value}', '{version}', "
            f"'{ente}', '{period_start.isoformat()}'::date, '{period_end.isoformat()}'::date, '{table}', 0)")


def _whole_months(start: date, end: date) -> int | None:
    """How many whole calendar months the period is (the 1st to a month's last day), None when it is not."""
    after = end + timedelta(days=1)
    if start.day != 1 or after.day != 1:
        return None
    return (after.year * 12 + after.month) - (start.year * 12 + start.month)


def _months_later(day: date, months: int) -> date:
    """The 1st `day` (a 1st) plus `months` (negative: earlier)."""
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def previous_period_start(start: date, end: date) -> date:
    """The first day of the period before start..end: as many whole calendar months before a period of whole months
    (every monthly flow: September's is August 1-31, March's February), else as many days. The checks take this day
    as a parameter (services.loader.checks.rule_args), so DATE_OUTSIDE_PERIOD names the day the snapshot reaches."""
    months = _whole_months(start, end)
    return start - timedelta(days=(end - start).days + 1) if months is None else _months_later(start, -months)


def next_period_end(start: date, end: date) -> date:
    """The last day of the period after start..end, alike."""
    months = _whole_months(start, end)
    if months is None:
        return end + timedelta(days=(end - start).days + 1)
    return _months_later(end + timedelta(days=1), months) - timedelta(days=1)


def prescription_reach(start: date, end: date) -> tuple[date, date]:
    """The days a prescription of the load start..end may have rows on (the module's docstring): its year, and the
    period before and after the load's, which reach into the years around it at a year's turn."""
    return (min(date(start.year, 1, 1), previous_period_start(start, end)),
            max(date(end.year, 12, 31), next_period_end(start, end)))


def snapshot_sql(selection: Selection) -> str:
    """The single INSERT ... SELECT of a snapshot. Parameters: $1 snapshot_id, $2 ente, $3 start, $4 end; by
    prescription also $5 and $6, the first and last day of its prescriptions' rows (prescription_reach). Those two
    come from Python: as SQL (scalar subqueries, date_trunc, which is only stable) the planner could not take them
    for constants and read every row of the year by day, hashed and sorted them again (15 s against 7 s for 1 M
    services)."""
    cols = SOURCE_COLUMNS[selection.source_table]
    col_list = ", ".join(cols)
    s_cols = ", ".join(f"s.{c}" for c in cols)
    if not selection.by_prescription:
        return (f"INSERT INTO {selection.snapshot_table} (snapshot_id, revision, {col_list}) "
                f"SELECT $1, s.revision, {s_cols} FROM {selection.source_table} s "
                f"WHERE s.ente = $2 AND s.{selection.period_column} BETWEEN $3 AND $4 AND {selection.condition}")
    cond, table, when = selection.condition, selection.source_table, selection.period_column
    return f"""
        WITH touched AS (          -- prescriptions with a service in the period ...
            SELECT DISTINCT s.prescription_id FROM {table} s
            WHERE s.ente = $2 AND s.{when} BETWEEN $3 AND $4 AND {cond}
        ), closed AS (             -- ... whose LAST service is in the period (a later one of the ID in another
            SELECT t.prescription_id FROM touched t                  -- year is another prescription's)
            WHERE NOT EXISTS (SELECT 1 FROM {table} s
                              WHERE s.ente = $2 AND s.prescription_id = t.prescription_id
                                AND s.{when} > $4 AND s.{when} <= $6 AND {cond})
        )
        INSERT INTO {selection.snapshot_table} (snapshot_id, row_number, revision, {col_list})
        SELECT $1, row_number() OVER (PARTITION BY s.prescription_id ORDER BY s.{when}, s.source_id),
               s.revision, {s_cols}
        -- its ID's rows of other years go. OFFSET 0 keeps the days out of the join's plan: in it, on a table just
        -- filled (no statistics yet), the planner took minutes for 60,000 services (test_loader_snapshot's
        -- consistency test); the join is planned without them, and the days filter what it gives (1 M services:
        -- 8.0-9.8 s against 8.0-10.7 s for the statement before the days, alternated in one process)
        FROM (SELECT s.* FROM {table} s JOIN closed c ON c.prescription_id = s.prescription_id
              WHERE s.ente = $2 AND {cond} OFFSET 0) s
        WHERE s.{when} BETWEEN $5 AND $4"""


# What the snapshot's transaction opens with, in its BEGIN's round trip (db.fused_transaction). The period's
# prescriptions are hashed and sorted in memory rather than spilled to disk. The commit does not wait for the WAL
# flush: nothing outside the database depends on the snapshot before the load's outcome, whose synchronous commit
# flushes the WAL up to itself, so this with it; a PostgreSQL crash before that loses at most a snapshot that no
# outcome names, which is a dead run's (pipeline.drop_dead_runs), taken again. Both for this transaction only.
_SETTINGS = f"SET LOCAL work_mem = '{WORK_MEM}'; SET LOCAL synchronous_commit = off"


async def take_snapshot(conn: asyncpg.Connection, snapshot_id: int, flow_type: FlowType | str, ente: str,
                        period_start: date, period_end: date, *, instance: int, version: str = "2020",
                        after: Awaitable[None] | None = None) -> SnapshotStats:
    """Materialise the period's rows under `snapshot_id`; idempotent for the same parameters.

    `after`: what the snapshot's commit waits for once its rows are copied (a load's first run: the commit of its
    instance's Running, services.loader.handlers.FirstRun); if it raises, the snapshot is rolled back with that
    error, so no snapshot is ever committed for an instance that was not."""
    flow = FlowType(flow_type)
    selection = SELECTIONS[flow]
    if period_end < period_start:
        raise ValueError(f"snapshot {snapshot_id}: period end {period_end} is before its start {period_start}")
    # Three round trips (BEGIN with the settings and the snapshot's row, the copy, the row count's UPDATE with the
    # COMMIT; they were five). A snapshot number taken already fails on source_snapshot's primary key, which rolls
    # the transaction back: the snapshot is then read (a concurrent taker of the same number waits on that key until
    # the first commits, then reads its row).
    try:
        create = _create_text(snapshot_id, instance, flow, version, ente, period_start, period_end,
                              selection.snapshot_table)
        async with fused_transaction(conn, _SETTINGS if create is None else f"{_SETTINGS}; {create}") as fused:
            if create is None:
                await conn.execute(_CREATE, snapshot_id, instance, flow.value, version, ente, period_start,
                                   period_end, selection.snapshot_table)
            reach = prescription_reach(period_start, period_end) if selection.by_prescription else ()
            status = await conn.execute(snapshot_sql(selection), snapshot_id, ente, period_start, period_end, *reach)
            rows = int(status.split()[-1])
            if after is not None:
                await after
            fused.at_commit = f"UPDATE source_snapshot SET rows = {rows:d} WHERE snapshot_id = {int(snapshot_id):d}"
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "source_snapshot_pkey":
            raise
        return await _taken_already(conn, snapshot_id, flow, ente, period_start, period_end, instance)
    return SnapshotStats(snapshot_id, selection.snapshot_table, rows, reused=False)


async def _taken_already(conn: asyncpg.Connection, snapshot_id: int, flow: FlowType, ente: str, period_start: date,
                         period_end: date, instance: int) -> SnapshotStats:
    """The snapshot `snapshot_id` that exists: reused when it is the same flow, entity, period and instance."""
    existing = await conn.fetchrow("SELECT * FROM source_snapshot WHERE snapshot_id = $1", snapshot_id)
    same = (existing["flow_type"], existing["ente"], existing["period_start"], existing["period_end"],
            existing["instance"]) == (flow.value, ente, period_start, period_end, instance)
    if not same:
        raise SnapshotConflict(f"snapshot {snapshot_id} already holds {existing['flow_type']} of ente "
                               f"{existing['ente']} {existing['period_start']}..{existing['period_end']} "
                               f"for instance {existing['instance']}")
    return SnapshotStats(snapshot_id, existing["source_table"], int(existing["rows"]), reused=True)
