"""`flows dlq list|show|redrive|discard`: the dead letters of every topic, and what to do with them."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from services.cli.common import UserError, console, database, operator_name, settings, table, user_errors
from services.cli.personal import access_log_database, command_line, record_read
from services.runtime import deadletters as dl
from services.runtime.eventstore import EventStore

dlq_app = typer.Typer(help="Dead letters: list, show, redrive (once), discard.", no_args_is_help=True)


def _short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@dlq_app.command("list")
@user_errors
def list_(topic: Annotated[str | None, typer.Argument(help="a topic or its .dlq (default: every .dlq)")] = None,
          pending: Annotated[bool, typer.Option(help="only those neither redriven nor discarded")] = False) -> None:
    """Every dead letter: id, when, original topic and key, reason, what was decided."""
    cfg = settings()
    command = command_line("dlq", "list", *([topic] if topic else []), pending=pending)

    async def go() -> list[tuple[str, ...]]:
        letters = await dl.list_letters(cfg.kafka_bootstrap, topic)
        # read, not shown yet: without the access log, it never is
        async with access_log_database(cfg, command) as pool:
            decided = await dl.decisions(EventStore(pool, source="/flows/cli"))
            rows = _rows(letters, decided)
            if rows:  # a reason quotes the refused value (a codice fiscale): recorded before any is shown
                await record_read(pool, command, "dead-letter-list", None,
                                  topic=dl.dlq_topic(topic) if topic else None)
        return rows

    def _rows(letters: list[dl.DeadLetter], decided: dict[str, Any]) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = []
        for letter in letters:
            decision = decided.get(letter.id)
            status = "pending" if decision is None else \
                f"{'redriven' if decision.type == dl.REDRIVEN else 'discarded'} by {decision.actor}"
            if pending and decision is not None:
                continue
            rows.append((letter.id, f"{letter.failed_at:%Y-%m-%d %H:%M:%S}", letter.original_topic,
                         letter.key or "-", _short(letter.reason), status))
        return rows

    rows = asyncio.run(go())
    if not rows:
        console.print("no dead letters" + (f" on {dl.dlq_topic(topic)}" if topic else ""))
        return
    console.print(table(f"{len(rows)} dead letter(s)", ["id", "failed at (UTC)", "topic", "key", "reason", "status"],
                        rows))


@dlq_app.command("show")
@user_errors
def show(letter_id: Annotated[str, typer.Argument(metavar="ID", help="<topic>.dlq:<partition>:<offset>")]) -> None:
    """One dead letter: its reason, where it came from, its original headers and body."""
    cfg = settings()
    command = command_line("dlq", "show", letter_id)

    async def go() -> tuple[dl.DeadLetter, str]:
        letter = await dl.fetch(cfg.kafka_bootstrap, letter_id)
        # read, not shown yet: without the access log, it never is
        async with access_log_database(cfg, command) as pool:
            decision = (await dl.decisions(EventStore(pool, source="/flows/cli"))).get(letter.id)
            # its body is a message as it was sent (a source record names its patient): recorded before it is shown,
            # as the console's dead letter page records it
            await record_read(pool, command, "dead-letter-view", None, dead_letter=letter.id,
                              topic=letter.original_topic)
        status = "pending" if decision is None else (
            f"{'redriven' if decision.type == dl.REDRIVEN else 'discarded'} by {decision.actor} at "
            f"{decision.recorded_at:%Y-%m-%d %H:%M:%S %Z}: {json.dumps(decision.data, sort_keys=True)}")
        return letter, status

    letter, status = asyncio.run(go())
    unknown = "unknown"
    console.print(f"[bold]{letter.id}[/]  status: {status}")
    console.print(f"reason:    {letter.reason}")
    partition = letter.original_partition  # partition 0 is a partition: never "unknown"
    console.print(f"from:      {letter.original_topic} partition {partition if partition is not None else unknown} "
                  f"offset {letter.original_offset if letter.original_offset is not None else unknown}, "
                  f"key {letter.key or '-'}")
    console.print(f"failed at: {letter.failed_at:%Y-%m-%d %H:%M:%S %Z} after {letter.attempts or 0} attempt(s), "
                  f"consumer group {letter.group or unknown}")
    console.print(table("original headers", ["name", "value"], sorted(letter.original_headers().items())))
    console.print("body:", markup=False)
    typer.echo(letter.body_text())


@dlq_app.command("redrive")
@user_errors
def redrive(letter_id: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
            topic: Annotated[str | None, typer.Option(help="redrive the pending dead letters of this topic")] = None,
            all_: Annotated[bool, typer.Option("--all", help="with --topic: every pending one")] = False) -> None:
    """Re-publish a dead letter to its original topic (original key, new ce id), once; who and when are recorded."""
    if (letter_id is None) == (topic is None):
        raise typer.BadParameter("give a dead letter ID or --topic T --all")
    cfg = settings()
    by = operator_name()

    async def go() -> list[str]:
        if letter_id is not None:
            letters = [await dl.fetch(cfg.kafka_bootstrap, letter_id)]
        else:
            assert topic is not None
            letters = await dl.list_letters(cfg.kafka_bootstrap, topic)
        done = []
        async with database(cfg) as pool:
            store = EventStore(pool, source="/flows/cli")
            if topic is not None:
                decided = await dl.decisions(store)
                letters = [x for x in letters if x.id not in decided]
                if not letters:
                    raise UserError(f"no pending dead letter on {dl.dlq_topic(topic)}")
                if not all_:
                    raise UserError(f"{len(letters)} pending dead letter(s) on {dl.dlq_topic(topic)}: "
                                    "add --all to redrive them all, or give one ID")
            for letter in letters:
                fact = await dl.redrive(pool, store, letter, by)
                done.append(f"{letter.id} -> {fact.original_topic} key {fact.key}, new id {fact.new_id}")
        return done

    try:
        done = asyncio.run(go())
    except dl.AlreadyDecided as exc:
        raise UserError(str(exc)) from None
    for line in done:
        console.print(f"[green]redriven[/] {line} (queued in the outbox; a running service's relay publishes it)")


@dlq_app.command("discard")
@user_errors
def discard(letter_id: Annotated[str, typer.Argument(metavar="ID")],
            reason: Annotated[str, typer.Option(help="why it is not to be processed")]) -> None:
    """Mark a dead letter as not to be processed (it stays on its topic); who, when and why are recorded."""
    cfg = settings()

    async def go() -> None:
        letter = await dl.fetch(cfg.kafka_bootstrap, letter_id)
        async with database(cfg) as pool:
            await dl.discard(EventStore(pool, source="/flows/cli"), letter.id, letter.original_topic, reason,
                             operator_name())

    try:
        asyncio.run(go())
    except dl.AlreadyDecided as exc:
        raise UserError(str(exc)) from None
    console.print(f"discarded {letter_id}: {reason}")
