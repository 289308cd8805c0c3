"""An external regional system drives the platform from the published documents alone.

It builds its messages as plain JSON, checks them against contracts/schemas/*.json, writes the
CloudEvents headers itself and publishes with a bare aiokafka producer; it learns the outcome by
consuming the platform's topics. Then it reads the C1/C2 files and checks them line by line.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.loader.generator import generate
from services.runtime.filestore import FileStore

pytestmark = pytest.mark.e2e
SCHEMAS = Path(__file__).resolve().parents[2] / "contracts" / "schemas"


def _schema(topic: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{topic}.json").read_text())


class ExternalSystem:
    """What a CUP integrator would write after reading asyncapi.json: nothing from our code."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.validators = {t: jsonschema.Draft202012Validator(_schema(t)) for t in
                           ("sources.delivered-service", "sources.payment-document", "sources.intramoenia-booking",
                            "flows.load-requested", "flows.format-requested")}

    async def publish(self, topic: str, body: dict[str, Any], key: str) -> None:
        self.validators[topic].validate(body)
        headers = [("ce_specversion", b"1.0"), ("ce_id", str(uuid.uuid4()).encode()),
                   ("ce_source", b"/cup/campania"), ("ce_type", topic.encode()),
                   ("ce_time", datetime.now(UTC).isoformat().encode()), ("ce_subject", key.encode()),
                   ("content-type", b"application/json")]
        await self.producer.send(topic, json.dumps(body).encode(), key=key.encode(), headers=headers)

    async def wait_for(self, topic: str, match: Any, timeout: float = 180) -> dict[str, Any]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                                    group_id=f"external-{uuid.uuid4().hex}")
        await consumer.start()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        for record in records:
                            body = json.loads(record.value)
                            if match(body):
                                return body
        finally:
            await consumer.stop()


def _services_of(generation: Any) -> list[dict[str, Any]]:
    return [r.model_dump(mode="json") for r in generation if type(r).__name__ == "DeliveredService"]


async def _publish_month(ext: ExternalSystem, ente: str, month: str, services: int, bad: int = 0) -> Any:
    generation = generate(ente, month, services, seed=7, bad=bad)
    topics = {"DeliveredService": "sources.delivered-service", "PaymentDocument": "sources.payment-document",
              "IntramoeniaBooking": "sources.intramoenia-booking"}
    for record in generation:
        body = record.model_dump(mode="json")
        await ext.publish(topics[type(record).__name__], body, body["source_id"])
    await ext.producer.flush()
    return generation


async def _load(ext: ExternalSystem, platform: Any, flow_type: str, ente: str, start: str, end: str,
                expected_services: int) -> dict[str, Any]:
    pool = await platform.pool()
    try:
        async with asyncio.timeout(180):
            while await pool.fetchval("SELECT count(*) FROM source_service WHERE ente = $1", ente) < expected_services:
                await asyncio.sleep(0.3)
    finally:
        await pool.close()
    request_id = str(uuid.uuid4())
    await ext.publish("flows.load-requested", {
        "request_id": request_id, "flow_type": flow_type, "version": "2020", "ente": ente,
        "period": {"start": start, "end": end}, "requested_by": "cup-integration"}, request_id)
    await ext.producer.flush()
    running = await ext.wait_for("flows.load-running", lambda b: b["request_id"] == request_id)
    instance = running["instance"]
    outcome = await _first_of(ext, instance)
    return {"instance": instance, **outcome}


async def _first_of(ext: ExternalSystem, instance: int) -> dict[str, Any]:
    checked = asyncio.create_task(ext.wait_for("flows.load-checked", lambda b: b["instance"] == instance))
    failed = asyncio.create_task(ext.wait_for("flows.load-failed", lambda b: b["instance"] == instance))
    done, pending = await asyncio.wait({checked, failed}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    winner = done.pop()
    return {"outcome": "checked" if winner is checked else "failed", **winner.result()}


def _amount(text: str) -> Decimal:
    return Decimal(text.replace(",", "."))


async def test_an_external_system_loads_checks_and_formats_a_flusso_c(platform):
    ext = ExternalSystem(platform.settings.kafka_bootstrap)
    await ext.producer.start()
    try:
        generation = await _publish_month(ext, "201", "2026-09", 600)
        services = _services_of(generate("201", "2026-09", 600, seed=7))
        loaded = await _load(ext, platform, "FLUSSO_C", "201", "2026-09-01", "2026-09-30", len(services))
        assert loaded["outcome"] == "checked", loaded
        instance = loaded["instance"]
        await ext.publish("flows.format-requested", {"instance": instance, "requested_by": "cup-integration"},
                          str(instance))
        await ext.producer.flush()
        formatted = await ext.wait_for("flows.formatted", lambda b: b["instance"] == instance)
    finally:
        await ext.producer.stop()
    del generation

    files = {f["kind"]: f for f in formatted["files"]}
    assert {"C1", "C2"} <= set(files)
    # the files as the platform publishes them: content-addressed (an S3 bucket in production)
    store = FileStore(platform.settings.files_dir)

    def read(ref: dict[str, Any]) -> list[str]:
        return store.path(ref["sha256"]).read_bytes().decode("ascii").split("\n")[:-1]

    c1, c2 = read(files["C1"]), read(files["C2"])
    assert len(c1) == len(c2) == files["C1"]["records"] == files["C2"]["records"] > 0
    assert all(len(line) == 150 for line in c1)
    assert all(len(line) == 113 for line in c2)
    # joinable: region + ASL + ID + row number, in the same order
    assert [(a[0:6], a[130:150], a[128:130]) for a in c1] == [(b[0:6], b[77:97], b[28:30]) for b in c2]
    prescriptions: dict[str, list[str]] = defaultdict(list)
    for line in c2:
        prescriptions[line[77:97]].append(line)
    for rows in prescriptions.values():
        numbers = [r[28:30] for r in rows]
        assert numbers[-1] == "99" and numbers.count("99") == 1 and len(rows) >= 2
        assert numbers[:-1] == [f"{i:02d}" for i in range(1, len(rows))]
        detail, closing = rows[:-1], rows[-1]
        assert all(_amount(r[51:58]) == 0 for r in detail), "ticket is zero on rows 01..98"
        gross = sum((_amount(r[58:66]) for r in detail), Decimal(0))
        ticket = _amount(closing[51:58])
        assert _amount(closing[58:66]) == max(gross - ticket, Decimal(0))


async def test_a_load_with_planted_bad_records_fails_naming_exactly_those_records(platform):
    ext = ExternalSystem(platform.settings.kafka_bootstrap)
    await ext.producer.start()
    try:
        generation = await _publish_month(ext, "202", "2026-08", 400, bad=4)
        expected = {p.record_key for p in generation.planted}
        services = _services_of(generate("202", "2026-08", 400, seed=7, bad=4))
        loaded = await _load(ext, platform, "FLUSSO_C", "202", "2026-08-01", "2026-08-31", len(services))
    finally:
        await ext.producer.stop()
    assert loaded["outcome"] == "failed", loaded
    assert loaded["errors"] >= len(expected)
    path = FileStore(platform.settings.files_dir).path(loaded["feedback"]["sha256"])
    rows = list(csv.DictReader(io.StringIO(path.read_text()), delimiter=";"))
    named = {r["record_key"] for r in rows if r["severity"] == "error"}
    assert named == expected
