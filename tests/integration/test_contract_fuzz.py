"""The PUBLISHED schemas of the source records say exactly what intake accepts.

Records are generated from contracts/schemas/sources.*.json alone (hypothesis-jsonschema), sent
through JSON text as a producer would, and given to intake's own validation and store on the real
PostgreSQL: every schema-valid record is stored (read back from its table). Then one field of a
valid record is mutated (a wrong type, a value past its length or range, a broken pattern, the
field dropped, an unknown field added): intake's verdict must equal the schema's, and a refused
record must be refused naming the mutated field. A smaller run goes the whole Kafka way: published
on a sources topic, consumed by the loader's batched intake, stored or rejected naming the field.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators

from contracts import schemagen
from contracts.envelope import Envelope
from contracts.topics import Topic, by_name
from services.loader.batch_intake import BatchIntake
from services.loader.intake import KINDS, store, validate_raw
from services.runtime.batch import BatchConsumer
from services.runtime.eventstore import EventStore
from tests.kafka_topics import create_topics

pytestmark = pytest.mark.integration

KIND_NAMES = sorted(KINDS)


def published(kind: str) -> dict[str, Any]:
    return json.loads((schemagen.SCHEMA_DIR / f"sources.{kind}.json").read_text())


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """`pattern` as JSON Schema defines it (ECMA-262), where `$` is the end of the text; Python's `$`
    would also match before a final newline and call "M\\n" valid for `^[A-Z]$`."""
    if validator.is_type(instance, "string"):
        anchored = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
        if not re.search(anchored, instance):
            yield ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})
SCHEMAS = {kind: published(kind) for kind in KIND_NAMES}
VALIDATORS = {kind: EcmaValidator(s, format_checker=FormatChecker()) for kind, s in SCHEMAS.items()}
RECORDS = {kind: from_schema(s) for kind, s in SCHEMAS.items()}

# values that break some field's schema: wrong JSON types, lengths and ranges just past the limits,
# broken patterns, numbers where strings are due and the reverse
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.builds(lambda ch, n: ch * n, st.sampled_from("A9é "), st.integers(min_value=3, max_value=130)),
    st.sampled_from(["", " ", "12.345", "-1.00", "1e3", "0", "0.00", "012.00", "10000000.00", "100000.00",
                     "12,50", "2026-02-30", "2026-1-01", "20260101", "2026-11-01T00:00:00", "abc", "true",
                     "1", "M\n", "x\x00y", "RSSMRA80A01F839w", "RSSMRA80A01F839", "2O1", "00012"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
DROP = object()


def paths(kind: str) -> list[tuple[str | int, ...]]:
    """Every field a mutation may touch: the top-level ones and those of the first payment item."""
    props = SCHEMAS[kind]["properties"]
    out: list[tuple[str | int, ...]] = [(name,) for name in props]
    if kind == "payment-document":
        item = SCHEMAS[kind]["$defs"]["SpendingItem"]["properties"]
        out += [("items", 0, name) for name in item]
    return [*out, ("unexpected_field",)]


@st.composite
def mutants(draw: st.DrawFn, kind: str) -> tuple[dict[str, Any], tuple[str | int, ...]]:
    record = json.loads(json.dumps(draw(RECORDS[kind])))
    path = draw(st.sampled_from(paths(kind)))
    value = draw(st.one_of(st.just(DROP), JUNK))
    target: Any = record
    for step in path[:-1]:
        target = target[step]
    if value is DROP:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return record, path


def roundtrip(record: dict[str, Any]) -> dict[str, Any]:
    """As a producer would send it and the consumer read it: JSON text, then back."""
    return dict(json.loads(json.dumps(record)))


@pytest.fixture
def db(fresh_db: str) -> Iterator[tuple[asyncio.AbstractEventLoop, asyncpg.Connection]]:
    # hypothesis drives plain functions: the connection lives on a loop of its own
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(fresh_db))
    try:
        yield loop, conn
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


async def _store_and_read_back(conn: asyncpg.Connection, kind: str, raw: dict[str, Any]) -> None:
    model, rejections = validate_raw(kind, raw)
    assert model is not None, f"schema-valid {kind} refused by intake: {[str(r) for r in rejections]}\n{raw}"
    tr = conn.transaction()
    await tr.start()
    try:
        await store(conn, kind, [model])
        row = await conn.fetchrow(f"SELECT * FROM {KINDS[kind].table} WHERE source_id = $1", raw["source_id"])
        assert row is not None
        for column in KINDS[kind].columns:
            expected = getattr(model, column)
            got = row[column]
            if column in KINDS[kind].json_columns:
                got = json.loads(got) if isinstance(got, str) else got
                expected = [item.model_dump(mode="json") for item in expected]
            assert got == expected, f"{kind} {column}: stored {got!r}, sent {expected!r}"
    finally:
        await tr.rollback()  # each example alone: the same source_id may come again


# no shrinking: a failure prints its whole record anyway, and shrinking these records takes minutes
FUZZ = fuzz_settings(max_examples=25, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_schema_valid_record_is_stored(kind: str, db: tuple[asyncio.AbstractEventLoop, Any]) -> None:
    loop, conn = db

    @FUZZ
    @given(record=RECORDS[kind])
    def check(record: dict[str, Any]) -> None:
        raw = roundtrip(record)
        assert not list(VALIDATORS[kind].iter_errors(raw))  # what the producer was promised
        loop.run_until_complete(_store_and_read_back(conn, kind, raw))

    check()


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_a_mutated_record_is_refused_exactly_when_the_schema_refuses_it_naming_the_field(kind: str) -> None:
    refused = {"n": 0}

    @fuzz_settings(FUZZ, max_examples=50)
    @given(case=mutants(kind))
    def check(case: tuple[dict[str, Any], tuple[str | int, ...]]) -> None:
        record, path = case
        raw = roundtrip(record)
        schema_ok = not list(VALIDATORS[kind].iter_errors(raw))
        model, rejections = validate_raw(kind, raw)
        assert (model is not None) == schema_ok, (
            f"schema says {'valid' if schema_ok else 'invalid'}, intake says "
            f"{[str(r) for r in rejections] or 'accepted'} for {path} in {raw}")
        if not schema_ok:
            refused["n"] += 1
            named = ".".join(str(p) for p in path)
            assert any(r.field == named or r.field.startswith(named + ".") for r in rejections), \
                f"{named} mutated, rejections name {[r.field for r in rejections]}"
            assert all(r.record for r in rejections)

    check()
    assert refused["n"] >= 20  # the mutations do break records: the test cannot pass on valid ones only


async def _wait_for(probe: Any, timeout: float = 30.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (found := await probe()):
            await asyncio.sleep(0.2)
    return found


async def test_generated_records_through_kafka_are_stored_or_rejected_naming_the_field(settings: Any,
                                                                                      pool: asyncpg.Pool,
                                                                                      tmp_path: Any) -> None:
    """The whole intake path for generated delivered services: Kafka -> validation -> store, or a
    sources.record-rejected event naming the field, plus the dead letter."""
    kind = "delivered-service"
    valid: list[dict[str, Any]] = []

    @fuzz_settings(FUZZ, max_examples=1)
    @given(st.lists(RECORDS[kind], min_size=20, max_size=20))
    def draw(records: list[dict[str, Any]]) -> None:
        valid[:] = records

    draw()
    for i, record in enumerate(valid):
        record["source_id"] = f"FUZZ-{uuid.uuid4().hex[:8]}-{i}"  # distinct: each one must be stored
    broken = dict(valid[0], source_id=f"FUZZ-BAD-{uuid.uuid4().hex[:8]}", tariff=12.5)  # a number, not a string
    real = by_name(f"sources.{kind}")
    topic = Topic(f"test.{real.name}-{uuid.uuid4().hex[:8]}", real.payload, real.key, "fuzz", ("loader",))
    await create_topics(settings.kafka_bootstrap, topic.name, topic.dlq)  # brokers never auto-create
    sink = BatchIntake(EventStore(pool, source="/flows/loader"), pool)  # the loader's batched intake
    intake = BatchConsumer(settings.bootstrap_list(), [topic], f"fuzz-{uuid.uuid4().hex[:6]}", sink, pool)
    stop = asyncio.Event()
    running: list[asyncio.Task[None]] = []
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for record in [*valid, broken]:
            await producer.send_and_wait(topic.name, json.dumps(record).encode(), key=record["source_id"].encode(),
                                         headers=Envelope.new(topic.name, "/cup/fuzz").to_headers())
        running.append(asyncio.create_task(intake.run(stop)))
        ids = [r["source_id"] for r in valid]

        async def all_stored() -> bool:
            n = await pool.fetchval("SELECT count(*) FROM source_service WHERE source_id = ANY($1)", ids)
            return bool(n == len(ids))

        await _wait_for(all_stored)

        async def rejection() -> Any:
            return await pool.fetchval("SELECT data FROM events WHERE type = 'sources.record-rejected' "
                                       "AND stream_id = $1", f"source-{broken['source_id']}")

        rejected = await _wait_for(rejection)
    finally:
        await producer.stop()
        stop.set()
        await asyncio.gather(*running)
    reason = (json.loads(rejected) if isinstance(rejected, str) else rejected)["errors"][0]["reason"]
    assert "tariff" in reason and broken["source_id"] in reason
    assert await pool.fetchval("SELECT count(*) FROM source_service WHERE source_id = $1", broken["source_id"]) == 0
