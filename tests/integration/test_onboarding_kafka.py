"""Kafka intake on the real broker: a portal publishes a request and its documents; the service
assesses them, takes the request in charge, schedules the switch; duplicates and its own outbox
echoes change nothing; an outside "complete" claim that our state contradicts is dead-lettered."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from contracts.envelope import Envelope
from contracts.onboarding import DocumentReceived, Payload, RequestComplete, RequestKind, RequestOpened
from services.onboarding.app import SUBSCRIPTIONS, wire
from services.onboarding.domain import local_date
from services.onboarding.projection import DashboardProjection, dashboard
from services.onboarding.requirements import load_requirements
from services.onboarding.switch import SwitchCalendar, load_patron_days
from services.runtime.host import runtime, serve
from services.runtime.kafkaadmin import admin_client
from services.runtime.kafkaread import assign, observer
from tests.integration.outage_loader import start_at_the_end

pytestmark = pytest.mark.integration
PORTAL = "/portal/sinfonia-test"
NAPOLI = "063049"


def first_open_day(start: date) -> date:
    calendar = SwitchCalendar(load_patron_days())
    while calendar.closed_because(start, NAPOLI):
        start += timedelta(days=1)
    return start


async def wait_for(predicate, timeout: float = 200.0):  # type: ignore[no-untyped-def]
    """Polls the read model (no event to await across processes); generous: subscribers join slowly."""
    async with asyncio.timeout(timeout):
        while not (result := await predicate()):
            await asyncio.sleep(0.2)
        return result


async def test_a_portal_request_is_taken_in_charge_and_its_switch_scheduled(settings, fresh_db, tmp_path):
    cfg = settings.model_copy(update={"database_url": fresh_db, "files_dir": tmp_path / "files"})
    rid, unknown = f"ONB-PORTAL-{uuid.uuid4().hex[:6]}", f"ONB-NOPE-{uuid.uuid4().hex[:6]}"
    switch_day = first_open_day(datetime.now(UTC).date() + timedelta(weeks=5))
    producer = AIOKafkaProducer(bootstrap_servers=cfg.kafka_bootstrap, enable_idempotence=True)
    stop = asyncio.Event()
    async with runtime(cfg, name="onboarding", projections=[DashboardProjection()]) as rt:
        # Groups of this run alone, started at the end of their topics: neither the session's history nor an
        # aborted run's leftovers (a fixed group's committed offsets) come through this consumer.
        group = f"onboarding-it-{uuid.uuid4().hex[:8]}"
        for topic_name in SUBSCRIPTIONS:
            await start_at_the_end(cfg.kafka_bootstrap, f"{group}.{topic_name.removeprefix('onboarding.')}",
                                   [topic_name])
        wire(rt, group=group)
        service = asyncio.create_task(serve(rt, stop=stop))
        await producer.start()
        try:
            async def publish(topic: str, payload: Payload, ce_id: str | None = None) -> None:
                env = Envelope.new(topic, PORTAL)
                headers = Envelope(id=ce_id or env.id, type=topic, source=PORTAL).to_headers()
                await producer.send_and_wait(topic, payload.model_dump_json().encode(), key=payload.request_id.encode(),
                                             headers=headers)

            now = datetime.now(UTC)
            await publish("onboarding.request-opened", RequestOpened(
                request_id=rid, kind=RequestKind.SOFTWARE_HOUSE_CHANGE, structure_name="Centro Diagnostico Vomero",
                structure_sts11="150321", municipality_istat=NAPOLI, requirements_version=load_requirements().version,
                opened_at=now, opened_by="portal"))
            await wait_for(lambda: _row(rt.pool, rid))  # topics are not ordered with each other

            docs = [("richiesta.pdf", "formal-request-software-house-change",
                     {"protocol": "2026/301", "letterhead": "yes", "software_house": "Medisoft",
                      "credentials": "basic"}),
                    ("form-b2.pdf", "endpoint-form-b2", {"filled": "yes", "annex": "B2"}),
                    ("switch.pdf", "switch-date-request", {"switch_date": switch_day.isoformat(),
                                                           "switch_window": "10:00-12:00"})]
            for n, (filename, doc_type, meta) in enumerate(docs):
                sha, size = rt.files.put_bytes(f"%PDF {filename}".encode())
                received = DocumentReceived(request_id=rid, document_id=f"mail-{n}", document_type=doc_type,
                                            filename=filename, sha256=sha, size=size,
                                            stored_at=str(rt.files.path(sha).relative_to(rt.files.root)),
                                            metadata=meta, received_at=now, received_by="mailbox")
                ce_id = str(uuid.uuid4())
                await publish("onboarding.document-received", received, ce_id)
                if n == 0:
                    await publish("onboarding.document-received", received, ce_id)  # redelivered

            await publish("onboarding.request-complete",
                          RequestComplete(request_id=unknown, completed_on=now.date()))

            row = await wait_for(lambda: _row(rt.pool, rid, "switch-scheduled"))
            after = datetime.now(UTC)  # the service's clock read the day between `now` and this
            await _echoes_consumed(rt.pool, cfg.kafka_bootstrap, group)  # they come back through our consumers
            events = await rt.store.read_stream(f"onboarding-{rid}")
        finally:
            stop.set()
            await service
            await producer.stop()

    assert row["switch_date"] == switch_day and row["switch_window"] == "10:00-12:00"
    # the day in Italy (23:xx UTC in winter is already tomorrow), as the service's clock read it: between `now` and
    # `after` (one day, unless Rome's midnight passed in between)
    assert local_date(now) <= row["taken_on"] <= local_date(after)
    types = [e.type.removeprefix("onboarding.") for e in events]
    assert types.count("document-received") == 3 and types.count("request-opened") == 1
    assert types[-3:] == ["request-complete", "taken-in-charge", "switch-scheduled"] and len(types) == 14
    reasons = await _dead_letter_reasons(cfg.kafka_bootstrap, "onboarding.request-complete.dlq", unknown)
    assert any(f"richiesta {unknown}: non trovata" in r for r in reasons)


async def _echoes_consumed(pool, bootstrap: str, group: str) -> None:  # type: ignore[no-untyped-def]
    """Our outbox published every event recorded so far, and each of the service's groups has handled its
    topic up to the end offsets read then (commits follow the handling: AckPolicy.NACK_ON_ERROR): the echoes
    of our own events went through the consumers."""
    await wait_for(lambda: _none_unpublished(pool))
    async with observer(bootstrap) as consumer:
        parts = await assign(consumer, list(SUBSCRIPTIONS))
        ends = await consumer.end_offsets(parts)
    assert {tp.topic for tp in parts} == set(SUBSCRIPTIONS), parts
    admin = admin_client(bootstrap)
    await admin.start()
    try:
        async def behind() -> dict[str, int]:
            left: dict[str, int] = {}
            for topic in SUBSCRIPTIONS:
                committed = await admin.list_consumer_group_offsets(f"{group}.{topic.removeprefix('onboarding.')}")
                for tp in (tp for tp in parts if tp.topic == topic):
                    done = committed[tp].offset if tp in committed else -1
                    if done < ends[tp]:
                        left[f"{tp.topic}[{tp.partition}]"] = ends[tp] - max(done, 0)
            return left

        async def caught_up() -> bool:
            return not await behind()

        try:
            await wait_for(caught_up, timeout=120)
        except TimeoutError:
            raise AssertionError(f"the service's groups never handled their topics to the end: {await behind()}"
                                 ) from None
    finally:
        await admin.close()


async def _none_unpublished(pool) -> bool:  # type: ignore[no-untyped-def]
    return not await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")


async def _row(pool, rid: str, status: str | None = None):  # type: ignore[no-untyped-def]
    rows = [r for r in await dashboard(pool) if r["request_id"] == rid]
    return rows[0] if rows and (status is None or rows[0]["status"] == status) else None


async def _dead_letter_reasons(bootstrap: str, topic: str, key: str, timeout: float = 30.0) -> list[str]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"probe-{uuid.uuid4().hex}")
    await consumer.start()
    found: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            while not found:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [dict((k, v.decode()) for k, v in r.headers)["dlq_reason"] for r in records
                              if r.key == key.encode()]
    finally:
        await consumer.stop()
    return found


def test_payloads_published_by_the_portal_are_plain_json():
    body = RequestComplete(request_id="ONB-1", completed_on=date(2026, 3, 2)).model_dump_json()
    assert json.loads(body) == {"schema_version": 1, "request_id": "ONB-1", "completed_on": "2026-03-02"}
