"""The loader refuses a load for an entity it does not know, or of a period not over when the load would run: the
command goes to its dead-letter topic with a reason naming the entity or the period's end, no instance is made, and
the next command is processed."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from contracts import flows
from contracts.deadlines import ITALY, italian_today
from contracts.envelope import Envelope
from contracts.topics import Topic, by_name
from services.loader import handlers
from services.runtime.broker import consume, create_broker
from services.runtime.eventstore import EventStore
from services.runtime.filestore import FileStore
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS
from tests.kafka_topics import create_topics, records_now_on

pytestmark = pytest.mark.integration


def _request(ente: str) -> flows.LoadRequested:
    return flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, ente=ente,
                               period=flows.Period(start=date(2021, 8, 1), end=date(2021, 8, 31)),
                               requested_by="op.test")


async def _refusals(settings: Any, pool: asyncpg.Pool, tmp_path: Path, commands: list[flows.LoadRequested],
                    until: flows.LoadRequested, state: str | None = None) -> tuple[asyncpg.Record, list[Any]]:
    """The real loader handler consuming a topic of its own: `commands` sent in order on one partition (the refused
    first), until the instance of `until` exists (in `state`, when given); then that instance's row and every dead
    letter up to the end offsets (whatever was refused before `until` on the partition is there)."""
    real = by_name("flows.load-requested")
    topic = Topic(f"test.{real.name}-{uuid.uuid4().hex[:8]}", real.payload, real.key, "cli", ("loader",))
    await create_topics(settings.kafka_bootstrap, topic.name, topic.dlq)  # brokers never auto-create
    await prepare_database(pool, FLOW_PROJECTIONS)
    deps = handlers.LoaderDeps(pool=pool, store=EventStore(pool, source="/flows/loader", projections=FLOW_PROJECTIONS),
                               files=FileStore(tmp_path / "files"))
    broker = create_broker(settings, client_id="refusal-test")
    consume(broker, topic, group_id=f"refusal-{uuid.uuid4().hex[:6]}",
            handler=lambda cmd, msg: handlers.handle_load_requested(cmd, msg, deps))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for cmd in commands:  # same key: same partition, in this order
            await producer.send_and_wait(topic.name, cmd.model_dump_json().encode(), key=b"loads",
                                         headers=Envelope.new(topic.name, "/flows/cli").to_headers())
        await broker.start()
        async with asyncio.timeout(30):
            while (row := await pool.fetchrow(
                    "SELECT instance, state, warnings FROM instance_list WHERE instance = "
                    "(SELECT instance FROM load_request WHERE request_id = $1)", until.request_id)) is None \
                    or (state is not None and row["state"] != state):
                await asyncio.sleep(0.2)
        # Every dead letter up to the end offsets: `until`, behind the refused ones on the partition, is there, so
        # any dead letter of them is already there (one batch of a group's first poll may hold fewer).
        dead = await records_now_on(settings.kafka_bootstrap, topic.dlq)
    finally:
        await producer.stop()
        await broker.stop()
    return row, dead


async def test_a_load_for_an_unknown_ente_is_dead_lettered_naming_it_and_the_next_load_runs(
        settings: Any, pool: asyncpg.Pool, tmp_path: Path) -> None:
    unknown, known = _request("999"), _request("204")
    row, dead = await _refusals(settings, pool, tmp_path, [unknown, known], until=known, state="Checked")
    assert row["warnings"] == 1  # 204 has no data in August 2021: NO_SOURCE_DATA, not a silent Checked
    assert len(dead) == 1
    reason = dict((k, v.decode()) for k, v in dead[0].headers)["dlq_reason"]
    assert f"load request {unknown.request_id}" in reason and "ente 999 is not a known entity" in reason
    assert await pool.fetchval("SELECT count(*) FROM load_request WHERE request_id = $1", unknown.request_id) == 0


async def test_a_load_of_a_period_not_over_is_dead_lettered_naming_its_end_and_one_scheduled_after_it_is_taken(
        settings: Any, pool: asyncpg.Pool, tmp_path: Path) -> None:
    """Any producer (an external system publishes load requests from the contract alone): a month that has not ended,
    to run now, makes no instance (the old loader made one and it came back Checked, empty, with a warning); the
    same month scheduled to start once it is over is a Scheduled instance."""
    start = italian_today().replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    month = flows.Period(start=start, end=end)
    now = _request("204").model_copy(update={"period": month})
    later = _request("204").model_copy(update={
        "period": month, "scheduled_at": datetime.combine(end + timedelta(days=1), time(6), tzinfo=ITALY)})
    row, dead = await _refusals(settings, pool, tmp_path, [now, later], until=later)
    assert row["state"] == "Scheduled"
    assert await pool.fetchval("SELECT count(*) FROM load_request WHERE request_id = $1", now.request_id) == 0
    assert len(dead) == 1
    reason = dict((k, v.decode()) for k, v in dead[0].headers)["dlq_reason"]
    assert f"load request {now.request_id}: period.end {end}: the period is not over on " in reason, reason
    assert "a period that has not ended cannot be loaded" in reason
