"""Reading topics as an observer: partitions assigned by hand, no group id, nothing ever committed.

`flows tail`, `flows dlq` and the audit tests read this way, so they can never move a service's
committed offsets nor take partitions away from it in a rebalance.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.runtime.settings import bootstrap_list


@contextlib.asynccontextmanager
async def observer(bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer without group_id (so it cannot commit) and without auto-commit."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_list(bootstrap), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="latest", client_id="flows-observer")
    try:
        await consumer.start()
    except BaseException:
        # No broker (the platform down): closed here, else aiokafka warns "Unclosed AIOKafkaConsumer" on the
        # operator's terminal after the command's own error line (`flows tail`, `flows lag`, `flows dlq list`).
        await consumer.stop()
        raise
    try:
        yield consumer
    finally:
        await consumer.stop()


async def existing_topics(consumer: AIOKafkaConsumer) -> dict[str, list[int]]:
    """Every topic of the cluster with its partition numbers (fresh metadata)."""
    cluster: Any = await consumer._client.fetch_all_metadata()
    names = cluster.topics(exclude_internal_topics=False)  # `flows lag` reads __consumer_offsets
    return {topic: sorted(cluster.partitions_for_topic(topic) or ()) for topic in names}


async def assign(consumer: AIOKafkaConsumer, topics: Sequence[str], *, from_beginning: bool = False,
                 since_ms: int | None = None) -> list[TopicPartition]:
    """Assigns every partition of the `topics` that exist; positions at the end, the beginning or a time."""
    known = await existing_topics(consumer)
    parts = [TopicPartition(t, p) for t in topics for p in known.get(t, [])]
    if not parts:
        return []
    consumer.assign(parts)
    await _position(consumer, parts, from_beginning=from_beginning, since_ms=since_ms)
    return parts


async def add_new_partitions(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    """Also assigns the partitions of `topics` created since (read from their beginning: all of
    them is new), keeping the position of those already assigned."""
    known = await existing_topics(consumer)
    assigned = consumer.assignment()
    new = [TopicPartition(t, p) for t in topics for p in known.get(t, []) if TopicPartition(t, p) not in assigned]
    if new:
        kept = {tp: await consumer.position(tp) for tp in assigned}
        consumer.assign([*kept, *new])
        for tp, offset in kept.items():
            consumer.seek(tp, offset)
        await consumer.seek_to_beginning(*new)
    return new


async def _position(consumer: AIOKafkaConsumer, parts: list[TopicPartition], *, from_beginning: bool,
                    since_ms: int | None) -> None:
    if since_ms is not None:
        found = await consumer.offsets_for_times({tp: since_ms for tp in parts})
        ends = await consumer.end_offsets(parts)
        for tp in parts:
            at = found.get(tp)
            consumer.seek(tp, at.offset if at is not None else ends[tp])
    elif from_beginning:
        await consumer.seek_to_beginning(*parts)
    else:
        await consumer.seek_to_end(*parts)
    for tp in parts:  # resolve the lazy seeks now: what is published from here on is read
        await consumer.position(tp)


async def read_to_end(bootstrap: str, topics: Sequence[str]) -> list[Any]:
    """Every record now on `topics`, from the beginning to the end offsets read at the start."""
    async with observer(bootstrap) as consumer:
        parts = await assign(consumer, topics, from_beginning=True)
        if not parts:
            return []
        ends = await consumer.end_offsets(parts)
        records: list[Any] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(r for r in batch if r.offset < ends[TopicPartition(r.topic, r.partition)])
        return sorted(records, key=lambda r: (r.timestamp, r.topic, r.partition, r.offset))
