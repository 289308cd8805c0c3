"""The instance lifecycle through the real services: scheduled loads, idempotent requests, refused
commands, deletion, and the read models agreeing with the log afterwards."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from contracts import flows
from contracts.sources import DeliveredService
from services.runtime.commands import send_command
from services.runtime.projections import rebuild_and_diff
from services.runtime.read_models import FLOW_PROJECTIONS

pytestmark = pytest.mark.e2e
PERIOD = flows.Period.model_validate({"start": "2026-06-01", "end": "2026-06-30"})


async def _state_of(pool: Any, instance: int, wanted: set[str], timeout: float = 60) -> str:
    async with asyncio.timeout(timeout):
        while True:
            state = await pool.fetchval("SELECT state FROM instance_list WHERE instance = $1", instance)
            if state in wanted:
                return str(state)
            await asyncio.sleep(0.1)


async def _instance_of(pool: Any, request_id: uuid.UUID, timeout: float = 30) -> int:
    async with asyncio.timeout(timeout):
        while (instance := await pool.fetchval("SELECT instance FROM load_request WHERE request_id = $1",
                                               request_id)) is None:
            await asyncio.sleep(0.1)
    return int(instance)


def _request(scheduled_at: datetime | None = None) -> flows.LoadRequested:
    return flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_MEF, ente="204",
                               period=PERIOD, scheduled_at=scheduled_at, requested_by="op.bianchi")


async def test_a_scheduled_load_waits_for_its_time_then_runs(platform):
    pool = await platform.pool()
    try:
        # The loader must take the command before its time to schedule it (a later one runs at once, rightly): 2 s
        # is ample on a quiet machine (the command is taken in tens of ms), and a command taken at or after its
        # time (the loader's first event recorded then) says nothing about the wait: it is asked again with twice
        # the room, as often as a loaded machine needs. A loader that runs a load before its time records that
        # before it: failed at once, never asked again. What it did is read from the instance's history, not by
        # catching the Scheduled state between two polls (a moment long when the command is taken late).
        lead_s = 2.0
        while True:
            request = _request(datetime.now(UTC) + timedelta(seconds=lead_s))
            await send_command(platform.settings.kafka_bootstrap, "flows.load-requested", request,
                               key=str(request.request_id))
            instance = await _instance_of(pool, request.request_id)
            assert await _state_of(pool, instance, {"Checked", "Failed loading"}, timeout=lead_s + 60) == "Checked"
            history = await pool.fetch("SELECT type, recorded_at FROM events WHERE stream_id = $1 ORDER BY version",
                                       f"instance-{instance}")
            types = [e["type"] for e in history]
            if history[0]["recorded_at"] < request.scheduled_at or lead_s >= 80:
                break
            lead_s *= 2  # taken late: the wait was not tested
        assert types[:3] == ["flows.load-scheduled", "flows.load-running", "flows.load-checked"], types
        assert history[0]["recorded_at"] < request.scheduled_at  # scheduled before its time ...
        assert history[1]["recorded_at"] >= request.scheduled_at  # ... and run only once it came
    finally:
        await pool.close()


async def test_the_same_load_request_sent_twice_makes_one_instance(platform):
    pool = await platform.pool()
    try:
        request = _request()
        sent = [await send_command(platform.settings.kafka_bootstrap, "flows.load-requested", request,
                                   key=str(request.request_id))
                for _ in range(2)]  # two messages (two ce_ids), one request id
        instance = await _instance_of(pool, request.request_id)
        await _state_of(pool, instance, {"Checked", "Failed loading"})
        # Both messages handled: the loader records each ce_id in the transaction of its effects (none, for the
        # second); only then can the count below say that the second one made no instance.
        async with asyncio.timeout(60):
            while await pool.fetchval("SELECT count(*) FROM processed_message WHERE consumer = 'loader' "
                                      "AND message_id = ANY($1::text[])", sent) < 2:
                await asyncio.sleep(0.1)
        created = await pool.fetchval(
            "SELECT count(*) FROM events WHERE type = 'flows.load-running' AND data->>'request_id' = $1",
            str(request.request_id))
        assert created == 1
    finally:
        await pool.close()


async def test_formatting_a_failed_load_is_refused_into_the_dead_letters_with_the_reason(platform):
    pool = await platform.pool()
    try:
        # one service whose codice fiscale has a wrong check character: the load fails on it
        bad = DeliveredService(
            source_id=f"CUP-205-BADCF-{uuid.uuid4().hex[:8]}", ente="205", structure_sts11="005101",
            patient_cf="RSSMRA80A01F839X", patient_surname="ROSSI", patient_name="MARIO", patient_sex="M",
            patient_birth_date=date(1980, 1, 1), patient_residence_istat="063049",
            prescription_id=f"RX{uuid.uuid4().hex[:10]}", prescription_number="1500A0000000001",
            exemption_code="E01", catalogue_code="89.7", quantity=1, delivery_date=date(2026, 5, 12),
            tariff=Decimal("20.66"))
        await send_command(platform.settings.kafka_bootstrap, "sources.delivered-service", bad, key=bad.source_id)
        async with asyncio.timeout(30):
            while not await pool.fetchval("SELECT 1 FROM source_service WHERE source_id = $1", bad.source_id):
                await asyncio.sleep(0.1)
        request = flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, ente="205",
                                      period=flows.Period.model_validate({"start": "2026-05-01", "end": "2026-05-31"}),
                                      requested_by="op.bianchi")
        await send_command(platform.settings.kafka_bootstrap, "flows.load-requested", request,
                           key=str(request.request_id))
        instance = await _instance_of(pool, request.request_id)
        state = await _state_of(pool, instance, {"Checked", "Failed loading"})
        assert state == "Failed loading"
        # the failed load says what it checked, as a Checked one does: its errors are counted against its records
        row = await pool.fetchrow("SELECT l.counts, s.rows FROM instance_list l "
                                  "JOIN source_snapshot s ON s.snapshot_id = l.source_instance WHERE l.instance = $1",
                                  instance)
        assert row is not None and row["counts"]["services"] == row["rows"] >= 1, row
        await send_command(platform.settings.kafka_bootstrap, "flows.format-requested",
                           flows.FormatRequested(instance=instance, requested_by="op"), key=str(instance))
        consumer = AIOKafkaConsumer("flows.format-requested.dlq", bootstrap_servers=platform.settings.kafka_bootstrap,
                                    auto_offset_reset="earliest", group_id=f"probe-{uuid.uuid4().hex}")
        await consumer.start()
        try:
            reason = None
            async with asyncio.timeout(60):
                while reason is None:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        for r in records:
                            if json.loads(r.value)["instance"] == instance:
                                reason = dict((k, v.decode()) for k, v in r.headers)["dlq_reason"]
        finally:
            await consumer.stop()
        assert f"instance {instance} cannot be formatted" in reason
        assert state in reason  # names the state it is in
        assert await pool.fetchval("SELECT state FROM instance_list WHERE instance = $1", instance) == state
    finally:
        await pool.close()


async def _format_requests_handled(pool: Any, ids: list[str], timeout: float = 60) -> None:
    """Until the formatter has handled each command of `ids`: it records one in the transaction of its effects, and a
    refused one (dead-lettered) rolls that back, so a recorded command was acknowledged, not refused."""
    async with asyncio.timeout(timeout):
        while await pool.fetchval("SELECT count(*) FROM processed_message WHERE consumer = 'formatter' "
                                  "AND message_id = ANY($1::text[])", ids) < len(ids):
            await asyncio.sleep(0.1)


async def test_a_format_asked_again_before_the_first_is_taken_runs_once_and_one_asked_after_its_outcome_runs(
        platform):
    """An operator whose `flows format` timed out (the formatter was down) asked again: both requests name the
    version of the history they read. The first formats; the second, taken after it, repeats it: acknowledged,
    nothing recorded, not dead-lettered (it was, as "cannot be formatted: Formatting in progress"). A request made
    after reading the outcome is not a repeat: this month has no source data, so the format fails (no records),
    and asked again then, it runs again."""
    bootstrap = platform.settings.kafka_bootstrap
    pool = await platform.pool()
    try:
        request = flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_MEF, ente="204",
                                      period=flows.Period.model_validate({"start": "2025-11-01",
                                                                          "end": "2025-11-30"}),
                                      requested_by="op.bianchi")
        await send_command(bootstrap, "flows.load-requested", request, key=str(request.request_id))
        instance = await _instance_of(pool, request.request_id)
        assert await _state_of(pool, instance, {"Checked", "Failed loading"}) == "Checked"
        stream = f"instance-{instance}"
        seen = await pool.fetchval("SELECT max(version) FROM events WHERE stream_id = $1", stream)
        asked = [await send_command(bootstrap, "flows.format-requested",
                                    flows.FormatRequested(instance=instance, requested_by="op.bianchi",
                                                          seen_version=seen), key=str(instance))
                 for _ in range(2)]
        await _format_requests_handled(pool, asked)
        assert await _state_of(pool, instance, {"Formatted", "Format failed"}) == "Format failed"
        after = await pool.fetchval("SELECT max(version) FROM events WHERE stream_id = $1", stream)
        assert [r["type"] for r in await pool.fetch(
            "SELECT type FROM events WHERE stream_id = $1 AND version > $2 ORDER BY version", stream, seen)] == [
            "flows.format-requested", "flows.formatting-started", "flows.format-failed"]

        again = await send_command(bootstrap, "flows.format-requested",
                                   flows.FormatRequested(instance=instance, requested_by="op.bianchi",
                                                         seen_version=after), key=str(instance))
        await _format_requests_handled(pool, [again])
        async with asyncio.timeout(60):
            while (types := [r["type"] for r in await pool.fetch(
                    "SELECT type FROM events WHERE stream_id = $1 AND version > $2 ORDER BY version",
                    stream, after)])[-1:] != ["flows.format-failed"]:
                await asyncio.sleep(0.1)
        assert types == ["flows.format-requested", "flows.formatting-started", "flows.format-failed"], types
    finally:
        await pool.close()


async def test_after_all_this_the_read_models_rebuilt_from_the_log_equal_the_live_ones(platform):
    """Whatever the session did before, plus a load of its own: run alone, it used to find no event at all."""
    pool = await platform.pool()
    try:
        request = _request()
        await send_command(platform.settings.kafka_bootstrap, "flows.load-requested", request,
                           key=str(request.request_id))
        await _state_of(pool, await _instance_of(pool, request.request_id), {"Checked", "Failed loading"})
        report = await rebuild_and_diff(pool, FLOW_PROJECTIONS)
    finally:
        await pool.close()
    assert report.events_replayed > 0
    assert report.differences == []


async def test_an_invalid_source_record_gets_a_rejection_event_naming_the_field_and_the_next_is_stored(platform):
    from aiokafka import AIOKafkaProducer

    from contracts.envelope import Envelope

    good = DeliveredService(
        source_id=f"CUP-206-OK-{uuid.uuid4().hex[:8]}", ente="206", structure_sts11="006101",
        patient_cf="RSSMRA80A01F839W", patient_surname="ROSSI", patient_name="MARIO", patient_sex="M",
        patient_birth_date=date(1980, 1, 1), patient_residence_istat="063049", prescription_id="RX206",
        prescription_number="1500A0000000206", catalogue_code="89.7", quantity=1, delivery_date=date(2026, 5, 12),
        tariff=Decimal("20.66")).model_dump(mode="json")
    bad = {**good, "source_id": f"CUP-206-BAD-{uuid.uuid4().hex[:8]}", "quantity": 0}
    producer = AIOKafkaProducer(bootstrap_servers=platform.settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for body in (bad, good):
            headers = Envelope.new("sources.delivered-service", "/cup/campania").to_headers()
            await producer.send_and_wait("sources.delivered-service", json.dumps(body).encode(),
                                         key=body["source_id"].encode(), headers=headers)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer("sources.record-rejected", bootstrap_servers=platform.settings.kafka_bootstrap,
                                auto_offset_reset="earliest", group_id=f"probe-{uuid.uuid4().hex}")
    await consumer.start()
    rejection = None
    try:
        async with asyncio.timeout(60):
            while rejection is None:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for r in records:
                        body = json.loads(r.value)
                        if body["source_id"] == bad["source_id"]:
                            rejection = body
    finally:
        await consumer.stop()
    assert rejection["kind"] == "sources.delivered-service"
    assert "quantity" in rejection["errors"][0]["reason"]
    pool = await platform.pool()
    try:
        async with asyncio.timeout(30):
            while not await pool.fetchval("SELECT 1 FROM source_service WHERE source_id = $1", good["source_id"]):
                await asyncio.sleep(0.1)
        assert not await pool.fetchval("SELECT 1 FROM source_service WHERE source_id = $1", bad["source_id"])
    finally:
        await pool.close()
