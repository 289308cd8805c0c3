"""`flows topics apply|list`: the Kafka topics, provisioned from the topic registry (contracts/topics.py)."""

from __future__ import annotations

import json

from services.cli.common import console, settings, table
from services.runtime.topics_admin import TopicState, apply_topics, list_topics


async def apply(as_json: bool = False, quiet: bool = False) -> list[TopicState]:
    cfg = settings()
    states = await apply_topics(cfg.kafka_bootstrap, cfg.topic_partitions)
    if as_json:
        console.print_json(json.dumps([s.as_dict() for s in states]))
    elif not quiet:
        _print(states, f"flows topics apply ({cfg.kafka_bootstrap})")
    else:
        changed = [s for s in states if s.actions]
        console.print(f"[dim]stack[/] topics: {len(states)} provisioned, {len(changed)} changed"
                      f" ({cfg.topic_partitions} partitions)")
    for state in states:
        for warning in state.warnings:
            console.print(f"[yellow]warning[/]: {state.name}: {warning}")
    return states


async def show(as_json: bool = False) -> list[TopicState]:
    cfg = settings()
    states = await list_topics(cfg.kafka_bootstrap, cfg.topic_partitions)
    if as_json:
        console.print_json(json.dumps([s.as_dict() for s in states]))
    else:
        _print(states, f"flows topics ({cfg.kafka_bootstrap})")
    return states


def _print(states: list[TopicState], title: str) -> None:
    rows = [(s.name, s.partitions, s.replication_factor, s.configs.get("min.insync.replicas"),
             s.configs.get("retention.ms"), s.configs.get("max.message.bytes"),
             "; ".join([*s.actions, *s.warnings])) for s in states]
    console.print(table(title, ["topic", "partitions", "replicas", "min ISR", "retention ms", "max bytes", "notes"],
                        rows))
