"""PostgreSQL stopped for 30 s under intake and loads (a real `pg_ctl stop`), with the real loader
service in its own process: nothing is dead-lettered, every source record is stored once, every
load reaches its outcome. The figures are printed (`pytest -s`) for the issue's note.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from contracts import flows
from contracts.envelope import Envelope
from contracts.states import InstanceState
from contracts.topics import INTAKE_TOPICS
from services.runtime.commands import send_command
from simulators.cup.generator import SOURCE_FILES, generate, month_period
from tests.isolation import logged_process, scratch_database
from tests.kafka_topics import records_now_on
from tests.pg_outage import postgres_down
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0
ENTE, MONTH = "204", "2020-08"
OUTCOMES = {InstanceState.CHECKED.value, InstanceState.FAILED_LOADING.value}
TABLES = {"delivered-service": "source_service", "payment-document": "source_payment_document",
          "intramoenia-booking": "source_intramoenia_booking"}


@dataclass
class Loader:
    database_url: str
    log: Path
    process: asyncio.subprocess.Process


@pytest.fixture
async def loader(stack, tmp_path: Path) -> AsyncIterator[Loader]:  # type: ignore[no-untyped-def]
    """The real loader service on a fresh database, alone in its consumer groups, its log in a file."""
    log = tmp_path / "loader.log"
    async with scratch_database("t_outage") as url:
        env = {**os.environ, "DATABASE_URL": url, "FLOWS_KAFKA_BOOTSTRAP": KAFKA, "FLOWS_FILES_DIR": str(tmp_path),
               "FLOWS_LOG_FORMAT": "json"}
        async with logged_process(log, "-m", "tests.integration.outage_loader", uuid.uuid4().hex[:8],
                                  env=env) as process:
            # Its groups start at the end of the topics (outage_loader.start_at_the_end) before the service
            # starts: a record published earlier than that would be behind them, never consumed.
            async with asyncio.timeout(90):
                while '"service.started"' not in log.read_text(errors="replace"):
                    assert process.returncode is None, log.read_text()[-3000:]
                    await asyncio.sleep(0.2)
            yield Loader(url, log, process)


async def _publish(records: list[BaseModel]) -> list[str]:
    """Publishes the records as the CUP would; their ce_ids."""
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, acks="all")
    await producer.start()
    ids = []
    try:
        acks = []
        for record in records:
            source_id = str(vars(record)["source_id"])
            topic = f"sources.{SOURCE_FILES[type(record)][0]}"
            envelope = Envelope.new(topic, "/cup/test", subject=source_id)
            ids.append(envelope.id)
            acks.append(await producer.send(topic, record.model_dump_json().encode(), key=source_id.encode(),
                                            headers=envelope.to_headers()))
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return ids


async def _count(url: str, prefix: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        return {kind: int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE starts_with(source_id, $1)",
                                              prefix)) for kind, table in TABLES.items()}
    finally:
        await conn.close()


async def _dead_letters(prefix: str, request_ids: set[str]) -> int:
    """Dead letters of this test's records and load requests, on every DLQ the loader writes: every record up to
    the end offsets (a group's quiet poll reads nothing while it joins, and would call that "none")."""
    topics = [t.dlq for t in INTAKE_TOPICS] + ["flows.load-requested.dlq"]
    found = 0
    for r in await records_now_on(KAFKA, *topics):
        key = (r.key or b"").decode(errors="replace")
        found += key.startswith(prefix) or key in request_ids
    return found


async def _outcomes(url: str, start: object) -> dict[str, str]:
    """State of each flow type's instance of the period (one load request per flow type)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT flow_type, state FROM instance_list WHERE ente = $1 AND period_start = $2",
                                ENTE, start)
        return {row["flow_type"]: row["state"] for row in rows}
    finally:
        await conn.close()


async def test_postgres_stopped_for_30_s_under_intake_and_loads_dead_letters_nothing(loader: Loader) -> None:
    generation = generate(ENTE, MONTH, 300, seed=random.randrange(10_000, 99_999))
    records: list[BaseModel] = list(generation)
    expected = {kind: sum(1 for r in records if SOURCE_FILES[type(r)][0] == kind) for kind in TABLES}
    before, during = records[: len(records) // 3], records[len(records) // 3:]
    start, end = month_period(MONTH)
    requests = [flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flow, ente=ENTE,
                                    period=flows.Period(start=start, end=end), requested_by="test.outage")
                for flow in (flows.FlowType.FLUSSO_C, flows.FlowType.FLUSSO_730, flows.FlowType.FLUSSO_MEF)]
    request_ids = {str(r.request_id) for r in requests}

    ce_ids = await _publish(before)
    try:
        async with asyncio.timeout(90):  # the loader is up and consuming (a hang guard)
            while sum((await _count(loader.database_url, generation.prefix)).values()) < len(before):
                await asyncio.sleep(0.3)
    except TimeoutError:
        raise AssertionError(f"the records published before the outage were never all stored: "
                             f"{await _count(loader.database_url, generation.prefix)} of {len(before)}") from None
    log_before = loader.log.stat().st_size
    outage_started = time.monotonic()
    async with postgres_down():
        ce_ids += await _publish(during)  # intake during the outage
        for request in requests:  # and loads
            await send_command(KAFKA, "flows.load-requested", request, key=str(request.request_id))
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
        assert loader.process.returncode is None, "the loader died during the outage"
    outage_s = time.monotonic() - outage_started

    recovered = time.monotonic()
    stored: dict[str, int] = {}
    outcomes: dict[str, str] = {}
    try:
        async with asyncio.timeout(180):  # a hang guard, no speed target
            while True:
                stored = await _count(loader.database_url, generation.prefix)
                outcomes = await _outcomes(loader.database_url, start)
                if stored == expected and len(outcomes) == 3 and set(outcomes.values()) <= OUTCOMES:
                    break
                await asyncio.sleep(0.5)
    except TimeoutError:
        raise AssertionError(f"never caught up after PostgreSQL came back: stored {stored} of {expected}, loads "
                             f"{outcomes}; loader log tail:\n{loader.log.read_text()[-3000:]}") from None
    catch_up_s = time.monotonic() - recovered
    dead = await _dead_letters(generation.prefix, request_ids)
    conn = await asyncpg.connect(loader.database_url)
    try:
        summaries = {row["flow_type"]: row["summary"] for row in await conn.fetch(
            "SELECT flow_type, summary FROM instance_list WHERE ente = $1 AND period_start = $2", ENTE, start)}
        doubled = int(await conn.fetchval(
            "SELECT count(*) FROM source_service WHERE starts_with(source_id, $1) AND revision > 1",
            generation.prefix))
        handled = int(await conn.fetchval(  # this test's messages the loader applied (one row each at most)
            "SELECT count(*) FROM processed_message WHERE consumer = 'loader-sources' AND message_id = ANY($1)",
            ce_ids))
    finally:
        await conn.close()
    log_growth = loader.log.stat().st_size - log_before
    print(f"\nPostgreSQL down {outage_s:.1f} s: {len(records)} source records ({expected}), 3 loads; "
          f"dead-lettered {dead}, stored {stored}, doubled {doubled}, messages handled {handled}, "
          f"loads {outcomes}; caught up {catch_up_s:.1f} s after restart; loader log grew {log_growth} bytes; "
          f"outcomes: {summaries}")

    assert dead == 0
    assert stored == expected and doubled == 0
    assert handled == len(records)  # each source message applied once (the dedup table has one row each)
    assert sorted(outcomes) == sorted(r.flow_type.value for r in requests) and set(outcomes.values()) <= OUTCOMES
    assert log_growth < 1_000_000
