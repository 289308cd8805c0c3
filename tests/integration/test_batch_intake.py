"""Batched source intake on the real stack (issue 14): one batch holding a valid record, an invalid one,
a duplicate and corrections; and a loader killed with SIGKILL between the batch's transaction and its
offset commit, whose redelivered batch changes nothing.

Each test has a topic of its own carrying delivered services (with its `.dlq` twin) and a fresh database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.producer.producer import AIOKafkaProducer as _Producer

from contracts.envelope import Envelope
from contracts.sources import DeliveredService
from contracts.topics import DLQ_MAX_MESSAGE_BYTES, Topic
from services.loader.batch_intake import BatchIntake, sequence_sql, store_sequence
from services.loader.intake import row_maker, stage, store_services
from services.runtime.batch import PAUSE_ENV, BatchConsumer
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.settings import bootstrap_list
from tests.integration.batch_intake_process import SESSION_ENV
from tests.isolation import logged_process, scratch_database
from tests.kafka_groups import members_of, wait_until_joined
from tests.kafka_topics import records_now_on
from tests.log_capture import json_lines
from tests.raw_records import publish_with_header_name
from tests.session_stack import damage_on_disk
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration


def service(source_id: str, **changes: Any) -> dict[str, Any]:
    """A delivered service as the CUP publishes it (JSON)."""
    values: dict[str, Any] = dict(
        source_id=source_id, ente="204", structure_sts11="004101", patient_cf="RSSMRA80A01F839W",
        patient_surname="ROSSI", patient_name="MARIO", patient_sex="M", patient_birth_date=date(1980, 1, 1),
        patient_residence_istat="063049", prescription_id=f"RX-{source_id}", prescription_number="150A000000000001",
        prescription_date=date(2020, 8, 1), priority="D", catalogue_code="89.52", quantity=1,
        delivery_date=date(2020, 8, 10), booking_date=date(2020, 8, 2), tariff=Decimal("11.62"),
        ticket=Decimal("11.62"))
    values.update(changes)
    return json.loads(DeliveredService(**values).model_dump_json())


async def _create_topic(name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(name, num_partitions=1, replication_factor=1),
            NewTopic(f"{name}.dlq", num_partitions=1, replication_factor=1,
                     topic_configs={"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)})])
        for _ in range(100):
            described = await admin.describe_topics([name, f"{name}.dlq"])
            if all(not t["error_code"] and t["partitions"] for t in described):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"topic {name} not in the metadata after 10 s")
    finally:
        await admin.close()


async def _publish(topic: str, bodies: list[dict[str, Any]]) -> int:
    """Publishes the bodies in this order (each with a new ce_id); the offset of the last."""
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        last = -1
        for body in bodies:
            sent = await producer.send_and_wait(topic, json.dumps(body).encode(), key=body["source_id"].encode(),
                                                headers=Envelope.new(topic, "/cup/test").to_headers())
            last = int(sent.offset)
        return last
    finally:
        await producer.stop()


async def _dead_letters(topic: str) -> list[Any]:
    """Every dead letter of `topic` up to the DLQ's end offsets (no group: a quiet poll of a fresh group reads
    nothing while it joins; called after the batch's commit, which follows its dead letters)."""
    return await records_now_on(KAFKA, f"{topic}.dlq")


