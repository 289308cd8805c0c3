"""An external regional system drives the platform from the published documents alone.

What it uses: the JSON Schemas of contracts/schemas/ (every message is validated against them), the
published catalogue and structure list (contracts/data/), the Flusso C positions of
shared/spec/flusso-c.md, and the FileRef and feedback descriptions in the schemas (where a file's
bytes are, what a feedback line says). It builds its own records (codici fiscali with the public
python-codicefiscale package), writes the CloudEvents headers itself, publishes with a bare aiokafka
producer and learns the outcome by consuming the platform's topics. Nothing of services/ is
imported: a CUP integrator has none of it.

It learns when the loader has stored what it published from `sources.stored` (the intake watermark: every
message of a topic partition up to an offset is in), by the partitions and offsets its own producer got back for
its records, and only then asks for the load. The harness then checks, once, that the rows are indeed in the
database: the watermark's promise.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from codicefiscale import codicefiscale

from contracts import data_file

pytestmark = pytest.mark.e2e
CONTRACTS = data_file()
SCHEMAS = CONTRACTS / "schemas"
TICKET_CAP = Decimal("36.15")  # national ticket ceiling per prescription
FIXED_FEE = Decimal("5.00")  # a regional fixed fee per prescription: the ticket may exceed the services by it


def _schema(topic: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{topic}.json").read_text())


def _published_csv(relative: str) -> list[dict[str, str]]:
    return list(csv.DictReader((CONTRACTS / "data" / relative).read_text().splitlines(), delimiter=";"))


class ExternalSystem:
    """What a CUP integrator would write after reading asyncapi.json: nothing from our code."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.validators = {t: jsonschema.Draft202012Validator(_schema(t)) for t in
                           ("sources.delivered-service", "flows.load-requested", "flows.format-requested",
                            "flows.load-running", "flows.load-checked", "flows.load-failed", "flows.formatted",
                            "flows.format-failed", "sources.stored")}
        self.sends: list[tuple[str, asyncio.Future[Any]]] = []  # (topic, the producer's answer) of each record

    async def publish(self, topic: str, body: dict[str, Any], key: str) -> None:
        self.validators[topic].validate(body)
        headers = [("ce_specversion", b"1.0"), ("ce_id", str(uuid.uuid4()).encode()),
                   ("ce_source", b"/cup/campania"), ("ce_type", topic.encode()),
                   ("ce_time", datetime.now(UTC).isoformat().encode()), ("ce_subject", key.encode()),
                   ("content-type", b"application/json")]
        self.sends.append((topic, await self.producer.send(topic, json.dumps(body).encode(), key=key.encode(),
                                                           headers=headers)))

    async def wait_stored(self, topic: str, timeout: float = 180) -> None:
        """Until `sources.stored` says every record we published on `topic` is in: a watermark per partition at
        or past the offset our producer got back for the last of them."""
        waiting: dict[int, int] = {}
        for sent_on, answer in self.sends:
            if sent_on == topic:
                where = await answer
                waiting[where.partition] = max(waiting.get(where.partition, -1), where.offset)
        if not waiting:
            return
        async with asyncio.timeout(timeout), aclosing(self._bodies("sources.stored")) as bodies:
            async for body in bodies:
                self.validators["sources.stored"].validate(body)
                if body["topic"] == topic and body["offset"] >= waiting.get(body["partition"], 1 << 62):
                    del waiting[body["partition"]]
                    if not waiting:
                        return

    async def wait_for(self, topic: str, match: Any, timeout: float = 180) -> dict[str, Any]:
        async with asyncio.timeout(timeout), aclosing(self._bodies(topic)) as bodies:
            async for body in bodies:
                if match(body):
                    self.validators[topic].validate(body)  # what we read is what was published
                    return body
        raise AssertionError(f"{topic}: the read ended")  # it never does: the timeout ends it

    async def _bodies(self, topic: str) -> AsyncGenerator[dict[str, Any], None]:
        """Every record's body on `topic` from its beginning (a group of its own), as long as it is read."""
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                                    group_id=f"external-{uuid.uuid4().hex}")
        await consumer.start()
        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        yield json.loads(record.value)
        finally:
            await consumer.stop()


