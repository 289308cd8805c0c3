"""Reading topics as an observer: partitions assigned by hand, no group id, nothing ever committed.

`flows tail`, `flows dlq` and the audit tests read this way, so they can never move a service's
committed offsets nor take partitions away from it in a rebalance.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from services.runtime import kafkarecords
from services.runtime.kafkarecords import ISOLATION_LEVEL
from services.runtime.settings import bootstrap_list

# The operators' tools read every topic through here: a record with a header name that is not UTF-8 is shown (its
# name escaped, services.runtime.ops.decode_headers) instead of stopping the read (services.runtime.kafkarecords).
kafkarecords.install()


@contextlib.asynccontextmanager
async def observer(bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer without group_id (so it cannot commit) and without auto-commit.

    It reads committed records only, as the services do (services.runtime.kafkarecords.ISOLATION_LEVEL): a record of a
    transaction its producer aborted is not shown as if it had happened (the services never handled it), and the
    end offsets it reads are the last stable ones, those the services' consumers can reach (`flows lag`)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_list(bootstrap), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="latest", client_id="flows-observer",
                                isolation_level=ISOLATION_LEVEL)
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


async def offset_ranges(consumer: AIOKafkaConsumer, parts: Sequence[TopicPartition]
                        ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """The beginning and the end offsets of `parts`, which this observer assigns first: aiokafka then learns the
    leaders of all their topics in one metadata update. Unassigned, an offsets request learns one unknown topic at a
    time, each after its 100 ms back-off (retry_backoff_ms): `flows lag` on the 33 topics a test stack's groups had
    committed on took 3.3 s for its end offsets, 8 ms assigned first."""
    if not parts:
        return {}, {}
    consumer.assign(list(parts))
    return await consumer.beginning_offsets(list(parts)), await consumer.end_offsets(list(parts))


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
        return sorted(records, key=lambda r: (*order_key(r), r.topic, r.partition, r.offset))


_NO_TIME = datetime.min.replace(tzinfo=UTC)


def order_key(record: ConsumerRecord) -> tuple[int, datetime]:
    """Where `record` goes in the order of what happened: its timestamp (milliseconds), then its event's time (the
    ce_time header, microseconds). Two events of one instance on two topics, Running and Checked of a small load,
    are often sent by the relay within one millisecond: by the timestamp alone their order was the order their
    partitions were fetched in, and a tail showed the Checked before the Running (once, on a fast machine). A
    record without a readable ce_time goes first among its millisecond's."""
    for name, value in record.headers or ():
        if name == "ce_time":
            try:
                return record.timestamp, datetime.fromisoformat(value.decode())
            except (ValueError, UnicodeDecodeError):
                break
    return record.timestamp, _NO_TIME


async def history(consumer: AIOKafkaConsumer, parts: Sequence[TopicPartition], *,
                  poll_ms: int = 500, give_up_s: float = 10.0) -> AsyncIterator[ConsumerRecord]:
    """The records already on `parts` (from their positions up to their end offsets as this starts), in timestamp
    order across partitions: a k-way merge of the partitions' heads. getmany hands records over a fetch at a time
    and a fetch at a time per partition (1 MB each), so sorting each batch is not enough: a topic with a long
    history ahead of an instance's first event would show its later events, on smaller topics, first.

    The earliest head is given only once every partition still behind its end has a head. Only partitions whose
    heads ran out are fetched, the others paused, so what is held is at most a fetch per partition. A partition
    that is behind but gives nothing for `give_up_s` (it should not happen: records gone under retention move its
    position to the end) is no longer waited for: its records then come live. A count of empty polls would not do:
    a poll ends as soon as ANY partition has data, so a partition still resetting its offset had two empty polls
    within milliseconds under load, and its Running came after the history (once in 17 runs beside a CI run). Records
    fetched past the end (published meanwhile) are merged too. Every partition is resumed at the end."""
    ends = await consumer.end_offsets(list(parts))
    behind = {tp for tp in parts if await consumer.position(tp) < ends[tp]}
    queued: dict[TopicPartition, collections.deque[ConsumerRecord]] = {tp: collections.deque() for tp in parts}
    heads: list[tuple[tuple[int, datetime], int, TopicPartition]] = []  # (order_key, tie-break, partition) of each
    # queue's first
    order = itertools.count()
    loop = asyncio.get_running_loop()
    empty_since: dict[TopicPartition, float] = {}  # when a starved partition last had records or began to wait
    try:
        while behind or heads:
            starved = [tp for tp in behind if not queued[tp]]
            if starved:
                consumer.pause(*parts)
                consumer.resume(*starved)
                batches = await consumer.getmany(*starved, timeout_ms=poll_ms)
                for tp in starved:
                    records = batches.get(tp, [])
                    if records:
                        queued[tp].extend(records)
                        heapq.heappush(heads, (order_key(records[0]), next(order), tp))
                        empty_since.pop(tp, None)
                    if await consumer.position(tp) >= ends[tp]:
                        behind.discard(tp)
                    elif not records and loop.time() - empty_since.setdefault(tp, loop.time()) >= give_up_s:
                        behind.discard(tp)
                continue
            _, _, tp = heapq.heappop(heads)
            queue = queued[tp]
            record = queue.popleft()
            if queue:
                heapq.heappush(heads, (order_key(queue[0]), next(order), tp))
            yield record
    finally:
        consumer.resume(*parts)
