"""`flows outbox parked|show|retry|skip`: the outbox rows the relay parked, and what to do with them.

A row the relay cannot send for a permanent reason (too large for its topic, an invalid topic, a topic the cluster
lacks and the registry does not know) is parked; its stream's later rows wait behind it (services.runtime.outbox).
Fix the cause, then retry the row, or give up on it with a reason. Each decision is an event of the row's stream
`outbox-row-<id>` in the event store, with who acted (FLOWS_OPERATOR, else the login name) and, for a skip, why.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import typer

from services.cli.common import UserError, console, database, operator_name, settings, table, user_errors
from services.runtime import outbox

outbox_app = typer.Typer(help="Parked outbox rows: list, show, retry (after the fix), skip (with a reason).",
                         no_args_is_help=True)

ROW_ID = typer.Argument(metavar="ROW_ID", help="the outbox row's id (`flows outbox parked` lists them)")


def _utc(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}"


def _short(text: str | None, width: int = 90) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _behind(waiting: int) -> str:
    return "no later row of its stream waits" if not waiting else \
        f"{waiting} later row(s) of its stream wait behind it"


@outbox_app.command("parked")
@user_errors
def parked(as_json: Annotated[bool, typer.Option("--json", help="every field, the whole reason")] = False) -> None:
    """The parked rows, oldest first: row, event, topic, key, when parked, why, how many rows of its stream wait."""
    cfg = settings()

    async def go() -> list[dict[str, Any]]:
        async with database(cfg) as pool:
            return await outbox.parked_rows(pool)

    rows = asyncio.run(go())
    if as_json:
        typer.echo(json.dumps([{"row": r["id"], "event_id": str(r["event_id"]), "topic": r["topic"], "key": r["key"],
                                "parked_at": r["parked_at"].isoformat(), "reason": r["parked_reason"],
                                "waiting": r["waiting"]} for r in rows], indent=2, ensure_ascii=False))
        return
    if not rows:
        console.print("no parked outbox row: every stream is moving")
        return
    console.print(table(f"{len(rows)} parked outbox row(s)",
                        ["row", "event", "topic", "key", "parked at (UTC)", "waiting behind", "reason"],
                        [(r["id"], r["event_id"], r["topic"], r["key"], _utc(r["parked_at"]), r["waiting"],
                          _short(r["parked_reason"])) for r in rows]))
    console.print("Fix the cause (e.g. `flows topics apply` for a topic's config), then `flows outbox retry ROW_ID`; "
                  "or give up on the row: `flows outbox skip ROW_ID --reason ...`. `flows outbox show ROW_ID`: the "
                  "whole reason.", markup=False)


@outbox_app.command("show")
@user_errors
def show(row_id: Annotated[int, ROW_ID]) -> None:
    """One outbox row: its state, its whole parked reason, and who retried or skipped it, when and why."""
    cfg = settings()

    async def go() -> tuple[dict[str, Any] | None, list[Any]]:
        async with database(cfg) as pool:
            return await outbox.outbox_row(pool, row_id), await outbox.decisions(pool, row_id)

    row, decided = asyncio.run(go())
    if row is None and not decided:
        raise UserError(f"there is no outbox row {row_id}: `flows outbox parked` lists the parked rows")
    if row is None:
        console.print(f"[bold]outbox row {row_id}[/]  no longer in the outbox (deleted 7 days after it was published "
                      "or skipped); the decisions about it:")
    else:
        if row["skipped_at"] is not None:
            state = f"skipped at {_utc(row['skipped_at'])} UTC: never published"
        elif row["published_at"] is not None:
            state = f"published at {_utc(row['published_at'])} UTC"
        elif row["parked_at"] is not None:
            state = f"parked since {_utc(row['parked_at'])} UTC; {_behind(row['waiting'])}"
        else:
            state = "waiting for the relay" + (f"; {row['waiting']} later row(s) of its stream behind it"
                                               if row["waiting"] else "")
        console.print(f"[bold]outbox row {row_id}[/]  status: {state}")
        for label, value in (("event:", row["event_id"]), ("topic:", row["topic"]), ("key:", row["key"]),
                             ("created:", f"{_utc(row['created_at'])} UTC"),
                             ("payload:", f"{row['payload_bytes']} bytes")):
            console.print(f"{label:<10}{value}", markup=False, highlight=False)
        if row["parked_reason"]:
            console.print(f"{'reason:':<10}{row['parked_reason']}", markup=False, highlight=False)
    for event in decided:
        what = "retried" if event.type == outbox.RETRIED else "skipped"
        why = f": {event.data['reason']}" if event.type == outbox.SKIPPED else ""
        parked_at = _utc(datetime.fromisoformat(event.data["parked_at"])) if event.data.get("parked_at") else "?"
        console.print(f"{what} by {event.actor} at {_utc(event.recorded_at)} UTC{why} (parked at {parked_at} UTC: "
                      f"{_short(event.data.get('parked_reason'), 200)})", markup=False, highlight=False)


def _decide(row_id: int, decide: Callable[[asyncpg.Pool], Awaitable[Any]]) -> tuple[Any, int]:
    """An operator's decision about a parked row (`decide(pool)`: retry_parked or skip_parked), and how many later rows
    of its stream wait behind it; NotParked as the command's error."""
    cfg = settings()

    async def go() -> tuple[Any, dict[str, Any] | None]:
        async with database(cfg) as pool:
            fact = await decide(pool)
            return fact, await outbox.outbox_row(pool, row_id)

    try:
        fact, row = asyncio.run(go())
    except outbox.NotParked as exc:
        raise UserError(str(exc)) from None
    return fact, row["waiting"] if row is not None else 0


@outbox_app.command("retry")
@user_errors
def retry(row_id: Annotated[int, ROW_ID]) -> None:
    """Unpark a row once its cause is fixed: the relay sends it again, then its stream's later rows; who is recorded."""
    by = operator_name()
    fact, waiting = _decide(row_id, lambda pool: outbox.retry_parked(pool, row_id, by=by))
    console.print(f"retried outbox row {row_id} (event {fact.event_id}, topic {fact.topic}, key {fact.key}) by {by}: "
                  f"unparked; the relay of a running service sends it, then {waiting} later row(s) of its stream. "
                  f"Parked again if its cause remains: `flows outbox parked`.", markup=False, highlight=False)


@outbox_app.command("skip")
@user_errors
def skip(row_id: Annotated[int, ROW_ID],
         reason: Annotated[str, typer.Option(help="why the row is given up on (recorded with who skipped)")]) -> None:
    """Give up on a parked row: never published (its event stays in the store), its stream goes on; who and why are
    recorded."""
    if not reason.strip():
        raise UserError("--reason is empty: say why the row is given up on (it will never be published)")
    by = operator_name()
    fact, waiting = _decide(row_id, lambda pool: outbox.skip_parked(pool, row_id, reason=reason, by=by))
    console.print(f"skipped outbox row {row_id} (event {fact.event_id}, topic {fact.topic}, key {fact.key}) by {by}: "
                  f"{reason}. The event stays in the event store and is never published; {waiting} later row(s) of "
                  "its stream go on.", markup=False, highlight=False)
