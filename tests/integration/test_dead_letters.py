"""A poison message lands in `<topic>.dlq` with its reason, and the next message is processed."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import BaseModel, Field

from contracts.envelope import Envelope
from contracts.topics import Topic
from services.runtime import deadletters
from services.runtime.broker import Incoming, consume, create_broker
from services.runtime.ops import decode_headers
from tests.kafka_topics import create_topics, records_now_on
from tests.raw_records import publish_with_header_name
from tests.session_stack import damage_on_disk
from tests.stack_urls import free_port

pytestmark = pytest.mark.integration


class Greeting(BaseModel):
    source_id: str
    words: int = Field(ge=1)


async def _drain(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"probe-{uuid.uuid4().hex}")
    await consumer.start()
    got: list = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    got.extend(records)
    finally:
        await consumer.stop()
    return got


async def test_poison_message_is_dead_lettered_and_the_next_one_is_processed(settings):
    topic = Topic(f"test.greeting-{uuid.uuid4().hex[:8]}", Greeting, "source_id", "probe", ("test",))
    handled: list[tuple[str, Incoming]] = []
    attempts: dict[str, int] = {}

    async def handler(payload: Greeting, incoming: Incoming) -> None:
        attempts[payload.source_id] = attempts.get(payload.source_id, 0) + 1
        if payload.source_id == "always-fails":
            raise RuntimeError("the archive is on fire")
        handled.append((payload.source_id, incoming))

    await create_topics(settings.kafka_bootstrap, topic.name, topic.dlq)
    broker = create_broker(settings, client_id="dlq-test")
    consume(broker, topic, group_id="dlq-test", handler=handler, max_attempts=3, retry_delay=0.01)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        def envelope() -> list[tuple[str, bytes]]:
            return Envelope.new(topic.name, "/test").to_headers()

        await producer.send_and_wait(topic.name, b'{"source_id": "poison", "words": 0}', key=b"k",
                                     headers=envelope())
        await producer.send_and_wait(topic.name, b"not json at all", key=b"k", headers=envelope())
        await producer.send_and_wait(topic.name, b'{"source_id": "no-envelope", "words": 1}', key=b"k")
        await producer.send_and_wait(topic.name, b'{"source_id": "always-fails", "words": 2}', key=b"k",
                                     headers=envelope())
        await producer.send_and_wait(topic.name, b'{"source_id": "good", "words": 3}', key=b"k",
                                     headers=envelope())
        await broker.start()
        async with asyncio.timeout(30):
            while not handled:
                await asyncio.sleep(0.1)
        dead = await _drain(settings.kafka_bootstrap, topic.dlq, expected=4)
    finally:
        await producer.stop()
        await broker.stop()

    assert [h[0] for h in handled] == ["good"]
    reasons = [dict((k, v.decode()) for k, v in r.headers)["dlq_reason"] for r in dead]
    assert "source_id=poison" in reasons[0] and "words" in reasons[0]
    assert "is not JSON" in reasons[1]  # not any reason holding the word "not" (UTF-8, a type, a topic...)
    assert "ce_specversion" in reasons[2]
    assert "3 times" in reasons[3] and "the archive is on fire" in reasons[3]
    assert attempts["always-fails"] == 3
    # the original body and headers travel with the dead letter
    assert dead[0].value == b'{"source_id": "poison", "words": 0}'
    assert dict((k, v.decode()) for k, v in dead[0].headers)["ce_type"] == topic.name
    assert json.loads(dead[3].value)["source_id"] == "always-fails"


async def _through_the_guard(settings: Any, client: str, publish: Callable[[AIOKafkaProducer, Topic], Awaitable[None]],
                            *, handled: int, dead: int) -> tuple[Topic, list[str], list[Any]]:
    """A fresh greeting topic, `publish(producer, topic)` on it, then a consumer with the services' guard (`consume`)
    until it handled `handled` messages; the source_ids it handled and the topic's `dead` dead letters."""
    topic = Topic(f"test.greeting-{uuid.uuid4().hex[:8]}", Greeting, "source_id", "probe", ("test",))
    seen: list[str] = []

    async def handler(payload: Greeting, incoming: Incoming) -> None:
        seen.append(payload.source_id)

    await create_topics(settings.kafka_bootstrap, topic.name, topic.dlq)
    broker = create_broker(settings, client_id=client)
    consume(broker, topic, group_id=f"{client}-{uuid.uuid4().hex[:8]}", handler=handler, max_attempts=3,
            retry_delay=0.01)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        await publish(producer, topic)
        await broker.start()
        async with asyncio.timeout(30):
            while len(seen) < handled:
                await asyncio.sleep(0.1)
        letters = await _drain(settings.kafka_bootstrap, topic.dlq, expected=dead)
    finally:
        await producer.stop()
        await broker.stop()
    return topic, seen, letters


