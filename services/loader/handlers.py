"""What the loader does with each message: plain functions of (message, deps).

A load request becomes an instance (number from `flow_instance_seq`), Running, in one
transaction with the request's dedup record; then the load runs (snapshot + checks) and its
outcome, Checked or Failed loading, is appended. A loader that dies in the middle leaves the
instance Running: `resume_unfinished` picks it up again at start (the snapshot of a crashed run
is never reused: a new one is taken, with a new number).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from contracts import flows
from contracts.states import InstanceState
from services.loader.catalogue import unknown_ente_reason
from services.runtime.broker import Incoming, Refused
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.filestore import FileStore
from services.runtime.locks import LOAD_LOCK, instance_lock
from services.runtime.logging import get_logger
from services.runtime.read_models import instance_stream

CONSUMER = "loader"
log = get_logger("loader")


@dataclass(frozen=True)
class LoaderDeps:
    pool: asyncpg.Pool
    store: EventStore
    files: FileStore


def _event(type_: str, payload: flows.Payload, actor: str, **metadata: Any) -> NewEvent:
    return NewEvent(type=type_, data=payload.model_dump(mode="json"), actor=actor, metadata=metadata)


async def handle_load_requested(cmd: flows.LoadRequested, msg: Incoming, deps: LoaderDeps) -> None:
    if (unknown := unknown_ente_reason(cmd.ente)) is not None:
        # no instance: the command goes to flows.load-requested.dlq with this reason
        raise Refused(f"load request {cmd.request_id}: {unknown}")
    now = datetime.now(UTC)
    scheduled = cmd.scheduled_at is not None and cmd.scheduled_at > now
    async with deps.pool.acquire() as conn, conn.transaction():
        async with deps.store.consume(conn, consumer=CONSUMER, message_id=msg.message_id) as fresh:
            if not fresh:
                return
        taken = await conn.fetchval(
            "INSERT INTO load_request (request_id, instance) VALUES ($1, nextval('flow_instance_seq')) "
            "ON CONFLICT (request_id) DO NOTHING RETURNING instance", cmd.request_id)
        if taken is None:  # the same request sent twice (a new ce_id): one instance per request id
            log.info("load.duplicate_request", request_id=str(cmd.request_id))
            return
        instance = int(taken)
        common: dict[str, Any] = dict(instance=instance, request_id=cmd.request_id, flow_type=cmd.flow_type,
                      version=cmd.version, ente=cmd.ente, period=cmd.period, requested_by=cmd.requested_by)
        if scheduled:
            assert cmd.scheduled_at is not None
            first = _event("flows.load-scheduled", flows.LoadScheduled(**common, scheduled_at=cmd.scheduled_at),
                           cmd.requested_by, causation_id=msg.message_id)
        else:
            first = _event("flows.load-running", flows.LoadRunning(**common), cmd.requested_by,
                           causation_id=msg.message_id)
        await deps.store.append(instance_stream(instance), [first], expected_version=0, key=str(instance),
                                conn=conn)
    if not scheduled:
        await run_instance(instance, deps)


# Namespace of the loader's per-instance locks (see services.runtime.locks).
_RUNNABLE = ("flows.load-running", "flows.load-scheduled")


async def run_instance(instance: int, deps: LoaderDeps) -> None:
    """Runs the load of a Running (or due Scheduled) instance, once, whoever asks first."""
    async with instance_lock(deps.pool, LOAD_LOCK, instance) as held:
        if held:
            await _run_locked(instance, deps)


async def _run_locked(instance: int, deps: LoaderDeps) -> None:
    from services.loader.pipeline import run_load

    stream = instance_stream(instance)
    history = await deps.store.read_stream(stream)
    if not history or history[-1].type not in _RUNNABLE:
        return  # finished meanwhile
    created = next(e for e in history if e.type in ("flows.load-running", "flows.load-scheduled"))
    spec = created.data
    version = history[-1].version
    if history[-1].type == "flows.load-scheduled":
        await deps.store.append(stream, [_event("flows.load-running", flows.LoadRunning(
            **{k: spec[k] for k in ("instance", "request_id", "flow_type", "version", "ente", "period",
                                    "requested_by")}), "loader")], expected_version=version, key=str(instance))
        version += 1
    period = flows.Period.model_validate(spec["period"])
    async with deps.pool.acquire() as conn:
        snapshot_id = int(await conn.fetchval("SELECT nextval('flow_instance_seq')"))
    log.info("load.started", instance=instance, snapshot=snapshot_id, flow_type=spec["flow_type"])
    try:
        outcome = await run_load(deps.pool, deps.files, instance, snapshot_id, spec["flow_type"], spec["version"],
                                 spec["ente"], period.start, period.end, None)
    except Exception as exc:  # an unexpected failure is still a Failed loading, with its reason
        log.exception("load.crashed", instance=instance)
        failed = flows.LoadFailed(instance=instance, source_instance=snapshot_id, errors=1,
                                  summary=f"the load could not complete: {type(exc).__name__}: {exc}")
        await deps.store.append(stream, [_event("flows.load-failed", failed, "loader")],
                                expected_version=version, key=str(instance))
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
        type_ = "flows.load-checked"
    else:
        result = flows.LoadFailed(instance=instance, source_instance=snapshot_id, errors=outcome.errors,
                                  warnings=outcome.warnings, summary=outcome.summary, feedback=feedback)
        type_ = "flows.load-failed"
    await deps.store.append(stream, [_event(type_, result, "loader")], expected_version=version,
                            key=str(instance))
    log.info("load.finished", instance=instance, outcome=type_, errors=outcome.errors)


async def due_instances(pool: asyncpg.Pool, now: datetime) -> list[int]:
    """Running instances (a loader died mid-load) and Scheduled ones whose time has come."""
    rows = await pool.fetch(
        "SELECT instance FROM instance_list WHERE state = $1 OR (state = $2 AND scheduled_at <= $3) "
        "ORDER BY instance", InstanceState.RUNNING.value, InstanceState.SCHEDULED.value, now)
    return [int(r["instance"]) for r in rows]


async def reject_source_record(record_id: str | None, body: Any, reason: str, *, deps: LoaderDeps,
                               kind: str) -> None:
    """Publishes `sources.record-rejected` (through the outbox) naming the record and the fields: the
    rejection hook of a per-message consumer. Source intake itself is batched
    (services.loader.batch_intake, which builds the same event)."""
    from services.loader.batch_intake import rejection

    stream, event, key = rejection(record_id, body, reason, kind)
    await deps.store.append(stream, [event], expected_version=None, key=key)
