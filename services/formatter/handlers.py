"""What the formatter does: a format request on a Checked instance -> Formatting in progress ->
files -> Formatted, or Format failed with its reasons.

The request is recorded in the instance's stream (not re-published: it came from Kafka), together
with Formatting in progress, in the transaction that records the message as processed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from contracts import flows
from contracts.states import Actor, IllegalTransition, InstanceState, apply_event
from contracts.ts730 import MAX_ZIP_BYTES
from services.runtime.broker import Incoming, Refused
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.filestore import FileStore
from services.runtime.locks import FORMAT_LOCK, instance_lock, instances_in_state
from services.runtime.logging import get_logger
from services.runtime.read_models import instance_state, instance_stream

CONSUMER = "formatter"
log = get_logger("formatter")


@dataclass(frozen=True)
class FormatterDeps:
    pool: asyncpg.Pool
    store: EventStore
    files: FileStore
    sanitel_cert: Any = None
    max_zip_bytes: int = MAX_ZIP_BYTES


async def handle_format_requested(cmd: flows.FormatRequested, msg: Incoming, deps: FormatterDeps) -> None:
    stream = instance_stream(cmd.instance)
    async with deps.pool.acquire() as conn, conn.transaction():
        async with deps.store.consume(conn, consumer=CONSUMER, message_id=msg.message_id) as fresh:
            if not fresh:
                return
        history = await deps.store.read_stream(stream)
        if not history:
            raise Refused(f"instance {cmd.instance} does not exist")
        state = instance_state(history)
        try:
            apply_event(state, "flows.format-requested", {}, Actor.OPERATOR)
            apply_event(state, "flows.formatting-started", {}, Actor.FORMATTER)
        except IllegalTransition as exc:
            raise Refused(f"instance {cmd.instance} cannot be formatted: {exc}") from exc
        version = history[-1].version
        await deps.store.append(stream, [NewEvent("flows.format-requested", cmd.model_dump(mode="json"),
                                                  actor=cmd.requested_by, metadata={"causation_id": msg.message_id})],
                                expected_version=version, key=str(cmd.instance), conn=conn, publish=False)
        started = flows.FormattingStarted(instance=cmd.instance)
        await deps.store.append(stream, [NewEvent("flows.formatting-started", started.model_dump(mode="json"),
                                                  actor="formatter")],
                                expected_version=version + 1, key=str(cmd.instance), conn=conn)
    await format_instance(cmd.instance, deps)


async def format_instance(instance: int, deps: FormatterDeps) -> None:
    async with instance_lock(deps.pool, FORMAT_LOCK, instance) as held:
        if held:
            await _format_locked(instance, deps)


async def _format_locked(instance: int, deps: FormatterDeps) -> None:
    from services.formatter.engine import run_format

    stream = instance_stream(instance)
    history = await deps.store.read_stream(stream)
    if instance_state(history) is not InstanceState.FORMATTING:
        return
    created = next(e for e in history if e.type == "flows.load-running").data
    checked = next(e for e in reversed(history) if e.type == "flows.load-checked").data
    version = history[-1].version
    log.info("format.started", instance=instance, flow_type=created["flow_type"])
    result: flows.Payload
    try:
        outcome = await run_format(deps.pool, deps.files, instance, int(checked["source_instance"]),
                                   created["flow_type"], created["version"],
                                   options_730={"certificate_path": deps.sanitel_cert,
                                                "max_zip_bytes": deps.max_zip_bytes})
        if outcome.ok:
            result = flows.Formatted(instance=instance, files=[flows.FileRef(**f) for f in outcome.files])
        else:
            result = flows.FormatFailed(instance=instance, reasons=outcome.reasons or ["no reason given"])
    except Exception as exc:
        log.exception("format.crashed", instance=instance)
        result = flows.FormatFailed(instance=instance, reasons=[f"{type(exc).__name__}: {exc}"])
    type_ = "flows.formatted" if isinstance(result, flows.Formatted) else "flows.format-failed"
    await deps.store.append(stream, [NewEvent(type_, result.model_dump(mode="json"), actor="formatter")],
                            expected_version=version, key=str(instance))
    log.info("format.finished", instance=instance, outcome=type_)


async def resume_interrupted(deps: FormatterDeps) -> None:
    for instance in await instances_in_state(deps.pool, InstanceState.FORMATTING.value):
        await format_instance(instance, deps)