async def _committed(group: str, topic: str) -> int | None:
    """The group's committed offset of the topic's partition (None: nothing committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        for _ in range(50):  # the coordinator of a new group can take a moment to be known
            try:
                offsets = await admin.list_consumer_group_offsets(group)
                break
            except GroupCoordinatorNotAvailableError:
                await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"no coordinator for the group {group} after 10 s")
        meta = offsets.get(TopicPartition(topic, 0))
        return None if meta is None or meta.offset < 0 else int(meta.offset)
    finally:
        await admin.close()


def _batch() -> list[dict[str, Any]]:
    """Valid S1, S2; S3 invalid (patient_sex); S1 again (a duplicate); S2 corrected; S0 corrected
    (stored before the batch); S4 twice corrected inside the batch (A, A', A: revision 3)."""
    return [service("S1"), service("S2"), service("S3", patient_sex="M") | {"patient_sex": "X"},
            service("S1"), service("S2", quantity=2), service("S0", quantity=5),
            service("S4"), service("S4", quantity=3), service("S4")]


async def _state(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT source_id, quantity, revision, content_hash FROM source_service "
                                "ORDER BY source_id")
        events = await conn.fetch("SELECT stream_id, type, data FROM events ORDER BY position")
        outbox = int(await conn.fetchval("SELECT count(*) FROM outbox"))
        processed = int(await conn.fetchval("SELECT count(*) FROM processed_message"))
        def data(value: Any) -> str:  # jsonb comes as text on a plain connection
            return json.dumps(json.loads(value) if isinstance(value, str) else value, sort_keys=True)
        return {"rows": [tuple(r) for r in rows],
                "events": [(e["stream_id"], e["type"], data(e["data"])) for e in events],
                "outbox": outbox, "processed": processed}
    finally:
        await conn.close()


async def _expect_batch_applied(url: str, topic: str, last_offset: int) -> None:
    state = await _state(url)
    rows = {r[0]: r for r in state["rows"]}
    assert set(rows) == {"S0", "S1", "S2", "S4"}, "the valid records are stored, the invalid one is not"
    assert (rows["S0"][1], rows["S0"][2]) == (5, 2), "S0 corrected: its new quantity, revision 2"
    assert (rows["S1"][1], rows["S1"][2]) == (1, 1), "S1 and its duplicate: stored once, revision 1"
    assert (rows["S2"][1], rows["S2"][2]) == (2, 2), "S2 then its correction: the later wins, revision 2"
    assert (rows["S4"][1], rows["S4"][2]) == (1, 3), "S4, S4', S4: the later wins, each change a revision"
    rejected = [json.loads(e[2]) for e in state["events"] if e[1] == "sources.record-rejected"]
    assert len(rejected) == 1 and rejected[0]["source_id"] == "S3"
    assert "patient_sex" in rejected[0]["errors"][0]["reason"], rejected
    watermarks = [json.loads(e[2]) for e in state["events"] if e[1] == "sources.stored"]
    assert watermarks and watermarks[-1]["offset"] == last_offset and watermarks[-1]["topic"] == topic
    dead = await _dead_letters(topic)
    assert len(dead) == 1, f"the invalid record dead-lettered once, found {len(dead)}"
    assert json.loads(dead[0].value)["source_id"] == "S3"
    assert "patient_sex" in dict(dead[0].headers)["dlq_reason"].decode()


async def _intake_until_committed(url: str, name: str, last: int, **options: Any) -> BatchIntake:
    """The loader's batched intake (a BatchConsumer in a group of its own, `options` its settings) on topic `name`
    until the group's committed offset is past `last`; its sink, whose totals count what it did."""
    topic = Topic(name, DeliveredService, "source_id", "batch intake test", ("test",))
    pool = await create_pool(url, min_size=1, max_size=4)
    stop = asyncio.Event()
    sink = BatchIntake(EventStore(pool, source="/flows/loader"), pool)
    group = f"batch-{uuid.uuid4().hex[:8]}"
    consumer = BatchConsumer(bootstrap_list(KAFKA), [topic], group, sink, pool, **options)
    task = asyncio.create_task(consumer.run(stop))
    try:
        async with asyncio.timeout(60):
            while await _committed(group, name) != last + 1:
                assert not task.done(), task
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await pool.close()
    return sink


@pytest.fixture
async def intake_db(stack) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    async with scratch_database("t_batch") as url:
        conn = await asyncpg.connect(url)
        try:
            await store_services(conn, [DeliveredService(**service("S0"))])  # S0 before the batch
        finally:
            await conn.close()
        yield url


async def test_a_batch_with_an_invalid_record_a_duplicate_and_corrections(intake_db: str) -> None:
    name = f"t-batch-{uuid.uuid4().hex[:8]}"
    await _create_topic(name)
    last = await _publish(name, _batch())  # all before the consumer starts: one poll, one batch
    sink = await _intake_until_committed(intake_db, name, last)
    # 9 messages: S1, S2, S4 new; S0, S2 and S4 twice corrected; S1 again a duplicate; S3 rejected
    assert (sink.totals.stored, sink.totals.corrected, sink.totals.duplicates, sink.rejected) == (3, 4, 1, 1)
    await _expect_batch_applied(intake_db, name, last)
    state = await _state(intake_db)
    watermarks = [json.loads(e[2]) for e in state["events"] if e[1] == "sources.stored"]
    assert len(watermarks) == 1, "one batch, one watermark"
    assert (watermarks[0]["offset"], watermarks[0]["messages"]) == (last, 9), "the partition's 9 messages, counted"


_REFUSE_POISON = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.source_id = 'POISON' THEN
        RAISE EXCEPTION 'source record % refused by this database', NEW.source_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON source_service FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


async def test_a_batch_the_database_refuses_is_stored_message_by_message_with_a_watermark_for_each(
        intake_db: str) -> None:
    """A valid record the database refuses (here a trigger: a constraint the contract does not know) fails its
    whole batch, which is then stored message by message: the others are stored, the refused one goes to the DLQ
    with the reason, and each stored message appends its partition's `sources.stored`, in offset order and never
    at the refused one's offset. Before, the messages stored one by one appended no watermark at all: an external
    system waiting for its offset never learnt that its records were stored."""
    conn = await asyncpg.connect(intake_db)
    try:
        await conn.execute(_REFUSE_POISON)
    finally:
        await conn.close()
    name = f"t-batch-split-{uuid.uuid4().hex[:8]}"
    await _create_topic(name)
    last = await _publish(name, [service("S1"), service("POISON"), service("S2"), service("S7")])
    await _intake_until_committed(intake_db, name, last, max_attempts=2, retry_delay=0.05)
    state = await _state(intake_db)
    assert [r[0] for r in state["rows"]] == ["S0", "S1", "S2", "S7"], "the others are stored, POISON is not"
    watermarks = [json.loads(e[2]) for e in state["events"] if e[1] == "sources.stored"]
    assert [(w["topic"], w["partition"], w["offset"], w["messages"]) for w in watermarks] == \
        [(name, 0, 0, 1), (name, 0, 2, 1), (name, 0, 3, 1)], "one watermark per stored message, in offset order"
    dead = await _dead_letters(name)
    assert [json.loads(d.value)["source_id"] for d in dead] == ["POISON"]
    reason = dict(dead[0].headers)["dlq_reason"].decode()
    assert "processing failed 2 times" in reason and "refused by this database" in reason, reason


async def test_a_record_with_a_header_name_that_is_not_utf8_is_dead_lettered_and_the_partition_moves_on(
        intake_db: str) -> None:
    """A header name is UTF-8 by the protocol, and aiokafka's reader raises UnicodeDecodeError out of `getmany` on one
    that is not, before returning any record of the fetch, every time: the intake loop died and its partition was
    blocked for good. Now the record reaches the intake (services.runtime.kafkarecords), which dead-letters it with
    the reason (its body and key as they were, the name's bytes escaped) and records its rejection; the records
    before and after it are stored, and the watermark reaches the last offset."""
    name = f"t-batch-header-{uuid.uuid4().hex[:8]}"
    await _create_topic(name)
    await _publish(name, [service("S1")])
    body = json.dumps(service("S8")).encode()
    odd = await publish_with_header_name(KAFKA, name, body, key=b"S8", name=b"\xff\xfeorigine",
                                         headers=Envelope.new(name, "/cup/test").to_headers())
    last = await _publish(name, [service("S2")])
    assert (odd, last) == (1, 2)
    sink = await _intake_until_committed(intake_db, name, last)
    assert (sink.totals.stored, sink.rejected) == (2, 1)
    state = await _state(intake_db)
    assert [r[0] for r in state["rows"]] == ["S0", "S1", "S2"], "S8 is not stored, the records around it are"
    dead = await _dead_letters(name)
    assert [(d.key, d.value) for d in dead] == [(b"S8", body)]
    headers = dict(dead[0].headers)
    assert headers["dlq_reason"].decode() == "a header name is not UTF-8 (b'\\xff\\xfeorigine')", headers
    assert headers["\\xff\\xfeorigine"] == b"x", "the name's bytes escaped, its value kept"
    assert headers["dlq_original_offset"] == b"1"
    rejected = [json.loads(e[2]) for e in state["events"] if e[1] == "sources.record-rejected"]
    assert [r["errors"][0]["reason"] for r in rejected] == ["a header name is not UTF-8 (b'\\xff\\xfeorigine')"]
    watermarks = [json.loads(e[2]) for e in state["events"] if e[1] == "sources.stored"]
    assert watermarks[-1]["offset"] == last


async def test_a_batch_damaged_on_the_brokers_disk_is_dead_lettered_and_the_partition_moves_on(
        intake_db: str) -> None:
    """A byte of a stored record changed on the broker's disk (the broker checks a batch's CRC when it is produced,
    not when it serves it): aiokafka's fetcher raised CorruptRecordException out of `getmany` at every poll, so the
    intake loop died and the partition was blocked for good. Now the batch reaches the intake as one record
    (services.runtime.kafkarecords), dead-lettered with its bytes and the reason, and rejected; the records before
    and after it are stored, and the watermark and the committed offset reach the last one."""
    name = f"t-batch-damaged-{uuid.uuid4().hex[:8]}"
    await _create_topic(name)
    marker = f"damaged-{uuid.uuid4().hex[:6]}"  # a source_id (the prescription's ID holds it too: 20 at most)
    first = await _publish(name, [service("S1")])
    damaged = await _publish(name, [service(marker)])
    last = await _publish(name, [service("S2")])
    assert (first, damaged, last) == (0, 1, 2), "each record its own batch"
    assert damage_on_disk(name, 0, marker.encode()) >= 1
    sink = await _intake_until_committed(intake_db, name, last)
    assert (sink.totals.stored, sink.rejected) == (2, 1)
    state = await _state(intake_db)
    assert [r[0] for r in state["rows"]] == ["S0", "S1", "S2"], "the damaged record is not stored, the others are"
    dead = await _dead_letters(name)
    assert len(dead) == 1 and dead[0].key is None
    value = dead[0].value
    assert value[:8] == (1).to_bytes(8, "big") and marker[1:].encode() in value, "the batch's bytes as fetched"
    headers = dict(dead[0].headers)
    reason = headers["dlq_reason"].decode()
    assert reason.startswith("record batch at offset 1 is corrupt: its CRC-32C is "), reason
    assert headers["dlq_original_offset"] == b"1"
    rejected = [json.loads(e[2]) for e in state["events"] if e[1] == "sources.record-rejected"]
    assert [r["errors"][0]["reason"] for r in rejected] == [reason]
    watermarks = [json.loads(e[2]) for e in state["events"] if e[1] == "sources.stored"]
    assert watermarks[-1]["offset"] == last


async def test_records_compressed_with_each_codec_kafka_has_are_stored(intake_db: str) -> None:
    """An outside producer chooses its compression (Java clients often lz4, snappy or zstd), and the broker keeps it
    (compression.type=producer). aiokafka reads snappy, lz4 and zstd only with cramjam installed (its extras): without
    it the batch raised UnsupportedCodecError out of the poll, at every poll, and the partition was blocked."""
    name = f"t-batch-codecs-{uuid.uuid4().hex[:8]}"
    await _create_topic(name)
    last = -1
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, compression_type=codec)
        await producer.start()
        try:
            sends = [await producer.send(name, json.dumps(service(f"{codec}-{i}")).encode(),
                                         key=f"{codec}-{i}".encode(),
                                         headers=Envelope.new(name, "/cup/test").to_headers()) for i in range(20)]
            last = max(int(sent.offset) for sent in await asyncio.gather(*sends))
        finally:
            await producer.stop()
    sink = await _intake_until_committed(intake_db, name, last)
    assert (sink.totals.stored, sink.rejected) == (80, 0)
    state = await _state(intake_db)
    assert {r[0].split("-")[0] for r in state["rows"] if r[0] != "S0"} == {"gzip", "snappy", "lz4", "zstd"}
    assert len(state["rows"]) == 81


