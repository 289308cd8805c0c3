"""Reading topics as an observer: partitions assigned by hand, no group id, nothing ever committed.

`flows tail`, `flows dlq` and the audit tests read this way, so they can never move a service's
committed offsets nor take partitions away from it in a rebalance.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


@contextlib.asynccontextmanager
async def observer(bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer without group_id (so it cannot commit) and without auto-commit."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="latest", client_id="flows-observer")
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def existing_topics(consumer: AIOKafkaConsumer) -> dict[str, list[int]]:
    """Every topic of the cluster with its partition numbers (fresh metadata)."""
    cluster: Any = await consumer._client.fetch_all_metadata()
    return {topic: sorted(cluster.partitions_for_topic(topic) or ()) for topic in cluster.topics()}


async def assign(consumer: AIOKafkaConsumer, topics: Sequence[str], *, from_beginning: bool = False,
                 since_ms: int | None = None) -> list[TopicPartition]:
    """Assigns every partition of the `topics` that exist; positions at the end, the beginning or a time."""
    known = await existing_topics(consumer)
    parts = [TopicPartition(t, p) for t in topics for p in known.get(t, [])]
    if not parts:
        return []
    consumer.assign(parts)
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
    return parts


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
