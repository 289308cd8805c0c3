"""Dead letters through `flows dlq` on the real stack: a message a real consumer could not process is
listed, shown with its reason, redriven once its cause is fixed (and then processed, once), and a
second redrive is refused; a discarded one cannot be redriven either."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, Field

from contracts.envelope import Envelope
from contracts.topics import Topic
from services.runtime import deadletters as dl
from services.runtime.broker import Incoming, consume, create_broker
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.outbox import OutboxRelay
from tests.kafka_topics import create_topics

pytestmark = pytest.mark.integration


class Filing(BaseModel):
    source_id: str
    pages: int = Field(ge=1)


async def _flows(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli.main", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, " ".join(out.decode().split())


async def processed_behind(producer: AIOKafkaProducer, topic: str, archive: set[str],
                           processed: list[tuple[str, Any]]) -> None:
    """A message "later" sent on the redriven message's partition (key "missing") and waited for until the consumer
    processed it: the consumer then ran through whatever came before it on that partition."""
    archive.add("later")
    await producer.send_and_wait(topic, b'{"source_id": "later", "pages": 1}', key=b"missing",
                                 headers=Envelope.new(topic, "/test").to_headers())
    async with asyncio.timeout(60):  # a hang guard
        while not any(source == "later" for source, _ in processed):
            await asyncio.sleep(0.1)


async def _letters(bootstrap: str, topic: str, count: int) -> list[dl.DeadLetter]:
    async with asyncio.timeout(30):
        while len(letters := await dl.list_letters(bootstrap, topic)) < count:
            await asyncio.sleep(0.3)
    return letters


async def test_a_poison_message_is_listed_shown_redriven_once_after_its_fix_and_processed(settings, fresh_db):
    topic = Topic(f"test.filing-{uuid.uuid4().hex[:8]}", Filing, "source_id", "probe", ("test",))
    archive: set[str] = set()  # the cause: the handler needs an archive entry that is missing
    processed: list[tuple[str, Incoming]] = []

    async def handler(payload: Filing, incoming: Incoming) -> None:
        if payload.source_id not in archive:
            raise RuntimeError(f"no archive entry for {payload.source_id}")
        processed.append((payload.source_id, incoming))

    archive.add("fine")
    broker = create_broker(settings, client_id="dlq-cli-test")
    consume(broker, topic, group_id=f"dlq-cli-{topic.name}", handler=handler, max_attempts=2, retry_delay=0.01)
    pool = await create_pool(fresh_db, min_size=1, max_size=4)
    relay = OutboxRelay(pool, settings.kafka_bootstrap, poll_interval=0.5)
    stop = asyncio.Event()
    relay_task = asyncio.create_task(relay.run(stop))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_")}
    env.update(DATABASE_URL=fresh_db, FLOWS_KAFKA_BOOTSTRAP=settings.kafka_bootstrap, FLOWS_OPERATOR="ops.verdi",
               COLUMNS="300")
    await create_topics(settings.kafka_bootstrap, topic.name, topic.dlq)
    await broker.start()
    await producer.start()
    try:
        poison = Envelope.new(topic.name, "/test")
        await producer.send_and_wait(topic.name, b'{"source_id": "missing", "pages": 3}', key=b"missing",
                                     headers=poison.to_headers())
        await producer.send_and_wait(topic.name, b'{"source_id": "fine", "pages": 1}', key=b"fine",
                                     headers=Envelope.new(topic.name, "/test").to_headers())
        await producer.send_and_wait(topic.name, b'{"source_id": "junk", "pages": 0}', key=b"junk",
                                     headers=Envelope.new(topic.name, "/test").to_headers())
        letters = await _letters(settings.kafka_bootstrap, topic.name, 2)
        by_key = {letter.key: letter for letter in letters}
        missing, junk = by_key["missing"], by_key["junk"]
        assert [source for source, _ in processed] == ["fine"]  # the poison did not block the partition

        code, listed = await _flows(env, "dlq", "list", topic.name)
        assert code == 0, listed
        assert missing.id in listed and junk.id in listed
        assert "processing failed 2 times: RuntimeError: no archive entry for missing" in listed
        assert listed.count("pending") == 2

        code, shown = await _flows(env, "dlq", "show", missing.id)
        assert code == 0, shown
        assert "reason: processing failed 2 times: RuntimeError: no archive entry for missing" in shown
        assert poison.id in shown and '"source_id": "missing"' in shown and "key missing" in shown
        # one partition: partition 0, said as such (it printed "unknown", 0 being false)
        assert f"from: {topic.name} partition 0 offset 0," in shown, shown

        archive.add("missing")  # the cause is fixed
        code, out = await _flows(env, "dlq", "redrive", missing.id)
        assert code == 0, out
        async with asyncio.timeout(20):
            while not any(source == "missing" for source, _ in processed):
                await asyncio.sleep(0.1)
        redriven = next(incoming for source, incoming in processed if source == "missing")
        assert redriven.key == "missing" and redriven.topic == topic.name
        assert redriven.message_id != poison.id  # a new ce id: the consumer's dedup does not swallow it

        code, again = await _flows(env, "dlq", "redrive", missing.id)
        assert code == 1, again
        assert f"dead letter {missing.id} was already redriven by ops.verdi" in again

        code, out = await _flows(env, "dlq", "discard", junk.id, "--reason", "test data, pages 0 is not a filing")
        assert code == 0, out
        code, refused = await _flows(env, "dlq", "redrive", "--topic", topic.name, "--all")
        assert code == 1 and f"no pending dead letter on {topic.dlq}" in refused, refused

        code, listed = await _flows(env, "dlq", "list", topic.name)
        assert "redriven by ops.verdi" in listed and "discarded by ops.verdi" in listed and "pending" not in listed

        await asyncio.sleep(2)  # nothing loops: the redriven message is processed once, nothing is dead-lettered again
        # ... and the consumer ran through those 2 s: a message sent after them, on the redriven one's partition, is
        # processed behind it (without it a starved loop made the window empty, and the check could not fail)
        await processed_behind(producer, topic.name, archive, processed)
        assert [source for source, _ in processed] == ["fine", "missing", "later"]
        assert len(await dl.list_letters(settings.kafka_bootstrap, topic.name)) == 2
        store = EventStore(pool, source="/test")
        decisions: dict[str, Any] = await dl.decisions(store)
        assert decisions[missing.id].data["new_id"] == redriven.message_id
        assert decisions[missing.id].actor == "ops.verdi" and decisions[junk.id].type == dl.DISCARDED
        assert await store.verify_all() == []
    finally:
        stop.set()
        await relay_task
        await producer.stop()
        await broker.stop()
        await pool.close()


async def test_a_dead_letter_id_that_does_not_exist_is_named_in_the_error(settings, fresh_db):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_")}
    env.update(DATABASE_URL=fresh_db, FLOWS_KAFKA_BOOTSTRAP=settings.kafka_bootstrap)
    code, out = await _flows(env, "dlq", "show", "flows.load-requested:0:1")
    assert code == 1 and "is not <topic>.dlq:<partition>:<offset>" in out, out
    code, out = await _flows(env, "dlq", "redrive", "nowhere.dlq:3:7")
    assert code == 1 and "no dead letter nowhere.dlq:3:7" in out, out
    # an empty partition of a DLQ that exists: it holds none (it said "offsets 0 to -1")
    empty = f"test.empty-{uuid.uuid4().hex[:8]}.dlq"
    await create_topics(settings.kafka_bootstrap, empty)
    code, out = await _flows(env, "dlq", "show", f"{empty}:0:5")
    assert code == 1 and f"no dead letter {empty}:0:5: {empty} partition 0 holds no dead letter" in out, out