async def test_records_of_an_aborted_kafka_transaction_are_never_stored(intake_db: str) -> None:
    """A regional system may publish in Kafka transactions; what it aborted never happened. Kafka's default isolation
    (read_uncommitted) hands aborted records to the consumer like any other: the intake stored them. It reads
    committed records only: the aborted S11 is not stored, S12 committed after it is."""
    name = f"t-batch-tx-{uuid.uuid4().hex[:8]}"
    await _create_topic(name)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, transactional_id=f"cup-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        for source_id, commit in (("S11", False), ("S12", True)):
            await producer.begin_transaction()
            sent = await producer.send_and_wait(name, json.dumps(service(source_id)).encode(),
                                                key=source_id.encode(),
                                                headers=Envelope.new(name, "/cup/test").to_headers())
            await (producer.commit_transaction() if commit else producer.abort_transaction())
        last = int(sent.offset)
    finally:
        await producer.stop()
    sink = await _intake_until_committed(intake_db, name, last)
    assert (sink.totals.stored, sink.rejected) == (1, 0)
    assert [r[0] for r in (await _state(intake_db))["rows"]] == ["S0", "S12"]


async def test_a_batch_naming_each_record_once_takes_the_plain_upsert_with_the_same_verdicts(intake_db: str) -> None:
    """The common batch names each source_id once: it skips the window over the sequence. Its verdicts, rows,
    revisions and content hashes are those the sequence statement gives for the same batch (run first and
    rolled back), and S0, stored before by the bulk path, is recognised as a duplicate (the same hash)."""
    conn = await asyncpg.connect(intake_db)
    try:
        await store_services(conn, [DeliveredService(**service("S5"))])
        once = [DeliveredService(**service(sid, **changes))
                for sid, changes in (("S0", {}), ("S5", {"quantity": 2}), ("S6", {}))]
        outcomes = []
        for statement in (sequence_sql("delivered-service"), None):
            tx = conn.transaction()
            await tx.start()
            if statement is None:
                staged = list(map(row_maker("delivered-service"), once))
                result = await store_sequence(conn, "delivered-service", staged)
                counts = (result.stored, result.corrected, result.duplicates)
            else:
                await stage(conn, "delivered-service", once)
                row = await conn.fetchrow(statement)
                counts = (row["stored"], row["corrected"], len(once) - row["stored"] - row["corrected"])
            rows = [tuple(r) for r in await conn.fetch(
                "SELECT source_id, quantity, revision, content_hash FROM source_service ORDER BY source_id")]
            outcomes.append((counts, rows))
            await (tx.rollback() if statement is not None else tx.commit())
    finally:
        await conn.close()
    assert outcomes[0] == outcomes[1], "the plain upsert and the sequence statement agree"
    counts, rows = outcomes[1]
    assert counts == (1, 1, 1), "S6 stored, S5 corrected, S0 a duplicate"
    assert [(r[0], r[1], r[2]) for r in rows] == [("S0", 1, 1), ("S5", 2, 2), ("S6", 1, 1)]


