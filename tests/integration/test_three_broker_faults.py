"""Issue 10's first "Must show": in 3-broker mode with ALL services running (`flows stack up --brokers 3` on a
private stack in this session's port range), one broker is killed with SIGKILL in the middle of intake and
loads and restarted 60 s later. Every source record whose produce was acknowledged must be stored in
PostgreSQL, none twice; every load must reach its outcome (Checked or Failed loading); `flows replay --all
--verify` must be clean. Real brokers, real kill -9, real services (each its own supervised process).

Marked `faults` (run by default; `-m "not faults"` leaves it out) with its own timeout: it takes ~3 min.
The figures are printed as one JSON line (`pytest -s` shows it)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from contracts import flows
from contracts.envelope import Envelope
from contracts.states import InstanceState
from contracts.topics import SOURCE_TOPICS
from deploy import localstack
from services.cli.sources import publish
from services.runtime.commands import send_command
from services.runtime.kafkaadmin import admin_client
from services.runtime.settings import bootstrap_list
from simulators.cup.generator import SOURCE_FILES, generate, month_period

pytestmark = [pytest.mark.integration, pytest.mark.faults]
REPO = Path(__file__).resolve().parents[2]
ENTE = "201"
KILLED_NODE = 1  # the first host of the bootstrap list, too
DOWN_S = 60.0
TABLES = {"delivered-service": "source_service", "payment-document": "source_payment_document",
          "intramoenia-booking": "source_intramoenia_booking"}
KIND_OF = {cls.__name__: kind for cls, (kind, _file) in SOURCE_FILES.items()}
OUTCOMES = {InstanceState.CHECKED.value, InstanceState.FAILED_LOADING.value}


@dataclass
class Figures:
    produced: int = 0
    acked: int = 0
    produce_failed: int = 0
    stored: int = 0
    lost: int = 0
    doubled: int = 0
    dead_lettered: int = 0
    loads: dict[str, str] = field(default_factory=dict)
    produce_s: float = 0.0  # from the kill to the last acknowledgement of the paced production
    broker_down_s: float = 0.0  # from the kill to the node serving again (restart at 60 s + its start)
    all_stored_after_restart_s: float = 0.0
    total_s: float = 0.0


async def _stored(pool: asyncpg.Pool, acked: dict[str, list[str]]) -> tuple[int, int]:
    """(records of ours stored, of which stored more than once: a revision above 1 means a second write)."""
    stored = doubled = 0
    for kind, ids in acked.items():
        row = await pool.fetchrow(f"SELECT count(*) AS n, count(*) FILTER (WHERE revision > 1) AS twice "
                                  f"FROM {TABLES[kind]} WHERE source_id = ANY($1::text[])", ids)
        stored, doubled = stored + row["n"], doubled + row["twice"]
    return stored, doubled


async def _produce_paced(bootstrap: str, records: list[Any], acked: dict[str, list[str]], figures: Figures) -> None:
    """Every record on its topic as the CUP would, in paced batches so the production spans the kill; a
    record counts as acknowledged only when its send completed (acks=all)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_list(bootstrap), enable_idempotence=True, acks="all",
                                request_timeout_ms=30_000)
    await producer.start()
    try:
        for start in range(0, len(records), 100):
            batch = []
            for record in records[start:start + 100]:
                kind = KIND_OF[type(record).__name__]
                source_id = str(vars(record)["source_id"])
                topic = f"sources.{kind}"
                headers = Envelope.new(topic, "/cup/campania", subject=source_id).to_headers()
                batch.append((kind, source_id, await producer.send(
                    topic, record.model_dump_json().encode(), key=source_id.encode(), headers=headers)))
            results = await asyncio.gather(*(f for _, _, f in batch), return_exceptions=True)
            for (kind, source_id, _), result in zip(batch, results, strict=True):
                figures.produced += 1
                if isinstance(result, BaseException):
                    figures.produce_failed += 1
                else:
                    acked.setdefault(kind, []).append(source_id)
                    figures.acked += 1
            await asyncio.sleep(0.25)
    finally:
        await producer.stop()


async def _request_load(bootstrap: str, flow_type: flows.FlowType, month: str) -> tuple[str, str]:
    start, end = month_period(month)
    request = flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flow_type, ente=ENTE,
                                  period=flows.Period(start=start, end=end), requested_by="faults.test")
    await send_command(bootstrap, "flows.load-requested", request, key=str(request.request_id))
    return flow_type.value, month


async def _outcomes(pool: asyncpg.Pool, loads: list[tuple[str, str]], timeout: float) -> dict[str, str]:
    """The state of each load's instance once all reached Checked/Failed loading; fails naming the stuck."""
    deadline = time.monotonic() + timeout
    while True:
        states: dict[str, str] = {}
        for flow_type, month in loads:
            rows = await pool.fetch("SELECT state FROM instance_list WHERE flow_type = $1 AND ente = $2 "
                                    "AND period_start = $3", flow_type, ENTE, month_period(month)[0])
            assert len(rows) <= 1, f"load {flow_type} {month} made {len(rows)} instances"
            states[f"{flow_type} {month}"] = rows[0]["state"] if rows else "(no instance)"
        if all(s in OUTCOMES for s in states.values()):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"loads without an outcome after {timeout:.0f} s: {states}")
        await asyncio.sleep(0.5)


