"""What the formatter does: a format request on a Checked instance -> Formatting in progress ->
files -> Formatted, or Format failed with its reasons.

The request is recorded in the instance's stream (not re-published: it came from Kafka), together
with Formatting in progress, in the transaction that records the message as processed.

A full file store (ENOSPC) is not a Format failed: the instance stays Formatting in progress, no file of the
attempt is left (the file store removes its temporary files), and the periodic pass formats it again once
space is freed, backed off meanwhile (services.runtime.filestore.SpaceWaits: one `store.full` warning per
attempt, naming the store's path and the instance). The Kafka handler returns at once: the partition and
the other instances go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contracts import flows
from contracts.states import Actor, InstanceState
from contracts.ts730 import MAX_ZIP_BYTES
from services.runtime.broker import Incoming, is_transient
from services.runtime.filestore import SpaceWaits, is_full
from services.runtime.instances import ServiceDeps
from services.runtime.locks import FORMAT_LOCK, instances_in_state
from services.runtime.logging import get_logger

CONSUMER = "formatter"
log = get_logger("formatter")


@dataclass
class FormatterDeps(ServiceDeps):
    ACTOR = Actor.FORMATTER
    CONSUMER = CONSUMER
    sanitel_cert: Any = None
    max_zip_bytes: int = MAX_ZIP_BYTES
    space: SpaceWaits = field(default_factory=lambda: SpaceWaits(log))  # instances waiting for a full store


async def handle_format_requested(cmd: flows.FormatRequested, msg: Incoming, deps: FormatterDeps) -> None:
    async with deps.instances.handling(msg) as handling:
        if handling is None:
            return
        current = await handling.read(cmd.instance, refusal="cannot be formatted", allows=[
            (flows.FormatRequested, Actor.OPERATOR), (flows.FormattingStarted, Actor.FORMATTER)])
        current = await handling.append(current, cmd, actor=cmd.requested_by, publish=False)
        await handling.append(current, flows.FormattingStarted(instance=cmd.instance), caused=False)
    await format_instance(cmd.instance, deps)


async def format_instance(instance: int, deps: FormatterDeps) -> None:
    from services.formatter.engine import run_format

    if not deps.space.due(instance):
        return  # the store was full at its last attempt: later, or once space is freed
    async with deps.instances.working(FORMAT_LOCK, instance) as current:
        if current is None or current.state is not InstanceState.FORMATTING:
            if current is not None:
                deps.space.forget(instance)  # finished (or deleted) elsewhere meanwhile
            return
        log.info("format.started", instance=instance, flow_type=current.flow_type)
        result: flows.Payload
        try:
            assert current.source_instance is not None  # Formatting in progress comes after Checked
            outcome = await run_format(deps.pool, deps.files, instance, current.source_instance, current.flow_type,
                                       current.layout_version,
                                       options_730={"certificate_path": deps.sanitel_cert,
                                                    "max_zip_bytes": deps.max_zip_bytes})
            if outcome.ok:
                result = flows.Formatted(instance=instance, files=outcome.files)
            else:
                result = flows.FormatFailed(instance=instance, reasons=outcome.reasons or ["no reason given"])
        except Exception as exc:
            if is_full(exc):  # the platform's disk, not the instance: it stays Formatting in progress
                deps.space.failed(instance, exc, flow_type=current.flow_type)
                return
            if is_transient(exc):  # PostgreSQL gone or a connection cut under the work: not the instance's fault
                log.warning("format.interrupted", instance=instance, error=f"{type(exc).__name__}: {exc}"[:300])
                return  # it stays Formatting in progress: the next resume pass formats it again
            log.exception("format.crashed", instance=instance)
            result = flows.FormatFailed(instance=instance, reasons=[f"{type(exc).__name__}: {exc}"])
        await deps.instances.append(current, result)
        deps.space.done(instance)
        log.info("format.finished", instance=instance, outcome=flows.TYPE_OF[type(result)])


async def resume_interrupted(deps: FormatterDeps) -> None:
    for instance in await instances_in_state(deps.pool, InstanceState.FORMATTING.value):
        await format_instance(instance, deps)