def _closing_its_producer(task: asyncio.Task[None]) -> bool:
    """Whether the task waits inside AIOKafkaProducer.stop: the coroutines it awaits, followed down from its own."""
    awaited: Any = task.get_coro()
    while awaited is not None and hasattr(awaited, "cr_frame"):
        if awaited.cr_frame is not None and awaited.cr_frame.f_code is _Producer.stop.__code__:
            return True
        awaited = awaited.cr_await
    return False


async def test_a_consumer_cancelled_while_it_closes_on_stop_still_leaves_its_group(intake_db: str) -> None:
    """The service host (services.runtime.host.serve) sets `stop` and cancels its loops at once: a batch consumer
    that saw `stop` first is already closing when the cancellation comes, in its dead-letter producer's stop. Its
    consumer is closed all the same and leaves the group at once. Before, the cancellation skipped the consumer's
    stop: it stayed a member until its 30 s session ran out, holding its partitions from the other replicas, and
    aiokafka warned 'Unclosed AIOKafkaConsumer' (the e2e platform's teardown, after a test blocked the loop)."""
    name = f"t-batch-{uuid.uuid4().hex[:8]}"
    await _create_topic(name)
    topic = Topic(name, DeliveredService, "source_id", "batch intake test", ("test",))
    pool = await create_pool(intake_db, min_size=1, max_size=4)
    group = f"batch-{uuid.uuid4().hex[:8]}"
    before = await members_of(KAFKA, [group])
    stop = asyncio.Event()
    sink = BatchIntake(EventStore(pool, source="/flows/loader"), pool)
    consumer = BatchConsumer(bootstrap_list(KAFKA), [topic], group, sink, pool)
    task = asyncio.create_task(consumer.run(stop))

    def running() -> None:
        assert not task.done(), task

    try:
        await wait_until_joined(KAFKA, before, deadline_s=120, alive=running)
        stop.set()  # the loop sees it at its next poll (500 ms at most) and closes
        async with asyncio.timeout(60):
            while not _closing_its_producer(task):
                assert not task.done(), "the consumer closed before it was seen in its producer's stop"
                await asyncio.sleep(0)
        task.cancel()  # as serve cancels its loops once `stop` is set
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        stop.set()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await pool.close()
    assert (await members_of(KAFKA, [group]))[group] == frozenset(), "the stopped consumer is still in its group"