async def test_a_header_without_a_value_neither_skips_nor_blocks_the_message(settings):
    """Kafka lets a header have no value at all (null, not empty), and FastStream's parser calls `.decode()` on every
    header value before any handler runs: such a message was skipped without a trace, and the next message's commit
    passed over it. Now it reaches the guard like any other: an extra header without a value is harmless (handled),
    a CloudEvents header without one is a missing attribute (dead-lettered with the reason), and the next message is
    handled."""
    async def publish(producer: AIOKafkaProducer, topic: Topic) -> None:
        envelope = Envelope.new(topic.name, "/test").to_headers
        await producer.send_and_wait(topic.name, b'{"source_id": "traced", "words": 1}', key=b"k",
                                     headers=[*envelope(), ("x-trace", None)])  # type: ignore[list-item]
        await producer.send_and_wait(topic.name, b'{"source_id": "sourceless", "words": 2}', key=b"k",
                                     headers=[(k, None if k == "ce_source" else v)  # type: ignore[misc]
                                              for k, v in envelope()])
        await producer.send_and_wait(topic.name, b'{"source_id": "good", "words": 3}', key=b"k", headers=envelope())

    _, handled, dead = await _through_the_guard(settings, "null-header", publish, handled=2, dead=1)
    assert handled == ["traced", "good"]
    assert [json.loads(r.value)["source_id"] for r in dead] == ["sourceless"]
    reason = dict((k, (v or b"").decode()) for k, v in dead[0].headers)["dlq_reason"]
    assert "missing CloudEvents header(s): ce_source" in reason, reason


async def test_a_header_name_that_is_not_utf8_neither_blocks_nor_loses_the_partition(settings):
    """aiokafka's reader raises UnicodeDecodeError on a header name that is not UTF-8, out of the poll, before any
    record of the fetch reaches FastStream, and again at every poll: the partition was blocked, and the message
    after it never handled. Now the message reaches the guard (services.runtime.kafkarecords), goes to the DLQ with
    the reason, and the next message is handled."""
    async def publish(producer: AIOKafkaProducer, topic: Topic) -> None:
        envelope = Envelope.new(topic.name, "/test").to_headers
        await producer.send_and_wait(topic.name, b'{"source_id": "before", "words": 1}', key=b"k", headers=envelope())
        await publish_with_header_name(settings.kafka_bootstrap, topic.name, b'{"source_id": "odd", "words": 2}',
                                       key=b"k", headers=envelope(), name=b"x-\xe8")
        await producer.send_and_wait(topic.name, b'{"source_id": "after", "words": 3}', key=b"k", headers=envelope())

    topic, handled, dead = await _through_the_guard(settings, "header-name", publish, handled=2, dead=1)
    assert handled == ["before", "after"]
    assert [r.value for r in dead] == [b'{"source_id": "odd", "words": 2}']
    headers = dict(dead[0].headers)
    assert headers["dlq_reason"] == b"a header name is not UTF-8 (b'x-\\xe8')", headers
    assert headers["x-\\xe8"] == b"x" and headers["ce_type"] == topic.name.encode()
    # the operators' tools (services.runtime.kafkaread) read the topic through it too, the name shown escaped
    on_topic = await records_now_on(settings.kafka_bootstrap, topic.name)
    assert [decode_headers(r.headers).get("x-\\xe8") for r in on_topic] == [None, "x", None]


