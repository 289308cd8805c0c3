"""Parked outbox rows through `flows outbox` on the real stack, with a real relay: a row the broker refuses (its
topic's max.message.bytes lowered by hand, as the audit found on flows.load-running) is listed with its reason and
the rows of its stream that wait behind it; retried before the fix it is parked again; once the topic's config is put
back as `flows topics apply` does, retried, it is published and its stream follows in order. A row with an invalid
topic is skipped with a reason: who and why are recorded and shown, its stream goes on. Ids that are not parked and
an empty reason are refused."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

import asyncpg
import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from pydantic import BaseModel

from contracts.topic import Topic
from services.runtime import outbox
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.kafkaadmin import admin_client
from services.runtime.outbox import OutboxRelay, parked_rows
from services.runtime.topics_admin import apply_topics
from tests.kafka_topics import create_topics, records_now_on

pytestmark = pytest.mark.integration

SMALL_LIMIT = 2000  # bytes: the lowered max.message.bytes; the parked event is 5000
# The relay reads the outbox when a NOTIFY wakes it, else at this interval: longer than any wait of these tests, so a
# retried or skipped row that goes out in time was sent because the command's NOTIFY woke the relay.
RELAY_POLL_S = 120.0


class Numbered(BaseModel):
    n: int


async def _flows(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli.main", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _env(settings: Any, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_")}
    env.update(DATABASE_URL=database_url, FLOWS_KAFKA_BOOTSTRAP=settings.kafka_bootstrap, FLOWS_OPERATOR="ops.verdi",
               COLUMNS="300")
    return env


async def _append(store: EventStore, topic: str, key: str, numbers: range, blob_at: int | None = None) -> None:
    for n in numbers:
        data: dict[str, Any] = {"n": n}
        if n == blob_at:
            data["blob"] = "x" * 5000
        await store.append(f"instance-{key}", [NewEvent(topic, data)], expected_version=n, key=key)


async def _wait_until(condition: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not await condition():
            await asyncio.sleep(0.05)


async def _unpublished(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def _numbers_on(bootstrap: str, topic: str, key: str) -> list[int]:
    return [json.loads(r.value)["n"] for r in await records_now_on(bootstrap, topic) if r.key == key.encode()]


async def _lower_max_message_bytes(bootstrap: str, topic: Topic) -> None:
    """The topic's max.message.bytes set to SMALL_LIMIT by hand (its other configs as the registry has them), and
    waited for until the broker reports it."""
    admin = admin_client(bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic.name, configs={
            "max.message.bytes": str(SMALL_LIMIT), "min.insync.replicas": "1",
            "retention.ms": str(topic.retention_ms)})])
        async with asyncio.timeout(15):
            while True:
                described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic.name)])
                values = {entry[0]: entry[1] for response in described for resource in response.resources
                          for entry in resource[4]}
                if values.get("max.message.bytes") == str(SMALL_LIMIT):
                    return
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def test_a_row_refused_by_its_topic_is_listed_retried_after_the_fix_and_its_stream_follows_in_order(
        settings: Any, fresh_db: str) -> None:
    bootstrap = settings.kafka_bootstrap
    topic = Topic(f"test.outbox-cli-{uuid.uuid4().hex[:8]}", Numbered, "n", "a parked row's topic", ("test",))
    other = f"test.outbox-other-{uuid.uuid4().hex[:8]}"  # another stream's topic: not in the parked row's batches
    await apply_topics(bootstrap, 1, [topic])
    await create_topics(bootstrap, other)
    await _lower_max_message_bytes(bootstrap, topic)
    pool = await create_pool(fresh_db, min_size=1, max_size=4)
    store = EventStore(pool, source="/test")
    env = _env(settings, fresh_db)
    relay = OutboxRelay(pool, bootstrap, poll_interval=RELAY_POLL_S)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        code, out = await _flows(env, "outbox", "parked")
        assert code == 0 and "no parked outbox row" in out, out

        await _append(store, topic.name, "9101", range(3), blob_at=0)  # 5000 bytes, over the topic's 2000
        await _append(store, other, "9102", range(2))
        await _wait_until(lambda: _parked(pool, 1))
        await _wait_until(lambda: _unpublished_is(pool, 3))  # the parked row and the 2 behind it; 9102 went on
        row = (await parked_rows(pool))[0]
        assert await _numbers_on(bootstrap, other, "9102") == [0, 1]

        code, out = await _flows(env, "outbox", "parked")
        assert code == 0, out
        listed = _one_line(out)
        assert "1 parked outbox row(s)" in listed, out
        line = next(text for text in out.splitlines() if text.startswith(f"│ {row['id']} "))
        assert str(row["event_id"]) in line and topic.name in line and "9101" in line, out
        assert "MessageSizeTooLargeError" in line and f" {row['parked_at'].astimezone(UTC):%Y-%m-%d %H:%M}" in line, out
        assert line.split("│")[6].strip() == "2", out  # waiting behind it
        assert "flows outbox retry ROW_ID" in listed and "flows outbox skip ROW_ID --reason" in listed, out

        code, out = await _flows(env, "outbox", "parked", "--json")
        assert code == 0, out
        assert json.loads(out) == [{"row": row["id"], "event_id": str(row["event_id"]), "topic": topic.name,
                                    "key": "9101", "parked_at": row["parked_at"].isoformat(),
                                    "reason": row["parked_reason"], "waiting": 2}]
        assert "(payload 5" in row["parked_reason"]

        # Retried before its cause is fixed: sent again, refused again, parked again; its stream still waits.
        code, out = await _flows(env, "outbox", "retry", str(row["id"]))
        assert code == 0, out
        await _wait_until(lambda: _parked_after(pool, row["parked_at"]))
        assert await _unpublished(pool) == 3

        # The fix, as `flows topics apply` makes it: the registry's config put back on the topic.
        applied = await apply_topics(bootstrap, 1, [topic])
        assert applied[0].actions == ["configs set: max.message.bytes"], applied
        code, out = await _flows(env, "outbox", "retry", str(row["id"]))
        assert code == 0, out
        assert _one_line(out).startswith(f"retried outbox row {row['id']} (event {row['event_id']}, topic "
                                         f"{topic.name}, key 9101) by ops.verdi: unparked; the relay"), out
        await _wait_until(lambda: _unpublished_is(pool, 0))
        assert await _numbers_on(bootstrap, topic.name, "9101") == [0, 1, 2]  # the parked row first, once

        code, out = await _flows(env, "outbox", "parked")
        assert code == 0 and "no parked outbox row" in out, out
        code, out = await _flows(env, "outbox", "show", str(row["id"]))
        assert code == 0, out
        shown = _one_line(out)
        assert f"outbox row {row['id']} status: published at" in shown, out
        assert shown.count("retried by ops.verdi at") == 2 and "MessageSizeTooLargeError" in shown, out
        code, out = await _flows(env, "outbox", "retry", str(row["id"]))
        assert code == 1 and f"outbox row {row['id']} is not parked: it was published at" in _one_line(out), out

        decided = await EventStore(pool, source="/test").read_stream(f"outbox-row-{row['id']}")
        assert [(e.type, e.actor, e.data["event_id"]) for e in decided] == \
            [(outbox.RETRIED, "ops.verdi", str(row["event_id"]))] * 2
        assert "MessageSizeTooLargeError" in decided[0].data["parked_reason"]
        assert await store.verify_all() == []
    finally:
        stop.set()
        await running
        await pool.close()


async def test_a_skipped_row_records_who_and_why_and_its_stream_goes_on(settings: Any, fresh_db: str) -> None:
    bootstrap = settings.kafka_bootstrap
    topic = f"test.outbox-skip-{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, topic)
    pool = await create_pool(fresh_db, min_size=1, max_size=4)
    store = EventStore(pool, source="/test")
    env = _env(settings, fresh_db)
    await _append(store, topic, "9201", range(3))
    first = await pool.fetchval("SELECT min(id) FROM outbox")
    await pool.execute("UPDATE outbox SET topic = 'not a valid topic name!' WHERE id = $1", first)  # InvalidTopic

    # No relay yet: the row waits, it is not parked
    code, out = await _flows(env, "outbox", "retry", str(first))
    assert code == 1 and f"outbox row {first} is not parked: it waits for the relay" in _one_line(out), out
    code, out = await _flows(env, "outbox", "skip", str(first), "--reason", "a typo")
    assert code == 1 and f"outbox row {first} is not parked" in _one_line(out), out

    relay = OutboxRelay(pool, bootstrap, poll_interval=RELAY_POLL_S)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await _wait_until(lambda: _parked(pool, 1))
        await _wait_until(lambda: _unpublished_is(pool, 3))

        for reason in ("", "   "):
            code, out = await _flows(env, "outbox", "skip", str(first), "--reason", reason)
            assert code == 1 and "--reason is empty" in out, out
        code, out = await _flows(env, "outbox", "skip", str(first))
        assert code == 2 and "Missing option '--reason'" in out, out
        for args in (["skip", "999999", "--reason", "x"], ["retry", "999999"], ["show", "999999"]):
            code, out = await _flows(env, "outbox", *args)
            assert code == 1 and "there is no outbox row 999999" in _one_line(out), out
        code, out = await _flows(env, "outbox", "retry", "nine")
        assert code == 2 and "Invalid value for 'ROW_ID'" in out, out
        assert len(await parked_rows(pool)) == 1 and await _unpublished(pool) == 3  # nothing was done

        why = "event of a test instance; its topic was a typo, the instance is being redone"
        code, out = await _flows(env, "outbox", "skip", str(first), "--reason", why)
        assert code == 0, out
        assert _one_line(out) == (f"skipped outbox row {first} (event {_event_of(await _row(pool, first))}, topic "
                                  f"not a valid topic name!, key 9201) by ops.verdi: {why}. The event stays in the "
                                  "event store and is never published; 2 later row(s) of its stream go on."), out
        await _wait_until(lambda: _unpublished_is(pool, 0))
        assert await _numbers_on(bootstrap, topic, "9201") == [1, 2]

        code, out = await _flows(env, "outbox", "show", str(first))
        assert code == 0, out
        shown = _one_line(out)
        assert f"outbox row {first} status: skipped at" in shown and "never published" in shown, out
        assert "skipped by ops.verdi at" in shown and f"UTC: {why} (parked at" in shown, out
        assert "InvalidTopicError" in shown, out
        for args in (["skip", str(first), "--reason", "again"], ["retry", str(first)]):
            code, out = await _flows(env, "outbox", *args)
            assert code == 1 and f"outbox row {first} is not parked: it was skipped at" in _one_line(out), out

        kept = await _row(pool, first)
        assert kept["skipped_at"] is not None and "InvalidTopicError" in kept["parked_reason"]
        decided = await store.read_stream(f"outbox-row-{first}")
        assert [(e.type, e.actor, e.data["reason"], e.data["by"], e.data["key"]) for e in decided] == \
            [(outbox.SKIPPED, "ops.verdi", why, "ops.verdi", "9201")]
        assert await store.verify_all() == []
    finally:
        stop.set()
        await running
        await pool.close()


async def _row(pool: asyncpg.Pool, row_id: int) -> asyncpg.Record:
    return await pool.fetchrow("SELECT * FROM outbox WHERE id = $1", row_id)


def _event_of(row: asyncpg.Record) -> str:
    return str(row["event_id"])


async def _parked(pool: asyncpg.Pool, count: int) -> bool:
    return len(await parked_rows(pool)) == count


async def _parked_after(pool: asyncpg.Pool, moment: Any) -> bool:
    rows = await parked_rows(pool)
    return len(rows) == 1 and rows[0]["parked_at"] > moment


async def _unpublished_is(pool: asyncpg.Pool, count: int) -> bool:
    return await _unpublished(pool) == count