async def _wait_log(log: Path, text: str, process: asyncio.subprocess.Process, within: float) -> None:
    async with asyncio.timeout(within):
        while text not in log.read_text(errors="replace"):
            assert process.returncode is None, log.read_text(errors="replace")[-3000:]
            await asyncio.sleep(0.2)


async def test_a_loader_killed_between_store_and_commit_gets_the_batch_again_and_changes_nothing(
        intake_db: str, tmp_path: Path) -> None:
    name = f"t-batch-kill-{uuid.uuid4().hex[:8]}"
    group = f"batch-kill-{uuid.uuid4().hex[:8]}"
    await _create_topic(name)
    last = await _publish(name, _batch())
    args = ("-m", "tests.integration.batch_intake_process", name, group, intake_db, KAFKA)
    first_log = tmp_path / "first.log"
    # The killed process stays a member of the group until its session expires: only then does the second one get
    # the partitions. The service's 30 s session (for a loaded machine) made the second wait ~30 s for nothing;
    # 6 s is the broker's minimum. Its heartbeats run while it pauses, and should it be dropped from the group all
    # the same, before its kill, nothing changes: it never commits, and the second one gets the batch again.
    first_env = {**os.environ, PAUSE_ENV: "120", SESSION_ENV: "6000"}
    async with logged_process(first_log, *args, env=first_env) as first:
        await _wait_log(first_log, "batch.stored", first, within=60)  # stored; now pausing before the commit
        stored = await _state(intake_db)
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert await _committed(group, name) is None, "nothing committed before the kill"
    await _expect_batch_applied(intake_db, name, last)

    second_log = tmp_path / "second.log"
    env = {k: v for k, v in os.environ.items() if k != PAUSE_ENV}
    async with logged_process(second_log, *args, env=env) as second:
        async with asyncio.timeout(60):
            while await _committed(group, name) != last + 1:
                assert second.returncode is None, second_log.read_text(errors="replace")[-3000:]
                await asyncio.sleep(0.3)
        lines = [json.loads(line) for line in second_log.read_text().splitlines() if line.startswith("{")]
    batches = [line for line in lines if line.get("event") == "intake.batch"]
    assert batches and sum(b["redelivered"] for b in batches) == len(_batch()), \
        f"the whole batch came again and was recognised: {batches}"
    assert sum(b["stored"] + b["corrected"] + b["rejected"] for b in batches) == 0
    assert await _state(intake_db) == stored, "the redelivery changed nothing"
    await _expect_batch_applied(intake_db, name, last)  # and the invalid record is still dead-lettered once