@dataclass(frozen=True)
class Patient:
    surname: str
    name: str
    sex: Literal["M", "F"]
    birth: date
    birthplace: str

    @property
    def cf(self) -> str:
        return codicefiscale.encode(self.surname, self.name, self.sex, self.birth.isoformat(), self.birthplace)


PATIENTS = [Patient(s, n, "F" if x == "F" else "M", date(1940 + 3 * i, 1 + i % 12, 1 + (7 * i) % 28), place)
            for i, (s, n, x, place) in enumerate([
                ("ESPOSITO", "GENNARO", "M", "Napoli"), ("RUSSO", "ANNA", "F", "Avellino"),
                ("DE LUCA", "CIRO", "M", "Salerno"), ("ROMANO", "TERESA", "F", "Caserta"),
                ("COPPOLA", "SALVATORE", "M", "Benevento"), ("IOVINE", "ROSA", "F", "Napoli"),
                ("CAPASSO", "LUIGI", "M", "Ariano Irpino"), ("AMATO", "LUCIA", "F", "Pozzuoli"),
                ("D'AMBROSIO", "PASQUALE", "M", "Nola"), ("SORRENTINO", "MARIA", "F", "Aversa")])]


class CupExtract:
    """One month of delivered services of one entity, as the CUP would extract them."""

    def __init__(self, ente: str, month: str, prescriptions: int) -> None:
        self.ente, self.month = ente, month
        self.start = date.fromisoformat(f"{month}-01")
        self.end = (self.start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        catalogue = [r for r in _published_csv("catalogue/2020.csv") if r["coding"] == "N"]
        self.codes = {r["code"]: Decimal(r["tariff"]) for r in catalogue if Decimal(r["tariff"]) > 0}
        self.structures = [r for r in _published_csv("structures.csv") if r["ente"] == ente]
        self.foreign_structure = next(r for r in _published_csv("structures.csv") if r["ente"] != ente)
        self.services: list[dict[str, Any]] = []
        self.expected_errors: set[tuple[str, str]] = set()  # (record_key, code) the feedback must name
        codes = sorted(self.codes)
        for p in range(prescriptions):
            rows = [self._service(p, r, PATIENTS[p % len(PATIENTS)], codes[(p * 7 + r) % len(codes)])
                    for r in range(1, 2 + p % 4)]
            self._ticket(rows, exempt=p % 3 == 0, fixed_fee=p % 5 == 1)
            self.services.extend(rows)

    @property
    def prefix(self) -> str:
        return f"EXT-{self.ente}-{self.month}-"

    def _service(self, p: int, r: int, patient: Patient, code: str) -> dict[str, Any]:
        structure = self.structures[p % len(self.structures)]
        delivered = self.start + timedelta(days=2 + p % 20)
        return {
            "source_id": f"{self.prefix}{p:05d}-{r}", "ente": self.ente, "region": "150",
            "structure_sts11": structure["sts11"], "structure_type": structure["structure_type"],
            "patient_cf": patient.cf, "patient_surname": patient.surname, "patient_name": patient.name,
            "patient_sex": patient.sex, "patient_birth_date": patient.birth.isoformat(),
            "patient_residence_istat": "064008", "patient_residence_asl": "201",
            "prescription_id": f"EXT{self.ente}{self.month.replace('-', '')}{p:06d}",
            "prescription_number": f"150EX{self.ente}{p:08d}", "prescription_date": self.start.isoformat(),
            "booking_date": (self.start + timedelta(days=1)).isoformat(),
            "first_offered_date": (self.start + timedelta(days=1)).isoformat(),
            "priority": "D", "delivery_type": "S", "regime": "SSN", "pacc": False, "access_type": "1",
            "catalogue_coding": "N", "catalogue_code": code, "quantity": 1 + (p + r) % 2,
            "delivery_date": delivered.isoformat(), "tariff": str(self.codes[code]), "ticket": "0.00",
            "exemption_code": None, "discipline": "008",
        }

    @staticmethod
    def _ticket(rows: list[dict[str, Any]], exempt: bool, fixed_fee: bool) -> None:
        """The ticket is paid once, on the first row; exempt patients pay none and carry a code.
        With the fixed fee the ticket exceeds the services' value: row 99's net total is then 0."""
        if exempt:
            for row in rows:
                row["exemption_code"] = "E01"
            return
        gross = sum((row["quantity"] * Decimal(row["tariff"]) for row in rows), Decimal(0))
        rows[0]["ticket"] = str(gross + FIXED_FEE if fixed_fee else min(gross, TICKET_CAP))

    def plant(self) -> None:
        """Five prescriptions of one service, each with one known problem for the load checks."""
        base = len(self.services) + 1000
        code = sorted(self.codes)[0]

        def one(n: int, patient: Patient, key_row: str, problem: str, **changes: Any) -> None:
            row = self._service(base + n, 1, patient, code)
            row["exemption_code"] = "E01"
            row.update(changes)
            self.services.append(row)
            self.expected_errors.add((f"{row['source_id']}@{row['prescription_id']}/{key_row}", problem))

        loner = [Patient("GRIMALDI", f"NOME{c}", "M", date(1970, 5, 1 + i), "Napoli") for i, c in enumerate("ABCDE")]
        right = loner[0].cf
        wrong_check = chr((ord(right[15]) - 65 + 1) % 26 + 65)
        one(0, loner[0], "01", "CF_CHECK_CHAR", patient_cf=right[:15] + wrong_check)
        one(1, loner[1], "01", "CF_SEX_MISMATCH", patient_sex="F")
        unknown = "99.99.9"
        assert unknown not in self.codes
        one(2, loner[2], "01", "UNKNOWN_SERVICE_CODE", catalogue_code=unknown)
        one(3, loner[3], "01", "STRUCTURE_NOT_IN_ENTE", structure_sts11=self.foreign_structure["sts11"])
        # a ticket above the value of the services plus the fixed fee: a problem of the prescription (row 99)
        one(4, loner[4], "99", "AMOUNT_ARITHMETIC", exemption_code=None,
            ticket=str(Decimal(self._service(0, 1, loner[4], code)["tariff"]) * 2 + Decimal("50.00")))


async def _publish(ext: ExternalSystem, extract: CupExtract) -> None:
    for body in extract.services:
        await ext.publish("sources.delivered-service", body, body["source_id"])
    await ext.producer.flush()


async def _load(ext: ExternalSystem, platform: Any, extract: CupExtract) -> dict[str, Any]:
    await ext.wait_stored("sources.delivered-service")
    pool = await platform.pool()  # the harness's look, once, see the module docstring
    try:
        stored = await pool.fetchval("SELECT count(*) FROM source_service WHERE source_id LIKE $1",
                                     extract.prefix + "%")
    finally:
        await pool.close()
    assert stored == len(extract.services), f"sources.stored said all in, the table holds {stored}"
    request_id = str(uuid.uuid4())
    await ext.publish("flows.load-requested", {
        "request_id": request_id, "flow_type": "FLUSSO_C", "version": "2020", "ente": extract.ente,
        "period": {"start": extract.start.isoformat(), "end": extract.end.isoformat()},
        "requested_by": "cup-integration"}, request_id)
    await ext.producer.flush()
    running = await ext.wait_for("flows.load-running", lambda b: b["request_id"] == request_id)
    return await _outcome(ext, running["instance"], "flows.load-checked", "flows.load-failed")


async def _outcome(ext: ExternalSystem, instance: int, ok: str, failed: str) -> dict[str, Any]:
    """The first of the instance's success and failure events: {"outcome": "ok" | "failed", **body}."""
    tasks = {name: asyncio.create_task(ext.wait_for(topic, lambda b: b["instance"] == instance))
             for name, topic in (("ok", ok), ("failed", failed))}
    done, pending = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    winner = done.pop()
    return {"outcome": next(name for name, task in tasks.items() if task is winner), **winner.result()}


def _file_bytes(files_dir: Path, ref: dict[str, Any]) -> bytes:
    """Where the FileRef description says the bytes are, checked against their sha256."""
    sha = ref["sha256"]
    data = (files_dir / "sha256" / sha[:2] / sha[2:]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha and len(data) == ref["bytes"]
    return data


def _amount(text: str) -> Decimal:
    return Decimal(text.replace(",", "."))


async def test_an_external_system_loads_checks_and_formats_a_flusso_c(platform):
    extract = CupExtract("201", "2026-09", 150)
    ext = ExternalSystem(platform.settings.kafka_bootstrap)
    await ext.producer.start()
    try:
        await _publish(ext, extract)
        loaded = await _load(ext, platform, extract)
        assert loaded["outcome"] == "ok", loaded
        instance = loaded["instance"]
        await ext.publish("flows.format-requested", {"instance": instance, "requested_by": "cup-integration"},
                          str(instance))
        await ext.producer.flush()
        formatted = await _outcome(ext, instance, "flows.formatted", "flows.format-failed")
        assert formatted["outcome"] == "ok", formatted
    finally:
        await ext.producer.stop()

    files = {f["kind"]: f for f in formatted["files"]}
    assert {"C1", "C2"} <= set(files)
    c1 = _file_bytes(platform.settings.files_dir, files["C1"]).decode("ascii").split("\n")
    c2 = _file_bytes(platform.settings.files_dir, files["C2"]).decode("ascii").split("\n")
    assert c1.pop() == c2.pop() == ""  # every line ends with a newline, the last one too
    # positions (1-based in shared/spec/flusso-c.md): C1 row number 129-130, ID 131-150; C2 row number
    # 29-30, service code 40-46, quantity 47-49, ticket 52-58, total 59-66, ID 78-97
    assert all(len(line) == 150 for line in c1)
    assert all(len(line) == 113 for line in c2)
    published: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in extract.services:
        published[row["prescription_id"]].append(row)
    assert len(c1) == len(c2) == files["C1"]["records"] == files["C2"]["records"] == (
        len(extract.services) + len(published))
    # joinable: region + ASL + ID + row number, in the same order
    assert [(a[0:6], a[130:150], a[128:130]) for a in c1] == [(b[0:6], b[77:97], b[28:30]) for b in c2]
    in_file: dict[str, list[str]] = defaultdict(list)
    floored = 0
    for line in c2:
        in_file[line[77:97].rstrip()].append(line)
    assert set(in_file) == set(published)
    for pid, rows in in_file.items():
        numbers = [r[28:30] for r in rows]
        assert numbers == [f"{i:02d}" for i in range(1, len(rows))] + ["99"], pid
        detail, closing = rows[:-1], rows[-1]
        sent = published[pid]
        assert sorted((r[39:46].rstrip(), int(r[46:49])) for r in detail) == sorted(
            (s["catalogue_code"], s["quantity"]) for s in sent)
        assert all(_amount(r[51:58]) == 0 for r in detail), "ticket is zero on rows 01..98"
        gross = sum((_amount(r[58:66]) for r in detail), Decimal(0))
        assert gross == sum((s["quantity"] * Decimal(s["tariff"]) for s in sent), Decimal(0))
        ticket = _amount(closing[51:58])
        assert ticket == sum((Decimal(s["ticket"]) for s in sent), Decimal(0))
        assert _amount(closing[58:66]) == max(gross - ticket, Decimal(0))
        floored += ticket > gross
    assert floored > 0, "no prescription exercised the floor of the net total"


async def test_a_load_with_planted_bad_records_fails_naming_exactly_those_records(platform):
    # A month of its own: the load takes every service of ente 202 in the month, and test_ts_730 publishes
    # generated source data of 202 for 2026-08 (that test run first, those records would join this load).
    extract = CupExtract("202", "2026-03", 60)
    extract.plant()
    ext = ExternalSystem(platform.settings.kafka_bootstrap)
    await ext.producer.start()
    try:
        await _publish(ext, extract)
        loaded = await _load(ext, platform, extract)
    finally:
        await ext.producer.stop()
    assert loaded["outcome"] == "failed", loaded
    assert loaded["errors"] == len(extract.expected_errors) == 5
    feedback = _file_bytes(platform.settings.files_dir, loaded["feedback"]).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(feedback), delimiter=";"))
    assert {(r["record_key"], r["code"]) for r in rows if r["severity"] == "error"} == extract.expected_errors
