"""What the formatter does: a format request on a Checked instance -> Formatting in progress ->
files -> Formatted, or Format failed with its reasons.

The request is recorded in the instance's stream (not re-published: it came from Kafka), together
with Formatting in progress, in the transaction that records the message as processed.

A full file store (ENOSPC) is not a Format failed: the instance stays Formatting in progress, no file of the
attempt is left (the file store removes its temporary files), and the periodic pass formats it again once
space is freed, backed off meanwhile (services.runtime.filestore.SpaceWaits: one `store.full` warning per
attempt, naming the store's path and the instance). The Kafka handler returns at once: the partition and
the other instances go on.

PostgreSQL gone or a connection cut under a format (a transient error) is not a Format failed either: the instance
stays Formatting in progress, nothing is appended to its history, and the resume pass formats it again, backed off
per instance (services.runtime.backoff.Interruptions: the next pass first, then doubling to 5 minutes; one
`format.interrupted` warning per attempt, `format.recovered` once an attempt gets through). Only an attempt that
ran is counted: one cut after the instance's lock was taken and its history read.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from contracts import flows
from contracts.instance import FlowInstance
from contracts.states import Actor, InstanceState
from contracts.ts730 import MAX_ZIP_BYTES
from services.runtime import tracing
from services.runtime.backoff import INTERRUPTED_CAP_S, Interruptions
from services.runtime.broker import Incoming, is_transient
from services.runtime.filestore import SpaceWaits, is_full
from services.runtime.incident import incident_reference, not_completed
from services.runtime.instances import ServiceDeps
from services.runtime.locks import FORMAT_LOCK, instances_in_state
from services.runtime.logging import get_logger
from services.runtime.read_models import instance_stream

CONSUMER = "formatter"
RESUME_PASS_S = 5.0  # the period of the pass that formats the instances left Formatting in progress (app.py)
log = get_logger("formatter")
# the reason of a format that failed on something unexpected (the console shows it): Italian, then the exception
FORMAT_NOT_COMPLETED = "la formattazione non è stata completata"


def interruptions(initial_s: float | None = None, cap_s: float = INTERRUPTED_CAP_S) -> Interruptions:
    """The backoff of interrupted formats: the first retry at the next resume pass, unless told otherwise."""
    return Interruptions(log, initial_s=initial_s or RESUME_PASS_S, cap_s=cap_s, service="formatter",
                         work="format")


@dataclass
class FormatterDeps(ServiceDeps):
    ACTOR = Actor.FORMATTER
    CONSUMER = CONSUMER
    sanitel_cert: Any = None
    max_zip_bytes: int = MAX_ZIP_BYTES
    line_end: str = "LF"  # of the fixed-width files (Settings.fixed_width_line_end)
    space: SpaceWaits = field(default_factory=lambda: SpaceWaits(log))  # instances waiting for a full store
    interrupted: Interruptions = field(default_factory=interruptions)  # formats cut by a transient error


async def handle_format_requested(cmd: flows.FormatRequested, msg: Incoming, deps: FormatterDeps) -> None:
    async with deps.instances.handling(msg) as handling:
        if handling is None:
            return
        earlier = await handling.repeats(cmd.instance, flows.FormatRequested, cmd.seen_version)
        if earlier is not None:  # asked again while the first request waited: that one formats (or did)
            log.info("format.request_repeated", instance=cmd.instance, requested_by=cmd.requested_by,
                     seen_version=cmd.seen_version, earlier_request_version=earlier)
            return
        current = await handling.read(cmd.instance, refusal="cannot be formatted", allows=[
            (flows.FormatRequested, Actor.OPERATOR), (flows.FormattingStarted, Actor.FORMATTER)])
        current = await handling.append(current, cmd, actor=cmd.requested_by, publish=False)
        await handling.append(current, flows.FormattingStarted(instance=cmd.instance), caused=False)
    await format_instance(cmd.instance, deps)


async def format_instance(instance: int, deps: FormatterDeps, *, taken_up: bool = False) -> None:
    """Formats an instance left Formatting in progress, once, whoever asks first. An attempt starts once its lock
    is held and its history read: a transient error before that propagates (the pass's loop, the consumer wait
    the outage out) and charges it nothing; one after it is an interruption, backed off (deps.interrupted).
    `taken_up`: the pass runs it, not its command (see the loader's run_instance): the attempt continues the trace
    of the instance's latest format request."""
    if not (deps.space.due(instance) and deps.interrupted.due(instance)):
        return  # the store was full at its last attempt, or it was interrupted: later (or once space is freed)
    async with deps.instances.working(FORMAT_LOCK, instance) as current:
        if current is None or current.state is not InstanceState.FORMATTING:
            if current is not None:  # finished (or deleted) elsewhere meanwhile
                deps.space.forget(instance)
                deps.interrupted.forget(instance)
            return
        if not (deps.space.due(instance) and deps.interrupted.due(instance)):
            return  # an attempt that let the lock go as this run took it left a wait: read again, under the lock
        began = time.monotonic()
        try:
            async with (tracing.continued(deps.pool, instance_stream(instance), "formatter pass: format taken up",
                                          flows.TYPE_OF[flows.FormatRequested]) if taken_up
                        else contextlib.nullcontext()):
                await _format(instance, current, deps)
        except Exception as exc:
            if not is_transient(exc) or is_full(exc):
                raise
            # PostgreSQL gone or a connection cut under the work: not the instance's fault, nothing in its history
            deps.interrupted.failed(instance, exc, ran_s=time.monotonic() - began, flow_type=current.flow_type)


async def _format(instance: int, current: FlowInstance, deps: FormatterDeps) -> None:
    """One attempt (format_instance holds its lock): an outcome, a wait for space, or a transient error raised."""
    from services.formatter.engine import run_format

    log.info("format.started", instance=instance, flow_type=current.flow_type)
    result: flows.Payload
    try:
        assert current.source_instance is not None  # Formatting in progress comes after Checked
        outcome = await run_format(deps.pool, deps.files, instance, current.source_instance, current.flow_type,
                                   current.layout_version, line_end=deps.line_end,
                                   options_730={"certificate_path": deps.sanitel_cert,
                                                "max_zip_bytes": deps.max_zip_bytes})
        if outcome.ok:
            result = flows.Formatted(instance=instance, files=outcome.files)
        else:
            result = flows.FormatFailed(instance=instance, reasons=outcome.reasons or ["nessun motivo indicato"])
    except Exception as exc:
        if is_full(exc):  # the platform's disk, not the instance: it stays Formatting in progress
            deps.space.failed(instance, exc, flow_type=current.flow_type)
            deps.interrupted.done(instance)  # the database carried this attempt: what it waits for now is space
            return
        if is_transient(exc):  # PostgreSQL gone or a connection cut under the work: format_instance backs it off
            raise
        reference = incident_reference()  # the operator reads it in the history; the help desk finds it in the log
        log.exception("format.crashed", instance=instance, reference=reference)
        result = flows.FormatFailed(instance=instance, reasons=[
            not_completed(FORMAT_NOT_COMPLETED, reference, "richieda di nuovo la formattazione dell'istanza")])
    await deps.instances.append(current, result)
    deps.space.done(instance)
    deps.interrupted.done(instance)
    log.info("format.finished", instance=instance, outcome=flows.TYPE_OF[type(result)])


async def resume_interrupted(deps: FormatterDeps) -> None:
    """The pass (every RESUME_PASS_S): each instance left Formatting in progress (its formatter died, or it was
    interrupted). An interrupted instance it no longer lists was finished or deleted elsewhere: forgotten."""
    asked_at = time.monotonic()
    formatting = await instances_in_state(deps.pool, InstanceState.FORMATTING.value)
    deps.interrupted.forget_unlisted(formatting, asked_at)
    deps.space.forget_unlisted(formatting, asked_at)  # the same for a full store's waits: no FileStoreFull for them
    for instance in formatting:
        await format_instance(instance, deps, taken_up=True)