async def _committed_all(group: str, topic: str) -> dict[int, int]:
    """The group's committed offset of each partition of the topic (absent: nothing committed there)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp.partition: int(meta.offset) for tp, meta in offsets.items()
                if tp.topic == topic and meta.offset >= 0}
    except GroupCoordinatorNotAvailableError:
        return {}
    finally:
        await admin.close()


async def test_two_intake_replicas_share_the_partitions_and_one_killed_loses_nothing(intake_db: str,
                                                                                       tmp_path: Path) -> None:
    """Two intake processes in one group share a topic's 4 partitions while records arrive in waves: originals,
    corrections of some and copies of others (new ce_ids, the same content). One is killed with SIGKILL in the
    middle; the other gets its partitions and finishes. Each record is stored once with the right revision (the
    correction wins, a copy changes nothing), every message is recorded once in the dedup table, each partition's
    last watermark is its last offset, and both processes stored batches. The killed one is held between its
    batch's transaction and its offset commit (FLOWS_BATCH_PAUSE_BEFORE_COMMIT_S): the survivor gets that batch
    again, and recognises it."""
    name = f"t-batch-two-{uuid.uuid4().hex[:8]}"
    group = f"batch-two-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1),
                                   NewTopic(f"{name}.dlq", num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    ids = [f"R{i:03d}" for i in range(240)]
    waves = [[service(i) for i in ids[w * 40:(w + 1) * 40]] for w in range(6)]
    waves += [[service(i, quantity=2) for i in ids[:60]], [service(i) for i in ids[60:90]]]  # corrections; copies
    args = ("-m", "tests.integration.batch_intake_process", name, group, intake_db, KAFKA)
    env = {**{k: v for k, v in os.environ.items() if k != PAUSE_ENV}, SESSION_ENV: "6000"}
    logs = [tmp_path / "one.log", tmp_path / "two.log"]
    async with contextlib.AsyncExitStack() as running:
        processes = []
        for log, pause in zip(logs, ({PAUSE_ENV: "120"}, {}), strict=True):  # one after the other: each seen joining
            before = await members_of(KAFKA, [group])
            processes.append(await running.enter_async_context(logged_process(log, *args, env={**env, **pause})))
            await wait_until_joined(KAFKA, before, deadline_s=120)
        last: dict[int, int] = {}

        async def publish(wave: list[dict[str, Any]]) -> None:
            producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, acks="all")
            await producer.start()
            try:
                for body in wave:
                    sent = await producer.send_and_wait(name, json.dumps(body).encode(),
                                                        key=body["source_id"].encode(),
                                                        headers=Envelope.new(name, "/cup/test").to_headers())
                    last[sent.partition] = max(last.get(sent.partition, -1), sent.offset)
            finally:
                await producer.stop()

        def stored_batches(log: Path) -> int:
            return sum(1 for line in json_lines(log, "intake.batch") if line["stored"] > 0)

        for wave in waves[:4]:
            await publish(wave)
        async with asyncio.timeout(60):
            while not (stored_batches(logs[0]) and stored_batches(logs[1])):
                assert all(p.returncode is None for p in processes), [log.read_text()[-2000:] for log in logs]
                await asyncio.sleep(0.2)
        processes[0].send_signal(signal.SIGKILL)
        assert await processes[0].wait() == -signal.SIGKILL
        for wave in waves[4:]:
            await publish(wave)
        async with asyncio.timeout(90):  # the survivor gets the dead one's partitions once its session expires
            while await _committed_all(group, name) != {p: o + 1 for p, o in last.items()}:
                assert processes[1].returncode is None, logs[1].read_text(errors="replace")[-3000:]
                await asyncio.sleep(0.3)

    conn = await asyncpg.connect(intake_db)
    try:
        rows = {r["source_id"]: (r["quantity"], r["revision"]) for r in await conn.fetch(
            "SELECT source_id, quantity, revision FROM source_service WHERE source_id LIKE 'R%'")}
        recorded = int(await conn.fetchval("SELECT count(*) FROM processed_message"))
        marks = [json.loads(r["data"]) for r in await conn.fetch(
            "SELECT data::text AS data FROM events WHERE type = 'sources.stored' ORDER BY position")]
    finally:
        await conn.close()
    assert rows == {i: (2, 2) if n < 60 else (1, 1) for n, i in enumerate(ids)}
    assert recorded == sum(len(w) for w in waves), "each message recorded once, redelivered or not"
    highest: dict[int, int] = {}
    for mark in marks:
        assert mark["topic"] == name
        highest[mark["partition"]] = max(highest.get(mark["partition"], -1), mark["offset"])
    assert highest == last, "each partition's last watermark is its last offset"
    assert stored_batches(logs[1]) and stored_batches(logs[0])
    assert sum(line["redelivered"] for line in json_lines(logs[1], "intake.batch")) > 0, \
        "the survivor got the killed one's uncommitted batch again"
