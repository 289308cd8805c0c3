"""What the loader does with each message: plain functions of (message, deps).

A load request becomes an instance (number from `flow_instance_seq`), Running, in one
transaction with the request's dedup record, whose statement also takes the instance's load lock
(kept on the command's connection until the outcome); the load (snapshot + checks) starts as soon as that statement
has made the instance, beside the Running's append and commit, and its snapshot commits only after the Running
(FirstRun); its outcome, Checked or Failed loading, is appended. A loader that dies in the middle leaves the
instance Running: `due_instances` finds it again (services/loader/app.py runs it at start and on
its schedule), and the load runs again (the snapshot of a crashed run is never reused: a new one
is taken, with a new number).

A full file store while the feedback file is written is not a Failed loading: the instance stays Running, its
snapshot is marked checked and its problems kept in the database (services/loader/pipeline.py), and the next pass
writes only the feedback once space is freed, backed off meanwhile (services.runtime.filestore.SpaceWaits: one
`store.full` warning per attempt, naming the store's path and the instance). The handler returns at once, so the
partition and the other loads go on. A restarted loader, or another replica, finishes the same checked snapshot:
no new snapshot, no new checks. A run that died before its checks were done is taken again from a new snapshot,
and the dead run's snapshot is dropped first (rows and problems), so a crash leaves no rows behind.

PostgreSQL gone or a connection cut under a load (a transient error, services.runtime.broker.is_transient) is not a
Failed loading either: the instance stays Running, nothing is appended to its history, and the next pass takes it
again, backed off per instance (services.runtime.backoff.Interruptions: the next pass first, then doubling to 5
minutes; one `load.interrupted` warning per attempt, `load.recovered` once an attempt gets through). Only an
attempt that ran is counted: one cut after the instance's lock was taken and its history read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from contracts import flows
from contracts.instance import FlowInstance
from contracts.states import Actor, InstanceState
from services.loader.catalogue import digest_sql, unknown_ente_reason
from services.loader.load_rules import period_not_over
from services.runtime import tracing
from services.runtime.backoff import INTERRUPTED_CAP_S, Interruptions
from services.runtime.broker import Incoming, Refused, is_transient
from services.runtime.db import connection_gone, has_session_state
from services.runtime.eventstore import Guard, GuardFailed
from services.runtime.filestore import SpaceWaits, is_full
from services.runtime.incident import incident_reference, not_completed
from services.runtime.instances import Handling, ServiceDeps
from services.runtime.locks import LOAD_LOCK, release_instance_lock
from services.runtime.logging import get_logger
from services.runtime.outbox import MARK_PROCESSED
from services.runtime.read_models import instance_stream

if TYPE_CHECKING:
    from services.loader.pipeline import LoadOutcome

CONSUMER = "loader"
PASS_S = 2.0  # the period of the pass that starts Running and due Scheduled loads (services/loader/app.py)
log = get_logger("loader")
# the summary of a load that failed on something unexpected (the console shows it): Italian, then the exception
LOAD_NOT_COMPLETED = "il caricamento non è stato completato"


def interruptions(initial_s: float | None = None, cap_s: float = INTERRUPTED_CAP_S) -> Interruptions:
    """The backoff of interrupted loads: the first retry at the next pass (PASS_S), unless told otherwise."""
    return Interruptions(log, initial_s=initial_s or PASS_S, cap_s=cap_s, service="loader", work="load")


@dataclass
class LoaderDeps(ServiceDeps):
    ACTOR = Actor.LOADER
    CONSUMER = CONSUMER
    space: SpaceWaits = field(default_factory=lambda: SpaceWaits(log))  # loads waiting for a full store
    interrupted: Interruptions = field(default_factory=interruptions)  # loads cut by a transient error


async def handle_load_requested(cmd: flows.LoadRequested, msg: Incoming, deps: LoaderDeps) -> None:
    if (unknown := unknown_ente_reason(cmd.ente)) is not None:
        # no instance: the command goes to flows.load-requested.dlq with this reason
        raise Refused(f"load request {cmd.request_id}: {unknown}")
    now = datetime.now(UTC)
    if (not_over := period_not_over(cmd.period.end, cmd.scheduled_at, now)) is not None:
        # likewise: a period not over when the load would run, now or at its scheduled start (load_rules.py). A
        # command accepted once is accepted again when redelivered: the time only moves on.
        raise Refused(f"load request {cmd.request_id}: period.end {cmd.period.end}: {not_over.reason()}")
    scheduled = cmd.scheduled_at is not None and cmd.scheduled_at > now
    # The connection of the command's transaction stays with the load: the statement that makes the instance also
    # takes its load lock (a session lock: it outlives the commit), so the load starts from the instance it wrote, with
    # no round trip to take the lock and none to read the history back. Nobody else can have worked on the instance
    # in between: a pass (run_due) of any loader that sees it Running once committed finds it locked.
    async with deps.pool.acquire() as conn:
        clean = not has_session_state(conn)
        run: FirstRun | None = None
        try:
            async with conn.transaction():
                taken = await conn.fetchrow(_NEW_INSTANCE, cmd.request_id, not scheduled, LOAD_LOCK, deps.CONSUMER,
                                            msg.message_id, cmd.version)
                if not taken["fresh"]:  # this message was processed already (redelivered): nothing to do
                    return
                if taken["instance"] is None:  # the same request sent twice (a new ce_id): one instance per request id
                    log.info("load.duplicate_request", request_id=str(cmd.request_id))
                    return
                handling = Handling(deps.instances, conn, msg)  # its transaction holds the message's dedup record
                instance = int(taken["instance"])
                if taken["locked"]:  # its load starts now, beside the Running's append and commit (FirstRun)
                    run = FirstRun.start(deps, instance, cmd, int(taken["next_snapshot"]), taken["reference_digest"])
                common: dict[str, Any] = dict(instance=instance, request_id=cmd.request_id, flow_type=cmd.flow_type,
                                              version=cmd.version, ente=cmd.ente, period=cmd.period,
                                              requested_by=cmd.requested_by)
                first: flows.Payload
                if scheduled:
                    assert cmd.scheduled_at is not None
                    first = flows.LoadScheduled(**common, scheduled_at=cmd.scheduled_at)
                else:
                    first = flows.LoadRunning(**common)
                current = await handling.append(FlowInstance(instance), first, actor=cmd.requested_by)
        except BaseException:
            if run is not None:  # the Running was not committed: the load goes with it
                await run.settle()
            raise
        if not scheduled:
            # An error of the transaction above leaves with the connection, whose release resets its session (the
            # lock with it: a statement naming an advisory lock flags the connection).
            locked = None
            if run is not None:
                run.committed()
                locked = Locked(conn, current, clean, run)
            await run_instance(instance, deps, locked=locked)


# One round trip opens a command's transaction: the message's dedup record (`fresh`: this consumer never processed it;
# services.runtime.outbox.mark_processed's statement, which a concurrent duplicate waits on until the first commits),
# then, only for a fresh message, the instance of a new load request (none for a request id seen before) and, for a
# load to run now, its load lock taken on the command's connection (services.runtime.locks.instance_lock's two keys).
# A load it locked is the instance's first run, so what pipeline.earlier_runs would read for it is known: no
# snapshot; the number its snapshot takes (drawn after the instance's, as earlier_runs would) and the stored digest
# of its layout's reference data ($6, the version) come with the same row: one round trip less.
_NEW_INSTANCE = (
    f"WITH fresh AS ({MARK_PROCESSED.format(consumer='$4', message_id='$5')}), "
    "made AS (INSERT INTO load_request (request_id, instance) "
    "SELECT $1::uuid, nextval('flow_instance_seq') FROM fresh ON CONFLICT (request_id) DO NOTHING "
    "RETURNING instance, "
    "CASE WHEN $2::boolean THEN pg_try_advisory_lock($3::integer, instance::integer) END AS locked) "
    "SELECT EXISTS (SELECT FROM fresh) AS fresh, made.instance, made.locked, "
    "CASE WHEN made.locked THEN nextval('flow_instance_seq') END AS next_snapshot, "
    f"CASE WHEN made.locked THEN ({digest_sql('$6::text')}) END AS reference_digest "
    "FROM (SELECT) AS one LEFT JOIN made ON true")


# The outcome's guard (services.runtime.eventstore.Guard): the snapshot's row, locked by the outcome's statement.
_SNAPSHOT_HELD = "SELECT FROM source_snapshot WHERE snapshot_id = {0}::bigint FOR SHARE"


@dataclass
class FirstRun:
    """A load's first run, started by its command as soon as the command's statement has made the instance and
    taken its lock: the load's statements (services.loader.pipeline.run_load, on other connections of the pool) run
    while the command's transaction appends the Running and commits, which takes them off a small load's path.

    The snapshot's commit waits for the Running's (`running`, run_load's `after`): a Running that is not committed
    (an error, PostgreSQL gone, the handler cancelled) rolls the snapshot back, so no snapshot is ever committed for
    an instance that is not there, and a loader killed before the Running's commit leaves nothing of either. What
    pipeline.earlier_runs would have read for a first run comes with the command's statement (_NEW_INSTANCE): the
    snapshot's number and the reference data's stored digest. While the snapshot waits, a Running that failed on a
    stream that moved reads the stream's version on a third connection of the pool (services.runtime.eventstore):
    a command's run takes up to three at once, and the services' pools hold ten (services.runtime.host)."""

    snapshot_id: int
    reference_digest: bytes | None
    running: asyncio.Future[None]
    task: asyncio.Task[LoadOutcome]

    @classmethod
    def start(cls, deps: LoaderDeps, instance: int, cmd: flows.LoadRequested, snapshot_id: int,
              reference_digest: bytes | None) -> FirstRun:
        from services.loader.pipeline import run_load

        running: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(run_load(deps.pool, deps.files, instance, snapshot_id, cmd.flow_type, cmd.version,
                                            cmd.ente, cmd.period.start, cmd.period.end, None, reference_digest,
                                            after=running))
        return cls(snapshot_id, reference_digest, running, task)

    def committed(self) -> None:
        if not self.running.done():
            self.running.set_result(None)

    async def settle(self) -> None:
        """The task ended, whatever it did: cancelled if it runs still (a Running that was not committed: its
        snapshot, held back until then, is rolled back), and waited for, so nothing of it outlives the command. Its
        outcome, if any, was taken already by whoever needed it."""
        if not self.task.done():
            self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


@dataclass
class Locked:
    """A load whose lock its command took: the connection that holds it, the instance as the command wrote it,
    whether the connection had no session state before (then its release needs no reset once the lock is let go),
    and the first run it started (FirstRun)."""

    conn: asyncpg.Connection
    current: FlowInstance
    clean: bool
    first: FirstRun


@contextlib.asynccontextmanager
async def _held(locked: Locked, instance: int) -> AsyncIterator[FlowInstance]:
    try:
        yield locked.current
    finally:
        try:
            await locked.first.settle()  # awaited by _load already, unless the run ended before it
        finally:
            await release_instance_lock(locked.conn, LOAD_LOCK, instance, clean=locked.clean)


async def run_instance(instance: int, deps: LoaderDeps, *, taken_up: bool = False,
                       locked: Locked | None = None) -> None:
    """Runs the load of a Running (or due Scheduled) instance, once, whoever asks first.

    An attempt starts once the instance's lock is held and its history read (`locked`: as its command wrote it): a
    transient error before that
    (PostgreSQL down when the pass or the message comes) propagates to the caller, whose loop waits the outage
    out, and charges the instance nothing. One after it (PostgreSQL gone or restarted, this load's session
    terminated, a connection cut) is an interruption: the instance stays Running and is tried again backed off
    (deps.interrupted; the outage rule is services.runtime.backoff.Interruptions').

    `taken_up`: the pass runs it, not the load's own command (a loader died, it was interrupted, or its time came;
    never between the command's Running and the command's own run, which holds the lock from before its commit):
    the attempt then continues the
    load's trace (the traceparent stored with its first event), so the trace of `flows load` shows the outcome
    whoever reaches it; the command's run is inside that trace already.

    `locked`: the command took the lock already, in the transaction that wrote `locked.current` (handle_load_requested),
    and started the load (`locked.first`); released here at the end like one taken here."""
    if not (deps.space.due(instance) and deps.interrupted.due(instance)):
        return  # the store was full at its last attempt, or it was interrupted: later (or once space is freed)
    async with _held(locked, instance) if locked is not None else deps.instances.working(LOAD_LOCK, instance) \
            as current:
        if current is None or current.state not in (InstanceState.RUNNING, InstanceState.SCHEDULED):
            if current is not None:  # finished elsewhere (another replica) or deleted meanwhile
                deps.space.forget(instance)
                deps.interrupted.forget(instance)
            return  # another task has it, or it finished meanwhile
        if not (deps.space.due(instance) and deps.interrupted.due(instance)):
            return  # an attempt that let the lock go as this run took it left a wait: read again, under the lock
        began = time.monotonic()
        attempt: dict[str, Any] = {}  # what the interruption line names besides the instance (its snapshot)
        try:
            async with (tracing.continued(deps.pool, instance_stream(instance), "loader pass: load taken up")
                        if taken_up else contextlib.nullcontext()):
                await _load(instance, current, deps, attempt, locked)
        except Exception as exc:
            if not is_transient(exc) or is_full(exc):
                raise
            # PostgreSQL gone or a connection cut under the load: not the load's fault, nothing in its history
            deps.interrupted.failed(instance, exc, ran_s=time.monotonic() - began, **attempt)


async def _load(instance: int, current: FlowInstance, deps: LoaderDeps, attempt: dict[str, Any],
                locked: Locked | None = None) -> None:
    """One attempt of the load (run_instance holds its lock): an outcome, a wait for space, or a transient error
    raised (an interruption). `locked`: the lock came with the command that made the instance (its first run)."""
    from services.loader.pipeline import (
        EarlierRuns,
        FeedbackNotWritten,
        RunTakenOver,
        drop_dead_runs,
        earlier_runs,
        finish_load,
        run_load,
    )

    if isinstance(current.created, flows.LoadScheduled):
        spec = current.created
        current = await deps.instances.append(current, flows.LoadRunning(
            instance=instance, request_id=spec.request_id, flow_type=spec.flow_type, version=spec.version,
            ente=spec.ente, period=spec.period, requested_by=spec.requested_by))
    earlier = (EarlierRuns(None, 0, locked.first.snapshot_id, locked.first.reference_digest) if locked is not None
               else await earlier_runs(deps.pool, instance, current.layout_version))
    checked = earlier.checked
    if checked is not None:  # snapshot and checks done (by this process or one that died): the feedback is left
        snapshot_id = checked.snapshot_id
        log.info("load.feedback_again", instance=instance, snapshot=snapshot_id)
    else:
        read_at = current

        async def unchanged(conn: asyncpg.Connection) -> bool:
            return await deps.store.stream_version(instance_stream(instance), conn) == read_at.version
        try:
            if earlier.snapshots:  # none on a load's first run: no transaction for nothing
                await drop_dead_runs(deps.pool, instance, unchanged)
        except RunTakenOver:
            log.warning("load.taken_over", instance=instance, reason="its outcome was written meanwhile")
            deps.interrupted.forget(instance)
            return
        snapshot_id = earlier.next_snapshot_id
        log.info("load.started", instance=instance, snapshot=snapshot_id, flow_type=current.flow_type)
    attempt["snapshot"] = snapshot_id
    try:
        if checked is not None:
            outcome = await finish_load(deps.pool, deps.files, checked)
        elif locked is not None:  # started by the command (FirstRun), with this snapshot number
            outcome = await locked.first.task
        else:
            outcome = await run_load(deps.pool, deps.files, instance, snapshot_id, current.flow_type,
                                     current.layout_version, current.ente, current.period.start,
                                     current.period.end, None, earlier.reference_digest)
    except FeedbackNotWritten as exc:  # the platform's disk, not the load: it stays Running, its snapshot checked
        deps.space.failed(instance, exc, snapshot=exc.checked.snapshot_id)
        deps.interrupted.done(instance)  # the database carried this attempt: what it waits for now is space
        return
    except Exception as exc:  # an unexpected failure is still a Failed loading, with its reason
        if is_full(exc):  # a full disk before the checks were done: the whole load again, later
            deps.space.failed(instance, exc, snapshot=snapshot_id)
            deps.interrupted.done(instance)
            return
        if is_transient(exc):  # PostgreSQL gone or a connection cut under the load: run_instance backs it off
            raise
        reference = incident_reference()  # the operator reads it in the history; the help desk finds it in the log
        log.exception("load.crashed", instance=instance, reference=reference)
        await deps.instances.append(current, flows.LoadFailed(
            instance=instance, source_instance=snapshot_id, errors=1,
            summary=not_completed(LOAD_NOT_COMPLETED, reference, "richieda di nuovo il caricamento del periodo")))
        deps.interrupted.done(instance)
        return
    feedback = None
    if outcome.feedback_sha256:
        feedback = flows.FileRef(name=f"feedback_{instance}.csv", kind="feedback",
                                 records=outcome.errors + outcome.warnings, bytes=outcome.feedback_bytes,
                                 sha256=outcome.feedback_sha256, media_type="text/csv")
    result: flows.Payload
    if outcome.checked:
        result = flows.LoadChecked(instance=instance, source_instance=snapshot_id, counts=outcome.counts,
                                   warnings=outcome.warnings, feedback=feedback)
    else:
        result = flows.LoadFailed(instance=instance, source_instance=snapshot_id, errors=outcome.errors,
                                  warnings=outcome.warnings, counts=outcome.counts, summary=outcome.summary,
                                  feedback=feedback)
    # The snapshot is still this run's: see pipeline.drop_dead_runs (a lock whose connection was cut). The outcome is
    # ONE statement, atomic on its own: it locks the snapshot's row (FOR SHARE, the guard) and appends only when the
    # row is there. A load whose command took its lock writes it on the lock's connection, and the lock is let go
    # after it (the outcome is committed and the relay woken by then). A lock connection that is gone (its session
    # cut: the lock went with it) is not used: the outcome then goes by a pool connection, and the snapshot row says
    # whether another run took the load over meanwhile.
    on_lock = locked if locked is not None and not connection_gone(locked.conn) else None
    async with contextlib.nullcontext(on_lock.conn) if on_lock is not None else deps.pool.acquire() as conn:
        try:
            await deps.instances.append(current, result, conn=conn, guard=Guard(_SNAPSHOT_HELD, (snapshot_id,)))
        except GuardFailed:
            log.warning("load.taken_over", instance=instance, snapshot=snapshot_id,
                        reason="its snapshot was dropped by another run: this run's lock was lost")
            deps.interrupted.forget(instance)
            return
    deps.space.done(instance)
    deps.interrupted.done(instance)
    log.info("load.finished", instance=instance, outcome=flows.TYPE_OF[type(result)], errors=outcome.errors)


async def run_due(deps: LoaderDeps) -> None:
    """The pass (every PASS_S): the load of each Running instance (a loader died mid-load, or it was interrupted)
    and of each Scheduled one whose time has come. PostgreSQL down: its query raises, and no instance is tried.
    An interrupted instance it no longer lists was finished or deleted elsewhere: forgotten, without a line."""
    asked_at = time.monotonic()
    due = await due_instances(deps.pool, datetime.now(UTC))
    deps.interrupted.forget_unlisted(due, asked_at)
    deps.space.forget_unlisted(due, asked_at)  # the same for a full store's waits: no FileStoreFull for them
    for instance in due:
        await run_instance(instance, deps, taken_up=True)


async def due_instances(pool: asyncpg.Pool, now: datetime) -> list[int]:
    """Running instances (a loader died mid-load) and Scheduled ones whose time has come."""
    rows = await pool.fetch(
        "SELECT instance FROM instance_list WHERE state = $1 OR (state = $2 AND scheduled_at <= $3) "
        "ORDER BY instance", InstanceState.RUNNING.value, InstanceState.SCHEDULED.value, now)
    return [int(r["instance"]) for r in rows]


# Longer than any id a regional system gives; a longer "source_id" is not used to name a stream.
SOURCE_ID_MAX = 200
async def reject_source_record(record_id: str | None, body: Any, reason: str, *, deps: LoaderDeps,
                               kind: str) -> None:
    """Publishes `sources.record-rejected` (through the outbox) naming the record and the fields: the
    rejection hook of a per-message consumer. Source intake itself is batched
    (services.loader.batch_intake, which builds the same event)."""
    from services.loader.batch_intake import rejection

    stream, event, key = rejection(record_id, body, reason, kind)
    await deps.store.append(stream, [event], expected_version=None, key=key)