async def _dead_letters(bootstrap: str) -> int:
    """Messages on the dead-letter topics of intake and of the load command."""
    topics = [t.dlq for t in SOURCE_TOPICS] + ["flows.load-requested.dlq"]
    admin = admin_client(bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    partitions = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    assert len({tp.topic for tp in partitions}) == len(topics), f"dead-letter topics not provisioned: {described}"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_list(bootstrap), group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
        begins = await consumer.beginning_offsets(partitions)
        return sum(ends[tp] - begins[tp] for tp in partitions)
    finally:
        await consumer.stop()


async def _drive(info: localstack.StackInfo, figures: Figures) -> None:
    bootstrap = info.bootstrap_servers
    pool = await asyncpg.create_pool(info.database_url, min_size=1, max_size=2)
    try:
        # a month stored before the fault, to be loaded during it
        before = generate(ENTE, "2026-08", 300, seed=31)
        counts = await publish(before, bootstrap)
        figures.produced = figures.acked = sum(counts.values())  # publish() raises unless all are acked
        acked_before = {kind: [str(vars(r)["source_id"]) for r in before if KIND_OF[type(r).__name__] == kind]
                        for kind in counts}
        deadline = time.monotonic() + 120
        while (await _stored(pool, acked_before))[0] < sum(counts.values()):
            assert time.monotonic() < deadline, "the first month was not stored within 120 s"
            await asyncio.sleep(0.5)

        # intake of a second month, with node 1 killed once a third of it is acknowledged
        during = list(generate(ENTE, "2026-09", 2500, seed=32))
        acked: dict[str, list[str]] = {}
        producing = asyncio.create_task(_produce_paced(bootstrap, during, acked, figures))
        while figures.acked < len(during) // 3:
            assert not producing.done(), producing
            await asyncio.sleep(0.1)
        killed_at = time.monotonic()
        await asyncio.to_thread(localstack.stop_kafka_node, KILLED_NODE, True)

        async def restart_later() -> float:
            await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - killed_at)))
            await asyncio.to_thread(localstack.start_kafka_node, KILLED_NODE, 120.0)
            return time.monotonic()

        restarting = asyncio.create_task(restart_later())  # 60 s after the kill, whatever the test is doing
        loads = [await _request_load(bootstrap, flows.FlowType.FLUSSO_C, "2026-08"),
                 await _request_load(bootstrap, flows.FlowType.FLUSSO_730, "2026-08")]
        await producing
        figures.produce_s = round(time.monotonic() - killed_at, 1)
        restarted_at = await restarting
        figures.broker_down_s = round(restarted_at - killed_at, 1)

        # everything acknowledged is stored, once
        for kind, ids in acked_before.items():
            acked.setdefault(kind, []).extend(ids)
        expected = sum(len(ids) for ids in acked.values())
        deadline = time.monotonic() + 180
        while (stored := await _stored(pool, acked))[0] < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        figures.stored, figures.doubled = stored
        figures.lost = expected - figures.stored
        figures.all_stored_after_restart_s = round(time.monotonic() - restarted_at, 1)

        loads.append(await _request_load(bootstrap, flows.FlowType.FLUSSO_C, "2026-09"))
        figures.loads = await _outcomes(pool, loads, timeout=180)
        figures.dead_lettered = await _dead_letters(bootstrap)
    finally:
        await pool.close()


@pytest.mark.timeout(900)
def test_one_broker_killed_under_intake_and_loads_loses_nothing(private_stack: Path) -> None:
    from services.cli import stack as stack_cli

    t0 = time.monotonic()
    info = stack_cli.up(brokers=3, with_services=True)
    assert info.brokers == 3 and info.state_dir == private_stack
    services = localstack.status()["services"]
    assert services and all(s["running"] for s in services.values()), services

    figures = Figures()
    asyncio.run(_drive(info, figures))

    replay = subprocess.run([sys.executable, "-m", "services.cli.main", "replay", "--all", "--verify"],
                            capture_output=True, text=True, cwd=REPO, env={**os.environ, "COLUMNS": "200"},
                            timeout=300)
    figures.total_s = round(time.monotonic() - t0, 1)
    print("FAULT FIGURES three-broker kill -9:", json.dumps(asdict(figures)))
    assert figures.acked > 0 and figures.produced == figures.acked + figures.produce_failed
    assert figures.lost == 0, figures
    assert figures.doubled == 0, figures
    assert figures.dead_lettered == 0, figures
    assert all(state in OUTCOMES for state in figures.loads.values()), figures.loads
    assert replay.returncode == 0, replay.stdout[-3000:] + replay.stderr[-3000:]
    # the services ran through it: none had to be restarted by its supervisor
    after = localstack.status()["services"]
    assert all(s["running"] for s in after.values()), after
    assert {name: s["restarts"] for name, s in after.items() if s["restarts"]} == {}, after
