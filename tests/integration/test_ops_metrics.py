"""The ops figures the alert rules use, computed from the real stack: an event waiting in the outbox,
a failed load, a TS rejection, a dead letter and a row the relay parked each show in the exporter's output."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, generate_latest

from contracts import flows
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.host import prepare_database
from services.runtime.opsmetrics import OpsMetrics
from services.runtime.outbox import OutboxRelay, parked_rows, skip_parked
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream
from tests.kafka_topics import create_topics

pytestmark = pytest.mark.integration


async def test_the_exporter_reports_outbox_failed_load_ts_rejection_dead_letter_and_deadline(settings, fresh_db):
    pool = await create_pool(fresh_db, min_size=1, max_size=2)
    dlq = f"test.figures-{uuid.uuid4().hex[:8]}.dlq"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await create_topics(settings.kafka_bootstrap, dlq)
    await producer.start()
    try:
        await producer.send_and_wait(dlq, b"{}", key=b"k", headers=[("dlq_reason", b"test")])
        await prepare_database(pool, FLOW_PROJECTIONS)
        store = EventStore(pool, source="/test", projections=FLOW_PROJECTIONS)
        running = flows.LoadRunning(instance=77, request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C,
                                    version="2020", ente="201",
                                    period=flows.Period.model_validate({"start": "2026-10-01", "end": "2026-10-31"}),
                                    requested_by="op.rossi")
        failed = flows.LoadFailed(instance=77, errors=2, summary="2 errori in 1 record: 2 x CF_CHECK_CHAR")
        rejected = flows.TsFeedbackReceived(instance=77, part=1, parts=1, outcome="rejected", reason="test")
        # published: the outbox rows wait (no relay runs here)
        await store.append(instance_stream(77), [
            NewEvent("flows.load-running", running.model_dump(mode="json")),
            NewEvent("flows.load-failed", failed.model_dump(mode="json")),
            NewEvent("flows.ts-feedback-received", rejected.model_dump(mode="json"))], expected_version=0, key="77")
        # the oldest waits for an hour: the age must say so (an age of a just-appended row is ~0, as a broken
        # figure stuck at 0 would be)
        await pool.execute("UPDATE outbox SET created_at = now() - interval '1 hour' "
                           "WHERE id = (SELECT min(id) FROM outbox)")

        registry = CollectorRegistry()
        await OpsMetrics(registry).refresh(pool, settings.kafka_bootstrap, today=date(2026, 11, 8))
        text = generate_latest(registry).decode()
        # On the 730's due day (2026 data: 31 January 2027 is a Sunday, so Monday 1 February), when its period's
        # month is two months back: still reported, so the alert fires that day
        on_due_day = CollectorRegistry()
        await OpsMetrics(on_due_day).refresh(pool, settings.kafka_bootstrap, today=date(2027, 2, 1))
        due_day_text = generate_latest(on_due_day).decode()
        # A platform live from 11 November (FLOWS_DEADLINES_WATCHED_FROM) does not report the 10 November deadlines,
        # which the system before it covered; one live from the 10th does
        watched = {}
        for live_from in (date(2026, 11, 11), date(2026, 11, 10)):
            registry_from = CollectorRegistry()
            await OpsMetrics(registry_from).refresh(pool, settings.kafka_bootstrap, today=date(2026, 11, 8),
                                                    watched_from=live_from)
            watched[live_from] = generate_latest(registry_from).decode()
        # A region going live entity by entity (FLOWS_DEADLINES_ENTI="201:2026-11-11,202"): only those entities, 201
        # from its own go-live day (after its 10 November deadline), 202 from the platform's (none: every deadline)
        by_ente = CollectorRegistry()
        await OpsMetrics(by_ente).refresh(pool, settings.kafka_bootstrap, today=date(2026, 11, 8),
                                          enti={"201": date(2026, 11, 11), "202": None})
        by_ente_text = generate_latest(by_ente).decode()
    finally:
        await producer.stop()
        await pool.close()
    assert "flows_outbox_unpublished 3.0" in text
    assert 'flows_instances{flow_type="FLUSSO_C",state="Failed loading"} 1.0' in text
    assert 'flows_ts_outcomes{outcome="rejected"} 1.0' in text
    assert f'flows_dlq_messages{{topic="{dlq}"}} 1.0' in text
    assert "flows_ops_refreshed_timestamp_seconds" in text
    # October's Flusso C of ente 201 is due on 10 November: the failed load does not cover it
    assert 'flows_deadline_uncovered_days{due="2026-11-10",ente="201",flow_type="FLUSSO_C",month="2026-10"} 2.0' in text
    # An entity of the catalogue with no instance at all is due too: the alert must not skip the one that loaded nothing
    assert 'flows_deadline_uncovered_days{due="2026-11-10",ente="203",flow_type="FLUSSO_C",month="2026-10"} 2.0' in text
    october = 'flows_deadline_uncovered_days{due="2026-11-10",ente="201",flow_type="FLUSSO_C",month="2026-10"} 2.0'
    assert october not in watched[date(2026, 11, 11)] and october in watched[date(2026, 11, 10)]
    assert 'due="2026-11-10"' not in watched[date(2026, 11, 11)], "no deadline due before the go-live"
    reported = {line.split('ente="')[1].split('"')[0] for line in by_ente_text.splitlines()
                if line.startswith("flows_deadline_uncovered_days{")}
    assert reported == {"201", "202"}, reported  # 203 and the others of the catalogue: not on the platform yet
    assert october not in by_ente_text  # 201 went live on the 11th
    assert october.replace('ente="201"', 'ente="202"') in by_ente_text
    # the month `flows deadlines --month` lists it under, as the alert's text says to run it
    assert 'flows_deadline_uncovered_days{due="2027-02-01",ente="201",flow_type="FLUSSO_730",month="2026-12"} 0.0' \
        in due_day_text
    age = _figure(text, "flows_outbox_oldest_unpublished_seconds")
    assert 3600 <= age < 3600 + 300, age
    # no row is parked: every one waits for the relay, the oldest too (OutboxBehind's figure)
    assert _figure(text, "flows_outbox_oldest_pending_seconds") == pytest.approx(age, abs=60)


def _figure(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(f"{name} ")))


async def test_the_exporter_reports_the_parked_outbox_rows_until_they_are_skipped(settings, fresh_db):
    """A row the real relay parked (an invalid topic name) counts in flows_outbox_parked, and in
    flows_outbox_unpublished with the row of its stream waiting behind it; once skipped, neither. Neither it nor the
    row behind it is in flows_outbox_oldest_pending_seconds (OutboxBehind's): the relay sent every row it could, and
    the parked row pages once, as OutboxRowParked."""
    pool = await create_pool(fresh_db, min_size=1, max_size=4)
    topic = f"test.parked-{uuid.uuid4().hex[:8]}"
    await create_topics(settings.kafka_bootstrap, topic)
    await prepare_database(pool, FLOW_PROJECTIONS)  # the tables the other figures read
    store = EventStore(pool, source="/test")
    for key in ("8101", "8102"):
        for n in range(2):
            await store.append(f"instance-{key}", [NewEvent(topic, {"n": n})], expected_version=n, key=key)
    first = await pool.fetchval("SELECT min(id) FROM outbox WHERE key = '8101'")
    await pool.execute("UPDATE outbox SET topic = 'not a valid topic name!' WHERE id = $1", first)
    # appended an hour ago: a parked row's age is then far over OutboxBehind's 120 s, and must not count there
    await pool.execute("UPDATE outbox SET created_at = now() - interval '1 hour'")

    async def figures() -> str:
        registry = CollectorRegistry()
        await OpsMetrics(registry).refresh(pool, settings.kafka_bootstrap, today=date(2026, 11, 8))
        return generate_latest(registry).decode()

    relay = OutboxRelay(pool, settings.kafka_bootstrap, poll_interval=0.2)
    stop = asyncio.Event()
    try:
        waiting = await figures()  # 4 rows wait, none is parked yet (no relay ran)
        running = asyncio.create_task(relay.run(stop))
        try:
            async with asyncio.timeout(30):
                while await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") != 2 \
                        or not await parked_rows(pool):
                    await asyncio.sleep(0.05)
            parked = await figures()
            await skip_parked(pool, first, reason="test: a typo in the topic", by="ops.test")
            async with asyncio.timeout(30):
                while await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
                    await asyncio.sleep(0.05)
            skipped = await figures()
        finally:
            stop.set()
            await running
    finally:
        await pool.close()
    assert "flows_outbox_unpublished 4.0" in waiting and "flows_outbox_parked 0.0" in waiting
    assert "flows_outbox_unpublished 2.0" in parked and "flows_outbox_parked 1.0" in parked
    assert "flows_outbox_unpublished 0.0" in skipped and "flows_outbox_parked 0.0" in skipped
    assert _figure(waiting, "flows_outbox_oldest_pending_seconds") >= 3600  # before the relay ran: all of them wait
    assert _figure(parked, "flows_outbox_oldest_unpublished_seconds") >= 3600
    assert _figure(parked, "flows_outbox_oldest_pending_seconds") == 0
    assert _figure(skipped, "flows_outbox_oldest_pending_seconds") == 0
