"""Every poison class of issue 10 against a consumer running in its own process on the real stack.

Each poison message is published as raw bytes with a plain aiokafka producer, then a valid message
on the SAME partition. For each: the dead letter holds the original key, headers and body bytes and
a bounded reason; the valid message is processed, the poison dead-lettered before it (the partition moves
on past the poison, in order); the service's log (its stderr, in a file) grows by under 1 MB. How fast is not
asserted (no timed tests): the waits only stop a hang. The figures of each class are printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from contracts.envelope import Envelope
from contracts.topics import DLQ_MAX_MESSAGE_BYTES, DLQ_REASON_MAX
from tests.isolation import logged_process, scratch_database
from tests.kafka_topics import records_now_on
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

PARTITION = 0
HANG_S = 120.0  # a wait gives up after this, naming what never happened; it is no speed target
LOG_GROWTH_MAX = 1_000_000


@dataclass
class Service:
    topic: str
    database_url: str
    processed: Path
    log: Path

    def seen(self) -> list[str]:
        return self.processed.read_text().splitlines() if self.processed.exists() else []


async def _create_topics(topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(topic, num_partitions=1, replication_factor=1),
            NewTopic(f"{topic}.dlq", num_partitions=1, replication_factor=1,
                     topic_configs={"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}),
        ])
    finally:
        await admin.close()


async def _wait_for(service: Service, source_id: str) -> None:
    """Until the service processed `source_id`; after HANG_S the test fails: the partition is blocked."""
    started = time.monotonic()
    while source_id not in service.seen():
        if time.monotonic() - started > HANG_S:
            raise AssertionError(f"{source_id} never processed (the partition is blocked); log tail:\n"
                                 f"{service.log.read_text()[-3000:]}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def service(stack, tmp_path_factory) -> AsyncIterator[Service]:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("poison")
    topic = f"test.poison-{uuid.uuid4().hex[:8]}"
    await _create_topics(topic)
    async with scratch_database("t_poison") as url:
        svc = Service(topic, url, folder / "processed.txt", folder / "service.log")
        async with logged_process(svc.log, "-m", "tests.integration.poison_consumer", topic, f"poison-{topic}", url,
                                  KAFKA, str(svc.processed), env={**os.environ}):
            await _publish(topic, b"warm-up", _body("warm-up"))
            await _wait_for(svc, "warm-up")  # the group is joined
            yield svc


def _body(source_id: str, words: Any = 3, **extra: Any) -> bytes:
    return json.dumps({"source_id": source_id, "words": words, **extra}).encode()


def _headers(topic: str, ce_type: str | None = None) -> list[tuple[str, bytes]]:
    return Envelope.new(ce_type or topic, "/test/poison").to_headers()


async def _publish(topic: str, key: bytes | None, value: bytes,
                   headers: list[tuple[str, bytes]] | None = None) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, max_request_size=DLQ_MAX_MESSAGE_BYTES)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, value, key=key, partition=PARTITION,
                                            headers=headers if headers is not None else _headers(topic))
        return int(sent.offset)
    finally:
        await producer.stop()


async def _dead_letter_now(topic: str, offset: int) -> Any:
    """The dead letter of the message at `offset`, among the records on the DLQ NOW (no waiting: the test reads
    it once the next message was processed, and the consumer dead-letters a poison before it moves on)."""
    found = [r for r in await records_now_on(KAFKA, f"{topic}.dlq")
             if dict(r.headers).get("dlq_original_offset") == str(offset).encode()]
    assert len(found) == 1, (f"the message at offset {offset} is dead-lettered {len(found)} times by the time the "
                             "next one was processed (skipped, or dead-lettered late or twice)")
    return found[0]


NESTED = b"[" * 200_000 + b"]" * 200_000
HUGE = "9" * 1_000_000

# class: (key, body, extra headers or None, ce_type or None, what the reason must say)
POISON: dict[str, tuple[bytes | None, bytes, list[tuple[str, bytes]] | None, str | None, str]] = {
    "key not UTF-8": (b"\xff\xfekey", _body("bad-key"), None, None, "key is not UTF-8"),
    "header not UTF-8": (b"k", _body("bad-header"), [("traceparent", b"\xc3\x28\xff")], None,
                         "header 'traceparent' is not UTF-8"),
    "deeply nested JSON": (b"k", NESTED, None, None, "nested too deeply"),
    "near 1 MiB value quoted by its rejection": (b"k", _body("big", HUGE), None, None, "words"),
    "source_id not a short string": (b"k", _body(["x" * 1000] * 500, 0), None, None, "source_id"),  # type: ignore[arg-type]
    "failing rejection hook": (b"k", _body("boom", 0, hook="explode"), None, None, "rejection hook failed"),
    "unknown ce_type": (b"k", _body("stranger"), None, "sources.no-such-event", "not a known event type"),
    "ce_type of another topic": (b"k", _body("misfiled"), None, "flows.load-checked",
                                 "an event type of another topic"),
    "body not JSON": (b"k", b"\x00\xff not json {", None, None, "not JSON"),
}


@pytest.mark.parametrize("kind", list(POISON))
async def test_a_poison_message_is_dead_lettered_with_its_bytes_and_the_next_one_processed(
        service: Service, kind: str) -> None:
    key, body, extra, ce_type, says = POISON[kind]
    headers = [*_headers(service.topic, ce_type), *(extra or [])]
    log_before = service.log.stat().st_size
    offset = await _publish(service.topic, key, body, headers)
    published = time.monotonic()
    following = f"after-{uuid.uuid4().hex[:6]}"
    await _publish(service.topic, b"k", _body(following))
    await _wait_for(service, following)  # the poison did not block its partition
    seconds = time.monotonic() - published  # from the poison's publication to the next one processed
    dead = await _dead_letter_now(service.topic, offset)  # and it was dead-lettered before the next one
    await asyncio.sleep(0.2)  # a line written just after the next message would still count
    growth = service.log.stat().st_size - log_before
    print(f"\npoison {kind!r}: next message processed after {seconds:.2f} s, log grew {growth} bytes")

    assert (dead.key, dead.value) == (key, body)  # the original bytes, untouched
    dlq = {name: value for name, value in dead.headers if name.startswith("dlq_")}
    assert [(n, v) for n, v in dead.headers if not n.startswith("dlq_")] == headers
    reason = dlq["dlq_reason"].decode()
    assert says in reason and len(reason) <= DLQ_REASON_MAX
    assert dlq["dlq_original_topic"].decode() == service.topic
    assert (dlq["dlq_original_partition"], dlq["dlq_attempts"]) == (str(PARTITION).encode(), b"0")
    assert dlq["dlq_consumer_group"].decode() == f"poison-{service.topic}" and dlq["dlq_failed_at"]
    assert growth < LOG_GROWTH_MAX
    assert service.seen().count(following) == 1


async def _rejections(service: Service) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(service.database_url)
    try:
        rows = await conn.fetch("SELECT data FROM events WHERE type = 'sources.record-rejected' ORDER BY position")
    finally:
        await conn.close()
    return [row["data"] if isinstance(row["data"], dict) else json.loads(row["data"]) for row in rows]


async def test_the_rejection_hook_recorded_the_rejected_records_without_their_values(service: Service) -> None:
    """Its own two rejected records (it used to read those of the parametrized test above, and failed alone)."""
    before = await _rejections(service)
    big = f"big-{uuid.uuid4().hex[:6]}"
    await _publish(service.topic, b"k", _body(big, HUGE))  # a near 1 MiB value
    await _publish(service.topic, b"k", _body(["x" * 1000] * 500, 0))  # type: ignore[arg-type]  # a source_id not a short string
    following = f"after-{uuid.uuid4().hex[:6]}"
    await _publish(service.topic, b"k", _body(following))
    await _wait_for(service, following)  # the hook ran for both before it
    datas = (await _rejections(service))[len(before):]
    assert len(datas) == 2, datas
    assert all(len(json.dumps(d)) < 5 * DLQ_REASON_MAX for d in datas)  # a 1 MB record: a bounded event
    assert datas[0]["source_id"] == big
    assert datas[1]["source_id"] is None and "source_id" in datas[1]["errors"][0]["reason"]


def _log_lines(service: Service, after: int) -> list[dict[str, Any]]:
    with service.log.open("rb") as f:
        f.seek(after)
        text = f.read().decode(errors="replace")
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # not a structlog line (e.g. a library's plain logging)
    return lines


async def test_consecutive_messages_one_rejected_log_with_their_own_ids_only(service: Service) -> None:
    """Issue 11 item 7: a valid message, a rejected one, a valid one: each line names its own message."""
    log_before = service.log.stat().st_size
    sent: list[tuple[str, str]] = []  # (key, ce_id) in order
    for n, body in enumerate([_body(f"ids-ok-{n}") if n != 1 else _body("ids-bad", 0) for n in range(3)]):
        key, headers = f"ids-{uuid.uuid4().hex[:8]}-{n}", _headers(service.topic)
        sent.append((key, dict(headers)["ce_id"].decode()))
        await _publish(service.topic, key.encode(), body, headers)
    await _wait_for(service, "ids-ok-2")
    await asyncio.sleep(0.3)  # the last message's lines are flushed
    lines = _log_lines(service, log_before)
    ids = dict(sent)
    ours = [line for line in lines if line.get("aggregate_id") in ids or line.get("event_id") in ids.values()]
    for line in ours:  # no line pairs one message's key with another's ce_id
        assert ids.get(str(line.get("aggregate_id"))) == line.get("event_id"), line
    rejected = [line for line in lines if line.get("event") == "message.rejected"]
    assert [(r["aggregate_id"], r["event_id"]) for r in rejected] == [sent[1]]
    processed = [(line["aggregate_id"], line["event_id"]) for line in lines if line.get("event") == "probe.processed"]
    assert processed == [sent[0], sent[2]]
    # the lines written between messages (the rejection hook's, the dead letter's) name the rejected one or none
    for line in lines:
        if line.get("event") not in ("probe.processed", "message.rejected") and line.get("event_id") is not None:
            assert line["event_id"] in ids.values(), line
