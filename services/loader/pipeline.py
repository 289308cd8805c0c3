"""A whole load, as the Kafka handler calls it: snapshot -> checks -> feedback -> outcome.

`run_load` is safe to call again for the same instance (a redelivered LoadRequested): the snapshot
is taken once and reused, the checks and the feedback are recomputed from it with the same result.
It records no events: the handler turns the outcome into LoadChecked / LoadFailed.

Once its checks are done a snapshot is marked checked (source_snapshot.checked_counts / checked_problems), so any
loader process finishes it without a new snapshot or new checks (`earlier_runs`, then `finish_load`), unless they
found nothing at all in a small snapshot (nothing to keep: taken again, it costs milliseconds): after a
full file store while the feedback is written (`FeedbackNotWritten`: the problems are deleted only once the
feedback file holds them), after a kill between the checks and the outcome, on another replica. The problems are
in an UNLOGGED table, which PostgreSQL empties after a crash: a checked snapshot whose problems are not all there
is not resumed. A snapshot that is not checked belongs to a run that died (the instance's lock is held while a
run works): `drop_dead_runs` deletes it, rows and problems, before the instance's next snapshot is taken.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date

import asyncpg

from contracts.flows import FlowType
from contracts.italian import italian_date
from services.loader import checks
from services.loader.catalogue import digest_sql, sync_reference_data
from services.loader.checks import NO_SOURCE_DATA, run_checks
from services.loader.feedback import ProblemCounts, export_feedback, problem_counts, summarise
from services.loader.snapshot import SELECTIONS, take_snapshot
from services.runtime.filestore import FileStore, is_full
from services.runtime.logging import get_logger

log = get_logger("loader")
ANALYZE_LOCK_TIMEOUT = "5s"
Progress = Callable[[str, int, int], None]  # (step, steps done, steps in all)
STEPS = ("reference data", "snapshot", "checks", "feedback")
_SNAPSHOT_TABLES = frozenset(s.snapshot_table for s in SELECTIONS.values())
# what a snapshot table holds, as the NO_SOURCE_DATA message names it to the operators (in Italian)
_SOURCE_DATA = {"snapshot_service": "prestazioni erogate", "snapshot_booking": "prenotazioni",
                "snapshot_payment_document": "documenti di spesa"}

# What the codice fiscale check counts on the way (checks.CfCheck: records, first rows of a prescription, distinct
# codes), named per snapshot table: the load's counts, no query of their own.
_COUNTED_BY_CHECKS: dict[str, tuple[str, ...]] = {
    "snapshot_service": ("services", "prescriptions", "patients"),
    "snapshot_booking": ("bookings",),
    "snapshot_payment_document": ("payment_documents",),
}


@dataclass(frozen=True)
class LoadOutcome:
    checked: bool  # True -> Checked, False -> Failed loading
    counts: dict[str, int]
    errors: int
    warnings: int
    feedback_sha256: str | None  # None when there is no problem at all
    feedback_bytes: int
    summary: str


async def _analyze(pool: asyncpg.Pool, table: str) -> None:
    """Statistics that know the new snapshot's rows, before the checks are planned. Without them the planner
    sees the snapshot table as it was (empty, or the average snapshot) and picks plans for a few rows: a hash
    table of a million services, an index probe per row (measured at 1 M services: the row rules 4.7 s -> 0.9 s,
    the prescriptions 3.2 s -> 1.8 s with them). One column suffices (the row count and the snapshot's share of
    the table); it reads a sample, 0.15-1 s at 1 M on this shared machine, and sets the hint bits the checks would
    otherwise set (each of the parallel statements, on the pages it reads first). A table
    being analysed by another load is waited for (a fraction of a second); an autovacuum of the table holding the
    lock is cancelled by PostgreSQL after deadlock_timeout (1 s) once a lock request waits on it; and the load
    before this one is exactly what makes autovacuum visit the table. Skipping instead would plan a million rows
    as a few. Past ANALYZE_LOCK_TIMEOUT (an anti-wraparound vacuum is never cancelled) the checks run on the
    statistics there are: slower, and right either way."""
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{ANALYZE_LOCK_TIMEOUT}'")
                await conn.execute(f"ANALYZE {table} (snapshot_id)")
        except asyncpg.LockNotAvailableError:
            log.warning("snapshot statistics not refreshed: the table stayed locked", table=table,
                        lock_timeout=ANALYZE_LOCK_TIMEOUT)


@dataclass(frozen=True)
class ChecksDone:
    """A load whose snapshot is taken and checked: only its feedback and outcome are left (`finish_load`)."""

    snapshot_id: int
    counts: dict[str, int]


class FeedbackNotWritten(Exception):
    """The checks are done but the file store is full: `finish_load(..., exc.checked)` once there is space."""

    def __init__(self, checked: ChecksDone) -> None:
        super().__init__(f"snapshot {checked.snapshot_id} is checked, its feedback file is not written: "
                         f"the file store is full")
        self.checked = checked


async def mark_checked(pool: asyncpg.Pool, checked: ChecksDone) -> ProblemCounts:
    """Records that the snapshot's checks are done, with the counts and the number of problems they left; returns
    those problems counted by code (feedback.problem_counts, in the same round trip)."""
    async with pool.acquire() as conn:
        # One statement, its own transaction, committed without waiting for the WAL flush like the snapshot
        # (snapshot.take_snapshot; problem_counts sets synchronous_commit for that transaction only): the outcome's
        # synchronous commit flushes it; lost in a PostgreSQL crash before that, the checks run again from a new
        # snapshot.
        return await problem_counts(conn, checked.snapshot_id, mark_checked=json.dumps(checked.counts))


@dataclass(frozen=True)
class EarlierRuns:
    """What earlier runs of an instance's load left: `checked`, a snapshot to finish (its feedback and outcome
    only), and how many snapshots the instance has in all (none for a load's first run: nothing to drop); and the
    number a new snapshot takes when there is none to finish."""

    checked: ChecksDone | None
    snapshots: int
    next_snapshot_id: int
    reference_digest: bytes | None = None  # the reference data's stored digest (catalogue.sync_reference_data)


async def earlier_runs(pool: asyncpg.Pool, instance: int, version: str) -> EarlierRuns:
    """The instance's snapshots; `checked` is its newest checked one whose problems are all still in load_problem.
    One query, which also draws the number a new snapshot would take (`next_snapshot_id`: a number drawn and not
    used is a gap in a sequence, nothing more) and reads the stored digest of the reference data of the layout
    `version` (run_load's `reference_digest`: one round trip less). Call it holding the instance's load lock."""
    rows = await pool.fetch(
        "SELECT n.next_id, n.reference_digest, s.snapshot_id, s.checked_counts, s.checked_problems, CASE WHEN "
        "s.checked_counts IS NOT NULL THEN (SELECT count(*) FROM load_problem p WHERE p.snapshot_id = s.snapshot_id) "
        "END AS problems FROM (SELECT nextval('flow_instance_seq') AS next_id, "
        f"({digest_sql('$2')}) AS reference_digest) n "
        "LEFT JOIN source_snapshot s ON s.instance = $1 ORDER BY s.snapshot_id DESC", instance, version)
    next_id, digest = int(rows[0]["next_id"]), rows[0]["reference_digest"]
    snapshots = [r for r in rows if r["snapshot_id"] is not None]
    row = next((r for r in snapshots if r["checked_counts"] is not None), None)
    if row is None:
        return EarlierRuns(None, len(snapshots), next_id, digest)
    if row["problems"] != row["checked_problems"]:
        # emptied by a crash of PostgreSQL, or deleted once the feedback was written by a run that died before
        # its outcome: the checks must run again (from a new snapshot; this one is dropped as a dead run's)
        log.warning("load.checked_problems_lost", instance=instance, snapshot=int(row["snapshot_id"]),
                    checked=int(row["checked_problems"]), found=int(row["problems"]))
        return EarlierRuns(None, len(snapshots), next_id, digest)
    counts = {k: int(v) for k, v in json.loads(row["checked_counts"]).items()}
    return EarlierRuns(ChecksDone(int(row["snapshot_id"]), counts), len(snapshots), next_id, digest)


class RunTakenOver(Exception):
    """The instance moved on while this run held what it took for its lock: its outcome is written already."""


async def drop_dead_runs(pool: asyncpg.Pool, instance: int,
                         unchanged: Callable[[asyncpg.Connection], Awaitable[bool]]) -> list[tuple[int, int]]:
    """Deletes every snapshot of the instance (rows, problems, record): called holding the instance's load lock,
    before a new snapshot is taken, when `earlier_runs` found none to finish. Each belongs to a run that died
    (a kill, a crash, a full disk before its checks were done); nothing reads them (an outcome names its own
    snapshot, and no outcome is recorded while the instance is Running). Returns (snapshot, rows deleted).

    A run whose lock's connection was cut goes on without knowing it: its outcome (handlers.run_instance) re-reads
    its snapshot's row FOR SHARE, and this DELETE locks the rows. `unchanged(conn)`, asked after the DELETE in the same
    transaction, says whether the instance's stream is still where this run read it: if such a run wrote its
    outcome first, RunTakenOver rolls the delete back (that snapshot is the one the outcome names)."""
    dropped: list[tuple[int, int]] = []
    async with pool.acquire() as conn, conn.transaction():
        for row in await conn.fetch("DELETE FROM source_snapshot WHERE instance = $1 "
                                    "RETURNING snapshot_id, source_table", instance):
            snapshot_id, table = int(row["snapshot_id"]), row["source_table"]
            if table not in _SNAPSHOT_TABLES:  # a table name from the database is not put in SQL unchecked
                raise ValueError(f"snapshot {snapshot_id}: unknown snapshot table {table!r}")
            status = await conn.execute(f"DELETE FROM {table} WHERE snapshot_id = $1", snapshot_id)
            await conn.execute("DELETE FROM load_problem WHERE snapshot_id = $1", snapshot_id)
            dropped.append((snapshot_id, int(status.split()[-1])))
        if dropped and not await unchanged(conn):
            raise RunTakenOver(f"instance {instance} moved on while its snapshots were dropped")
    for snapshot_id, rows in dropped:
        log.info("load.dead_run_dropped", instance=instance, snapshot=snapshot_id, rows=rows)
    return dropped


async def finish_load(pool: asyncpg.Pool, filestore: FileStore, checked: ChecksDone,
                      found: ProblemCounts | None = None) -> LoadOutcome:
    """The feedback file of a checked snapshot and the outcome. Repeatable: the problems stay in load_problem
    until the feedback file holds them. A full store raises FeedbackNotWritten. `found`: the problems as
    `mark_checked` counted them (else they are counted here)."""
    snapshot_id = checked.snapshot_id
    if found is not None and not found.by_code:  # no problem: no file, nothing to delete, no connection needed
        return LoadOutcome(checked=True, counts=checked.counts, errors=0, warnings=0, feedback_sha256=None,
                           feedback_bytes=0, summary=summarise(found))
    async with pool.acquire() as conn:
        if found is None:
            found = await problem_counts(conn, snapshot_id)
        sha, size = None, 0
        if found.errors or found.warnings:
            try:
                feedback = await export_feedback(conn, snapshot_id, filestore)
            except Exception as exc:
                if is_full(exc):
                    raise FeedbackNotWritten(checked) from exc
                raise
            sha, size = feedback.sha256, feedback.bytes
        if found.by_code:  # the feedback file is now the durable record of the problems (none: nothing to delete)
            await conn.execute("DELETE FROM load_problem WHERE snapshot_id = $1", snapshot_id)
    return LoadOutcome(checked=found.errors == 0, counts=checked.counts, errors=found.errors, warnings=found.warnings,
                       feedback_sha256=sha, feedback_bytes=size, summary=summarise(found))


async def run_load(pool: asyncpg.Pool, filestore: FileStore, instance: int, snapshot_id: int,
                   flow_type: FlowType | str, version: str, ente: str, period_start: date, period_end: date,
                   progress: Progress | None = None, reference_digest: bytes | None = None,
                   after: Awaitable[None] | None = None) -> LoadOutcome:
    """`reference_digest`: the reference data's stored digest when the caller read it already (earlier_runs);
    None: read here. `after`: what the snapshot's commit waits for (snapshot.take_snapshot)."""
    def step(i: int) -> None:
        if progress is not None:
            progress(STEPS[i], i, len(STEPS))

    flow = FlowType(flow_type)
    table = SELECTIONS[flow].snapshot_table
    step(0)
    period = (period_start, period_end)
    async with pool.acquire() as conn:
        await sync_reference_data(conn, version, reference_digest)
        step(1)
        stats = await take_snapshot(conn, snapshot_id, flow, ente, period_start, period_end,
                                    instance=instance, version=version, after=after)
        step(2)
        small = stats.rows <= checks.SMALL_SNAPSHOT
        if small:  # checked in one statement, on the snapshot's connection: the statistics don't matter
            counted = await run_checks(pool, table, snapshot_id, version, period, rows=stats.rows,
                                       flow_type=flow.value, conn=conn)
    if not small:
        await _analyze(pool, table)
        counted = await run_checks(pool, table, snapshot_id, version, period, rows=stats.rows,
                                   flow_type=flow.value)
    counts = dict(zip(_COUNTED_BY_CHECKS[table], (counted.records, counted.first_rows, counted.codes), strict=False))
    step(3)
    if not next(iter(counts.values())):  # no service / booking / document: say so, never a silent Checked
        code, severity, field = NO_SOURCE_DATA
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO load_problem (snapshot_id, record_key, field, code, severity, message) "
                "VALUES ($1, '*', $2, $3, $4, $5)", snapshot_id, field, code, severity,
                f"nessun dato di origine ({_SOURCE_DATA[table]}) per l'ente {ente} dal {italian_date(period_start)} al "
                f"{italian_date(period_end)}: il caricamento è vuoto")
    checked = ChecksDone(snapshot_id, counts)
    if counted.no_problem:
        # Nothing found (a small snapshot's checks count what they insert): no problem to count and nothing for a
        # resume to keep, so no mark either; a run that dies before its outcome takes it again from a new snapshot,
        # a small one's few milliseconds. One round trip less on a small load's path.
        found = ProblemCounts(errors=0, warnings=0, error_records=0, by_code=())
    else:
        found = await mark_checked(pool, checked)
    outcome = await finish_load(pool, filestore, checked, found)
    if progress is not None:
        progress("done", len(STEPS), len(STEPS))
    return outcome
