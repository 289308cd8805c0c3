"""Source snapshots ("istanze fonte"): freeze the rows a load works on.

A snapshot is ONE `INSERT ... SELECT` from the source tables: PostgreSQL's MVCC gives it a
consistent view while intake keeps writing, and later corrections never reach it (rows are copied).
Which rows a flow type takes is data (`SELECTIONS`), not branches in code.

Period rule (spec/flusso-c.md "General rules"): a prescription spanning two periods belongs to the
period of its LAST service, and is taken whole (also the services of the earlier period).
Row numbers 01..n per prescription follow delivery_date, then source_id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import asyncpg

from contracts.flows import FlowType
from services.loader.intake import KINDS


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
    # C PACC: only services delivered inside a PACC (our assumption until the regional spec, see spec)
    FlowType.FLUSSO_C_PACC: Selection("source_service", "snapshot_service", "delivery_date", "s.pacc", True),
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


def snapshot_sql(selection: Selection) -> str:
    """The single INSERT ... SELECT of a snapshot. Parameters: $1 snapshot_id, $2 ente, $3 start, $4 end."""
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
        ), closed AS (             -- ... whose LAST service is in the period
            SELECT t.prescription_id FROM touched t
            WHERE NOT EXISTS (SELECT 1 FROM {table} s
                              WHERE s.ente = $2 AND s.prescription_id = t.prescription_id
                                AND s.{when} > $4 AND {cond})
        )
        INSERT INTO {selection.snapshot_table} (snapshot_id, row_number, revision, {col_list})
        SELECT $1, row_number() OVER (PARTITION BY s.prescription_id ORDER BY s.{when}, s.source_id),
               s.revision, {s_cols}
        FROM {table} s JOIN closed c ON c.prescription_id = s.prescription_id
        WHERE s.ente = $2 AND {cond}"""


async def take_snapshot(conn: asyncpg.Connection, snapshot_id: int, flow_type: FlowType | str, ente: str,
                        period_start: date, period_end: date, *, instance: int, version: str = "2020",
                        ) -> SnapshotStats:
    """Materialise the period's rows under `snapshot_id`; idempotent for the same parameters."""
    flow = FlowType(flow_type)
    selection = SELECTIONS[flow]
    if period_end < period_start:
        raise ValueError(f"snapshot {snapshot_id}: period end {period_end} is before its start {period_start}")
    async with conn.transaction():
        # The period's prescriptions are hashed and sorted in memory rather than spilled to disk. The commit does not
        # wait for the WAL flush: nothing outside the database depends on the snapshot before the load's outcome,
        # whose synchronous commit flushes the WAL up to itself, so this with it; a PostgreSQL crash before that
        # loses at most a snapshot that no outcome names, which is a dead run's (pipeline.drop_dead_runs), taken
        # again. Both settings are made for this transaction only (set_config(..., true), as SET LOCAL) by the
        # statement that creates the snapshot's row: one round trip for a new snapshot (they were a SET LOCAL
        # statement of their own before it, one round trip more on every load's path). A concurrent taker of the
        # same number waits on the primary key, then finds the row below.
        created = await conn.fetchval(
            "INSERT INTO source_snapshot (snapshot_id, instance, flow_type, version, ente, period_start, "
            "period_end, source_table, rows) "
            "SELECT $1::bigint, $2::bigint, $3::text, $4::text, $5::text, $6::date, $7::date, $8::text, 0 "
            f"FROM (SELECT set_config('work_mem', '{WORK_MEM}', true), "
            "set_config('synchronous_commit', 'off', true)) AS transaction_settings "
            "ON CONFLICT (snapshot_id) DO NOTHING RETURNING true",
            snapshot_id, instance, flow.value, version, ente, period_start, period_end, selection.snapshot_table)
        if not created:
            existing = await conn.fetchrow("SELECT * FROM source_snapshot WHERE snapshot_id = $1 FOR UPDATE",
                                           snapshot_id)
            same = (existing["flow_type"], existing["ente"], existing["period_start"], existing["period_end"],
                    existing["instance"]) == (flow.value, ente, period_start, period_end, instance)
            if not same:
                raise SnapshotConflict(f"snapshot {snapshot_id} already holds {existing['flow_type']} of ente "
                                       f"{existing['ente']} {existing['period_start']}..{existing['period_end']} "
                                       f"for instance {existing['instance']}")
            return SnapshotStats(snapshot_id, selection.snapshot_table, int(existing["rows"]), reused=True)
        status = await conn.execute(snapshot_sql(selection), snapshot_id, ente, period_start, period_end)
        rows = int(status.split()[-1])
        await conn.execute("UPDATE source_snapshot SET rows = $2 WHERE snapshot_id = $1", snapshot_id, rows)
    return SnapshotStats(snapshot_id, selection.snapshot_table, rows, reused=False)
