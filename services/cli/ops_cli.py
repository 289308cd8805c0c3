"""`flows tail` and `flows lag`: the ops team watching the topics, as an observer only
(no consumer group, no commit: see services.runtime.kafkaread)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Annotated, Any

import typer
from aiokafka import TopicPartition
from rich.markup import escape

from services.cli.common import console, err, settings, table, user_errors
from services.cli.personal import access_log_database, command_line, record_read, tail_reads_personal_data
from services.runtime import ops


@user_errors
def tail(topics: Annotated[list[str] | None, typer.Argument(help="topics (default: every business topic)")] = None,
         instance: Annotated[int | None, typer.Option(help="only this instance's events")] = None,
         ente: Annotated[str | None, typer.Option(help="only this entity's events")] = None,
         type_: Annotated[str | None, typer.Option("--type", help="ce type or its prefix, e.g. flows.load")] = None,
         from_beginning: Annotated[bool, typer.Option("--from-beginning")] = False,
         since: Annotated[str | None, typer.Option(help="10m, 2h, 3d or an ISO date-time")] = None,
         as_json: Annotated[bool, typer.Option("--json", help="one full JSON event per line")] = False,
         limit: Annotated[int | None, typer.Option(help="stop after this many events")] = None) -> None:
    """Follow topics live, one line per CloudEvent decoded through the contracts. Never joins a
    consumer group, never commits an offset."""
    if from_beginning and since:
        raise typer.BadParameter("give --from-beginning or --since, not both")
    start = ops.parse_since(since) if since else None
    names = topics or ops.business_topics()
    flt = ops.TailFilter(instance=instance, ente=ente, type=type_)

    cfg = settings()
    personal = tail_reads_personal_data(names, instance, type_)

    async def ready(parts: list[TopicPartition]) -> None:
        """Kafka answered and the partitions are assigned. A tail that may show source records
        (services/cli/personal.py) is recorded in the access log now, before any record is read: who, which of its
        topics carry them, the entity and the command; refused if it cannot be."""
        if personal:
            command = command_line("tail", *(topics or []), instance=instance, ente=ente, type=type_,
                                   from_beginning=from_beginning, since=since, json=as_json, limit=limit)
            async with access_log_database(cfg, command) as pool:
                await record_read(pool, command, "topic-tail", instance, topics=", ".join(personal), ente=ente)
        followed = sorted({tp.topic for tp in parts})
        err.print(f"following {len(parts)} partition(s) of {len(followed)} topic(s) (Ctrl-C to stop)")

    async def follow() -> None:
        shown = 0
        async for seen in ops.tail(cfg.kafka_bootstrap, names, flt, from_beginning=from_beginning,
                                   since=start, on_ready=ready):
            if as_json:
                typer.echo(json.dumps(seen.as_json(), default=str, ensure_ascii=False))
            else:
                typer.echo(seen.line())
            shown += 1
            if limit is not None and shown >= limit:
                return

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        pass


def _partitions_text(partitions: Iterable[tuple[str, int]]) -> str:
    """flows.a 0,1,2; flows.b 4: the partitions of a member, per topic."""
    per_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        per_topic.setdefault(topic, []).append(partition)
    return "; ".join(f"{topic} {','.join(map(str, ps))}" for topic, ps in per_topic.items()) or "no partition"


def _group_json(g: ops.GroupLag) -> dict[str, Any]:
    return {"group": g.group, "state": g.described.state, "lag": g.lag, "mark": g.mark(), "warning": g.warning(),
            "members": [{"member_id": m.member_id, "client_id": m.client_id, "host": m.host,
                         "partitions": [{"topic": t, "partition": p} for t, p in m.partitions]}
                        for m in g.described.members],
            "partitions": [{"topic": r.topic, "partition": r.partition, "committed": r.committed, "end": r.end,
                            "lag": r.lag, "last_commit": r.last_commit.isoformat() if r.last_commit else None,
                            "held_by": holder.member_id if (holder := g.described.holder(r.topic, r.partition))
                            else None}
                           for r in g.partitions]}


@user_errors
def lag(group: Annotated[list[str] | None, typer.Option(help="only these consumer groups")] = None,
        as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Per consumer group: its state and members; per partition: committed offset, end offset, lag, last
    commit time, the member holding it.

    A group with committed offsets and no member is marked NO MEMBER; with lag too, NOBODY CONSUMING (its messages
    wait for nobody)."""
    groups = asyncio.run(ops.consumer_groups(settings().kafka_bootstrap, group))
    if as_json:
        typer.echo(json.dumps([_group_json(g) for g in groups], indent=2))
        return
    if not groups:
        console.print("no consumer group" + (f" named {', '.join(group)}" if group else "") + " on the cluster")
        return
    console.print(table("consumer groups", ["group", "state", "members (client id@host: partitions held)", "lag",
                                            "mark"],
                        [(g.group, g.described.state,
                          "\n".join(f"{m.name}: {_partitions_text(m.partitions)}" for m in g.described.members)
                          or "none", g.lag, g.mark() or "")
                         for g in groups]))
    rows = [(g, r) for g in groups for r in g.partitions]
    if rows:
        console.print(table("consumer lag", ["group", "topic", "partition", "committed", "end", "lag", "last commit",
                                             "held by"],
                            [(r.group, r.topic, r.partition, r.committed, r.end, r.lag,
                              r.last_commit.strftime("%Y-%m-%d %H:%M:%S UTC") if r.last_commit else "?",
                              holder.name if (holder := g.described.holder(r.topic, r.partition)) else "nobody")
                             for g, r in rows]))
    else:
        console.print("no consumer group has committed an offset yet")
    for g in groups:
        if warning := g.warning():
            style = "bold red" if g.lag else "yellow"
            console.print(f"[{style}]{escape(g.group)}: {escape(warning)}[/]", highlight=False)