async def test_a_batch_damaged_on_the_brokers_disk_neither_blocks_nor_loses_the_partition(settings):
    """A byte of a stored message changed on the broker's disk after the broker took it: aiokafka's fetcher raised
    CorruptRecordException (its CRC) out of the poll, before FastStream saw any record of the fetch, and again at
    every poll: the partition was blocked. Now the damaged batch reaches the guard as one message
    (services.runtime.kafkarecords), goes to the DLQ with its bytes and the reason, and the next message is
    handled."""
    marker = f"damaged-{uuid.uuid4().hex}"

    async def publish(producer: AIOKafkaProducer, topic: Topic) -> None:
        envelope = Envelope.new(topic.name, "/test").to_headers
        for source_id in ("before", marker, "after"):  # one batch each
            await producer.send_and_wait(topic.name, json.dumps({"source_id": source_id, "words": 1}).encode(),
                                         key=b"k", headers=envelope())
        assert damage_on_disk(topic.name, 0, marker.encode()) >= 1

    _, handled, dead = await _through_the_guard(settings, "damaged", publish, handled=2, dead=1)
    assert handled == ["before", "after"]
    assert dead[0].key is None and marker[1:].encode() in dead[0].value
    headers = dict(dead[0].headers)
    assert headers["dlq_reason"].decode().startswith("record batch at offset 1 is corrupt: its CRC-32C is "), headers
    assert headers["dlq_original_offset"] == b"1" and headers["dlq_record_batch"] == b"corrupt"
    # not a message: it is discarded, never redriven (its bytes would only come back as a message without headers)
    letter = deadletters._from_record(dead[0])
    assert letter.original_headers() == {} and letter.original_offset == 1
    with pytest.raises(deadletters.NotRedrivable) as refused:
        await deadletters.redrive(None, None, letter, "ops.verdi")  # type: ignore[arg-type]
    assert refused.value.cause == "corrupt-batch"
    assert "is a record batch damaged on a broker, not a message" in str(refused.value)


async def test_messages_of_an_aborted_kafka_transaction_are_never_handled(settings):
    """An outside producer's aborted transaction never happened: the services' consumers read committed messages
    only (Kafka's default, read_uncommitted, handed the aborted one to the handler)."""
    async def publish(producer: AIOKafkaProducer, topic: Topic) -> None:
        envelope = Envelope.new(topic.name, "/test").to_headers
        transactional = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                                         transactional_id=f"portal-{uuid.uuid4().hex[:8]}")
        await transactional.start()
        try:
            for source_id, commit in (("aborted", False), ("committed", True)):
                await transactional.begin_transaction()
                await transactional.send_and_wait(topic.name, json.dumps({"source_id": source_id, "words": 1}).encode(),
                                                  key=b"k", headers=envelope())
                await (transactional.commit_transaction() if commit else transactional.abort_transaction())
        finally:
            await transactional.stop()
        await producer.send_and_wait(topic.name, b'{"source_id": "plain", "words": 2}', key=b"k", headers=envelope())

    # one partition, in order: an aborted message read would be the first handled
    _, handled, dead = await _through_the_guard(settings, "transactions", publish, handled=2, dead=0)
    assert handled == ["committed", "plain"] and dead == []


