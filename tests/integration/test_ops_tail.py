"""`flows tail --from-beginning` / `--since` show what is already on the topics in time order across partitions,
then follow live (services.runtime.kafkaread.history).

getmany hands records over a fetch at a time, and a fetch carries at most 1 MB a partition: with a long history on
one topic, an instance's later event on a small topic came in the first batch and its earlier one in a later batch,
so `flows tail --instance N --from-beginning` printed Checked before Running (tests/e2e/test_ops_tools.py failed so
once in 30 runs beside a CI run). Here the long history is planted, so the old per-batch sort fails every time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from services.runtime import ops
from services.runtime.kafkaread import read_to_end
from tests.kafka_topics import create_topics

pytestmark = pytest.mark.integration

PADDING = 1_500  # records of 1 KB ahead of the early event: 1.5 MB, more than one fetch of a partition (1 MB)


async def _take(tail: AsyncIterator[ops.Seen], n: int) -> list[ops.Seen]:
    got: list[ops.Seen] = []
    async with asyncio.timeout(60):
        async for seen in tail:
            got.append(seen)
            if len(got) == n:
                break
    return got


async def test_a_long_history_on_one_topic_does_not_put_a_later_event_of_another_first(stack):
    bootstrap = stack.bootstrap_servers
    long_topic, short_topic = f"test.tail-long-{uuid.uuid4().hex[:8]}", f"test.tail-short-{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, long_topic, short_topic)
    base = int(datetime.now(UTC).timestamp() * 1000) - 60_000
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for i in range(PADDING):
            await producer.send(long_topic, b"p" * 1024, timestamp_ms=base + i)
        await producer.send_and_wait(long_topic, b"early", timestamp_ms=base + 10_000)
        await producer.send_and_wait(short_topic, b"late", timestamp_ms=base + 20_000)

        tail = ops.tail(bootstrap, [long_topic, short_topic], ops.TailFilter(), from_beginning=True)
        try:
            seen = await _take(tail, PADDING + 2)
            assert [s.body[:8] for s in seen[-2:]] == [b"early", b"late"]
            stamps = [s.timestamp for s in seen]
            assert stamps == sorted(stamps)
            assert [s.offset for s in seen if s.topic == long_topic] == list(range(PADDING + 1))
            # then live, every partition resumed (the merge paused those it was not fetching)
            await producer.send_and_wait(long_topic, b"live-long")
            await producer.send_and_wait(short_topic, b"live-short")
            live = await _take(tail, 2)
            assert sorted(s.body for s in live) == [b"live-long", b"live-short"]
        finally:
            await tail.aclose()

        # --since: the same merge from the records at or after a time
        since = datetime.fromtimestamp((base + PADDING - 10) / 1000, UTC) + timedelta(microseconds=500)  # its ms
        tail = ops.tail(bootstrap, [long_topic, short_topic], ops.TailFilter(), since=since)
        try:
            seen = await _take(tail, 14)
            assert [s.body[:8] for s in seen[-4:-2]] == [b"early", b"late"]
            assert sorted(s.body for s in seen[-2:]) == [b"live-long", b"live-short"]
            assert seen[0].offset == PADDING - 10 and seen[0].topic == long_topic
        finally:
            await tail.aclose()
    finally:
        await producer.stop()


async def test_the_operators_reads_skip_what_a_producer_aborted_as_the_services_do(stack):
    """A regional system publishing in Kafka transactions: what it aborted never happened. The services read committed
    records only (services.runtime.kafkarecords.ISOLATION_LEVEL); `flows tail`, `flows dlq` and the other operators'
    reads (services.runtime.kafkaread) showed the aborted record as if it had, with the committed one after it."""
    bootstrap = stack.bootstrap_servers
    topic = f"test.tail-tx-{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"test-tail-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        for body, commit in ((b"aborted", False), (b"committed", True)):
            await producer.begin_transaction()
            await producer.send_and_wait(topic, body)
            await (producer.commit_transaction() if commit else producer.abort_transaction())
    finally:
        await producer.stop()

    assert [r.value for r in await read_to_end(bootstrap, [topic])] == [b"committed"]
    tail = ops.tail(bootstrap, [topic], ops.TailFilter(), from_beginning=True)
    try:
        assert [s.body for s in await _take(tail, 1)] == [b"committed"]
    finally:
        await tail.aclose()