async def test_a_message_reaches_its_handler_without_a_worker_thread(settings, monkeypatch):
    """The consumer hands each message to its handler on the event loop, with nothing between them run on a
    worker thread: FastDepends used to resolve the subscriber's `message` Context through a sync function on
    anyio's thread pool for every message (two thread switches and a loop wake-up per message)."""
    import anyio.to_thread

    thread_calls: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counted_run_sync(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        thread_calls.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted_run_sync)
    topic = Topic(f"test.thread-{uuid.uuid4().hex[:8]}", Greeting, "source_id", "probe", ("test",))
    handled: list[tuple[str, Incoming]] = []

    async def handler(payload: Greeting, incoming: Incoming) -> None:
        handled.append((payload.source_id, incoming))

    await create_topics(settings.kafka_bootstrap, topic.name, topic.dlq)
    broker = create_broker(settings, client_id="thread-test")
    consume(broker, topic, group_id="thread-test", handler=handler)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        sent = [Envelope.new(topic.name, "/test") for _ in range(3)]
        for number, envelope in enumerate(sent):
            await producer.send_and_wait(topic.name, json.dumps({"source_id": f"s{number}", "words": 1}).encode(),
                                         key=b"k", headers=envelope.to_headers())
        await broker.start()
        async with asyncio.timeout(30):
            while len(handled) < 3:
                await asyncio.sleep(0.05)
    finally:
        await producer.stop()
        await broker.stop()

    assert [h[0] for h in handled] == ["s0", "s1", "s2"]
    assert [h[1].message_id for h in handled] == [e.id for e in sent]
    assert [(h[1].key, h[1].topic, h[1].offset) for h in handled] == [("k", topic.name, n) for n in range(3)]
    assert thread_calls == []


async def test_a_long_outage_seeks_back_to_the_poll_loop_and_nothing_is_dead_lettered(settings, monkeypatch):
    """The handler's database is unreachable (a real refused connection) for longer than one delivery
    may wait: the consumer seeks back and polls again (keeping its group), then processes the message
    once the database answers; nothing goes to the DLQ."""
    from services.runtime import broker as runtime_broker

    monkeypatch.setattr(runtime_broker, "OUTAGE_WAIT_PER_DELIVERY_S", 2.0)
    topic = Topic(f"test.outage-{uuid.uuid4().hex[:8]}", Greeting, "source_id", "probe", ("test",))
    closed_port = free_port(880, 900)  # nothing listens there; in this session's own range, not PG port + 567
    target = {"url": settings.database_url.replace(f":{urlsplit(settings.database_url).port}/",
                                                   f":{closed_port}/")}
    calls: list[float] = []
    handled: list[str] = []

    async def reach_database() -> None:
        conn = await asyncpg.connect(target["url"], timeout=2)
        await conn.close()

    async def handler(payload: Greeting, incoming: Incoming) -> None:
        calls.append(asyncio.get_running_loop().time())
        await reach_database()
        handled.append(payload.source_id)

    broker = create_broker(settings, client_id="outage-test")
    consume(broker, topic, group_id="outage-test", handler=handler, probe=reach_database)
    await create_topics(settings.kafka_bootstrap, topic.name, topic.dlq)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic.name, b'{"source_id": "patient", "words": 1}', key=b"k",
                                     headers=Envelope.new(topic.name, "/test").to_headers())
        await broker.start()
        # The outage lasts three times what one delivery may wait AND until the handler was retried through it
        # (three calls): how many calls fit in 6 s is the machine's speed, not the consumer's (a loaded machine
        # stretches each backoff step). A consumer that gave up makes no more calls: the deadline names it.
        try:
            async with asyncio.timeout(60):
                while not calls or asyncio.get_running_loop().time() - calls[0] < 6 or len(calls) < 3:
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"the handler was called {len(calls)} times in 60 s of outage: given up") from None
        target["url"] = settings.database_url  # the database is back
        async with asyncio.timeout(30):
            while not handled:
                await asyncio.sleep(0.1)
        await asyncio.sleep(2)  # a duplicate delivery would show now
        # ... and the consumer ran through those 2 s: a message sent after them is handled, behind the first on the
        # partition (a duplicate of the first would come before it). Without it a starved loop made the window empty
        await producer.send_and_wait(topic.name, b'{"source_id": "after", "words": 1}', key=b"k",
                                     headers=Envelope.new(topic.name, "/test").to_headers())
        async with asyncio.timeout(60):  # a hang guard
            while "after" not in handled:
                await asyncio.sleep(0.1)
    finally:
        await producer.stop()
        await broker.stop()
    assert handled == ["patient", "after"]
    assert len(calls) >= 3  # retried through the outage, not given up
    # Up to the DLQ's end offsets, not one 2 s poll of a fresh group (empty whenever the join took longer).
    assert await records_now_on(settings.kafka_bootstrap, topic.dlq) == []
