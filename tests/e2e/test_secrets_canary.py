"""TS credentials never leave the gateway's memory in clear, and their sealed box lives only while
its submission runs.

An operator sends 730s with `flows send-730` (the real entry point, in its own process, the prompts
answered on stdin) with planted credential values that exist nowhere else (a canary TS account the
simulator accepts, and a canary wrong password it refuses): one instance is Rejected (the wrong
password), then sent again and Confirmed through a failed send and a failed EsitoInvii; another is
given a later transmission date, then deleted by the operator before that day. Then every place the
platform writes is searched for them, clear and encoded (base64 at the three byte alignments, as
inside an HTTP Basic header, base64url, hex as PostgreSQL prints bytea, UTF-16): every message of
every non-internal Kafka topic, every row of every table of every schema of every database of the
test cluster, every file under the platform's folder (inside zips too), and every log line: the
services' (tee'd by the e2e fixture), the CLI's output and the stack's (.stack-test/logs). A
self-check plants other marker values in each of those places and shows the same search finds them.

The sealed boxes, as the CLI published them, are searched the same way: they may be on the command
topic (short retention) and nowhere else once their submissions ended; while the later-dated one
waits, it is in ts_sealed_credentials and in no event. Events cannot be deleted (a trigger refuses)
nor rewritten (the hash chains verify), so a box absent from the events table at the end was never
in it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from contracts.deadlines import italian_today
from contracts.states import InstanceState
from services.runtime.eventstore import EventStore
from services.runtime.read_models import instance_stream
from services.ts_gateway.sealing import PUBLIC_KEY_FILE, key_id
from simulators.sistema_ts.rules import SimUser
from tests.e2e.driving import _formatted_730, _wait_state
from tests.e2e.test_ts_730 import FINAL, flows_cli, send_730_cli

pytestmark = pytest.mark.e2e

CANARY = {"user": "CANARYUSR9F3K2", "password": "Canary-Pw-7x1Q", "pincode": "8811223344",
          "cf_proprietario": "CANARYCF7Q2W9Z4K"}
WRONG_PASSWORD = "Canary-Wrong-Pw-5k3T"  # refused by TS: it must not leak either
SELF_CHECK = {"user": "SELFCHKUSR4M7Q", "password": "Selfchk-Pw-2v8R", "pincode": "6655443322"}


# ---- the search ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    name: str
    form: str
    data: bytes
    ignore_case: bool = False


@dataclass(frozen=True)
class Hit:
    place: str  # kafka, database, files, logs
    where: str
    name: str
    form: str


def _base64_cores(raw: bytes) -> list[bytes]:
    """The base64 characters that depend only on `raw`, for each alignment it can have in a longer text."""
    cores = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        cores.append(encoded[-(-4 * offset // 3): 4 * (offset + len(raw)) // 3])
    return cores


def needles_for(secrets: dict[str, str]) -> list[Needle]:
    needles = []
    for name, value in secrets.items():
        raw = value.encode()
        needles += [Needle(name, "clear", raw.lower(), ignore_case=True),
                    Needle(name, "hex", raw.hex().encode(), ignore_case=True),
                    Needle(name, "utf-16-le", value.encode("utf-16-le")),
                    Needle(name, "utf-16-be", value.encode("utf-16-be"))]
        for core in _base64_cores(raw):
            needles.append(Needle(name, "base64", core))
            if (url := core.translate(bytes.maketrans(b"+/", b"-_"))) != core:
                needles.append(Needle(name, "base64url", url))
    return needles


def search(place: str, where: str, blob: bytes, needles: list[Needle]) -> list[Hit]:
    lowered = blob.lower()
    return [Hit(place, where, n.name, n.form) for n in needles if n.data in (lowered if n.ignore_case else blob)]


# ---- the places ------------------------------------------------------------------------------------


def _name_bytes(name: str) -> bytes:
    """A header name's bytes as they are on the topic: one that is not UTF-8 comes decoded with surrogateescape
    (services.runtime.kafkarecords; other tests of the session publish such records)."""
    return name.encode("utf-8", "surrogateescape")


async def kafka_records(bootstrap: str) -> AsyncIterator[tuple[str, bytes]]:
    """Every record (key, value, headers) of every partition of every non-internal topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(await admin.list_topics())
    finally:
        await admin.close()
    partitions = sorted(TopicPartition(t["topic"], p["partition"]) for t in described
                        if not t["is_internal"] and not t["topic"].startswith("__") for p in t["partitions"])
    assert partitions, "no Kafka topic to search"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        pending = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        async with asyncio.timeout(120):
            while pending:
                for tp, records in (await consumer.getmany(*pending, timeout_ms=1000)).items():
                    for r in records:
                        headers = b"\n".join(_name_bytes(k) + b"=" + (v or b"") for k, v in r.headers or ())
                        yield f"{tp.topic}[{tp.partition}]@{r.offset}", b"\n".join((r.key or b"", r.value or b"",
                                                                                     headers))
                pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()


async def database_rows(server_url: str) -> AsyncIterator[tuple[str, bytes]]:
    """Every row, as text, of every table of every schema of every database of the cluster."""
    admin = await asyncpg.connect(f"{server_url}/postgres")
    try:
        databases = [r["datname"] for r in await admin.fetch(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname")]
    finally:
        await admin.close()
    for database in databases:
        try:
            conn = await asyncpg.connect(f"{server_url}/{database}")
        except asyncpg.InvalidCatalogNameError:
            continue  # dropped since it was listed (another test's database)
        try:
            tables = await conn.fetch(
                """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't'  -- another session's temp table
                     AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                     AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2""")
            for schema, table in tables:
                name = f'"{schema}"."{table}"'
                async with conn.transaction():
                    cursor = await conn.cursor(f"SELECT t::text AS row FROM {name} AS t")
                    while rows := await cursor.fetch(2000):
                        yield f"{database}.{schema}.{table}", "\n".join(r["row"] for r in rows).encode()
        finally:
            await conn.close()


def _with_zip_entries(where: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    yield where, data
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zipped:
            for entry in zipped.namelist():
                yield from _with_zip_entries(f"{where}!{entry}", zipped.read(entry))


def folder_files(*roots: Path) -> Iterator[tuple[str, bytes]]:
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            yield from _with_zip_entries(str(path), path.read_bytes())


@dataclass
class Scan:
    hits: list[Hit]
    seen: dict[str, int]  # place -> blobs searched


async def scan_everything(platform: Any, stack: Any, needles: list[Needle]) -> Scan:
    hits: list[Hit] = []
    seen = {"kafka": 0, "database": 0, "files": 0, "logs": 0}
    async for where, blob in kafka_records(platform.settings.kafka_bootstrap):
        hits += search("kafka", where, blob, needles)
        seen["kafka"] += 1
    async for where, blob in database_rows(platform.settings.database_url.rsplit("/", 1)[0]):
        hits += search("database", where, blob, needles)
        seen["database"] += 1
    for where, blob in folder_files(platform.settings.files_dir.parent):
        hits += search("files", where, blob, needles)
        seen["files"] += 1
    assert platform.log_path is not None and platform.log_path.is_file(), "the services' logs are not captured"
    for where, blob in folder_files(platform.log_path.parent, Path(stack.state_dir) / "logs"):
        hits += search("logs", where, blob, needles)
        seen["logs"] += 1
    return Scan(hits, seen)


# ---- driving the platform ------------------------------------------------------------------------


async def _behaviour(platform: Any, **fields: Any) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{platform.ts_url}/__sim/behaviour", json=fields) as r:
        assert r.status == 200, await r.text()


@pytest.fixture
async def canary_account(platform: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, str]]:
    """The simulator accepts the canary account too (its users are salted hashes only), for one test."""
    simulator = platform.simulator
    monkeypatch.setattr(simulator, "_users", [*simulator._users, SimUser.from_clear(
        CANARY["user"], CANARY["password"], CANARY["pincode"], CANARY["cf_proprietario"])])
    try:
        yield CANARY
    finally:
        await _behaviour(platform)


# ---- the tests -------------------------------------------------------------------------------------


async def _sealed_boxes(bootstrap: str, instances: set[int]) -> list[tuple[int, str]]:
    """(instance, sealed box) of every flows.ts-submission-requested command of these instances."""
    found = []
    async for where, blob in kafka_records(bootstrap):
        if where.startswith("flows.ts-submission-requested["):
            body = json.loads(blob.split(b"\n")[1])  # key, value (one line of JSON), headers
            if body.get("instance") in instances:
                found.append((int(body["instance"]), str(body["sealed_credentials"])))
    return found


async def _until(what: str, check: Any, timeout: float = 120) -> Any:
    """Polls `check()` (async) until it returns something truthy; fails naming `what` after `timeout`. The deadline
    is for what never comes, not for a slow machine: the box of a deleted instance goes at the TS gateway's next
    resume pass (in production every RESUME_PASS_S, 10 s; here the platform's pass_s, 1 s), which can come a whole
    period after the deletion and then take its own time on a loaded machine (2 to 7 s measured under two busy loops
    with the 10 s pass)."""
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        await asyncio.sleep(0.2)
    return result


async def test_planted_ts_credentials_sent_with_flows_send_730_appear_nowhere_and_the_box_only_while_it_is_needed(
        platform, stack, canary_account):
    operator = f"canary.operator.{uuid.uuid4().hex[:8]}"  # the database search must find it in the events
    typed = {"user": canary_account["user"], "pincode": canary_account["pincode"],
             "cf": canary_account["cf_proprietario"]}
    box_of = "SELECT * FROM ts_sealed_credentials WHERE instance = $1"
    pool = await platform.pool()
    try:
        sent = await _formatted_730(platform, "207", "2026-07", services=100)
        later = await _formatted_730(platform, "207", "2026-08", services=60)

        # Rejected: TS refuses the password (HTTP 401); the box goes with the outcome
        run = await send_730_cli(platform, sent, password=WRONG_PASSWORD, operator=operator, **typed)
        row = await _wait_state(pool, sent, FINAL)
        assert row["state"] == InstanceState.REJECTED.value and "HTTP 401" in (row["summary"] or ""), dict(row)
        assert "Rejected" in run.text and "handed to the TS gateway (credentials sealed to key" in run.text
        assert await pool.fetchrow(box_of, sent) is None, "the box outlived the Rejected outcome"

        # Confirmed, through a failed send and a failed EsitoInvii: error paths are where secrets leak
        await _behaviour(platform, fail_next=2, operations=["inviaFileMtom", "EsitoInvii"])
        run = await send_730_cli(platform, sent, password=canary_account["password"], operator=operator, **typed)
        row = await _wait_state(pool, sent, {InstanceState.CONFIRMED.value, InstanceState.REJECTED.value})
        assert row["state"] == InstanceState.CONFIRMED.value, f"{row['state']}: {row['summary']}"
        assert "Confirmed" in run.text
        attempts = await pool.fetchval("SELECT max(attempts) FROM ts_submission_part WHERE instance = $1", sent)
        assert attempts >= 2, "the planted TS failure did not happen: the error path was not exercised"
        assert await pool.fetchrow(box_of, sent) is None, "the box outlived the Confirmed outcome"

        # a later transmission date: recorded now, the box kept outside the history, nothing sent yet
        tomorrow = italian_today() + timedelta(days=1)  # the gateway counts days in Italy, not on this host
        run = await send_730_cli(platform, later, when=tomorrow, password=canary_account["password"],
                                 operator=operator, **typed)
        assert f"the gateway sends it on {tomorrow}" in run.text, run.text
        waiting = await _until("the gateway stores the later-dated request's box",
                               lambda: pool.fetchrow(box_of, later))
        assert waiting["key_id"] == key_id((platform.settings.keys_dir / PUBLIC_KEY_FILE).read_bytes())
        assert await pool.fetchval("SELECT count(*) FROM events WHERE strpos(data::text, $1) > 0 "
                                   "OR strpos(metadata::text, $1) > 0", waiting["sealed"]) == 0
        assert (await _wait_state(pool, later, {InstanceState.FORMATTED.value}))["state"] == "Formatted"
        assert await pool.fetchval("SELECT count(*) FROM ts_submission_part WHERE instance = $1", later) == 0

        # the operator deletes the instance before that day: the abandoned request's box goes too
        run = await flows_cli(platform, "delete", str(later), "--reason", "canary: sent by mistake",
                              operator=operator)
        assert run.code == 0, run.text
        await _until("the resume pass deletes the abandoned request's box",
                     lambda: _none(pool.fetchrow(box_of, later)))

        store = EventStore(pool, source="/e2e/canary")
        for instance in (sent, later):  # nothing was rewritten: what is absent now was never there
            assert await store.verify_stream(instance_stream(instance)) == [], instance
        zips = {r["sha256"] for r in await pool.fetch(
            "SELECT sha256 FROM instance_files WHERE instance = $1 AND kind = '730-zip'", sent)}
        await _until("the outbox relay has published every event",
                     lambda: _zero(pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")))
    finally:
        await pool.close()

    boxes = await _sealed_boxes(platform.settings.kafka_bootstrap, {sent, later})
    assert sorted(instance for instance, _ in boxes) == sorted([sent, sent, later]), boxes
    box_values = {f"box:{n}": box for n, (_, box) in enumerate(boxes)}
    # controls: values that must be found, so the search demonstrably read this submission's data
    controls = {"control:operator": operator, "control:log-of-this-instance": f'"aggregate_id": "{sent}"',
                "control:cli-output": f"instance {sent} handed to the TS gateway"}
    secrets = {**canary_account, "wrong_password": WRONG_PASSWORD}
    scan = await scan_everything(platform, stack, needles_for({**secrets, **controls, **box_values}))

    leaks = [h for h in scan.hits if not h.name.startswith(("control:", "box:"))]
    assert leaks == [], f"TS credentials found in clear or encoded: {leaks}"
    box_hits = {(h.place, h.where.split("[")[0], h.name) for h in scan.hits if h.name.startswith("box:")}
    assert {(place, where) for place, where, _ in box_hits} == {("kafka", "flows.ts-submission-requested")}, \
        f"a sealed box outlived its submission: {sorted(box_hits)}"
    assert {name for _, _, name in box_hits} == set(box_values), "the Kafka search missed a submission request"
    found = {(h.place, h.name) for h in scan.hits}
    assert any(h.place == "database" and h.name == "control:operator" and ".public.events" in h.where
               for h in scan.hits), "the database search missed the instances' streams"
    assert ("logs", "control:log-of-this-instance") in found, "the log search missed the services' lines"
    assert ("logs", "control:cli-output") in found, "the log search missed the CLI's output"
    searched_files = {where for where, _ in folder_files(platform.settings.files_dir)}
    assert all(any(where.endswith(sha[2:]) for where in searched_files) for sha in zips)
    assert all(count > 0 for count in scan.seen.values()), scan.seen


async def _none(value: Any) -> bool:
    return await value is None


async def _zero(value: Any) -> bool:
    return await value == 0


async def test_the_canary_search_finds_marker_values_planted_in_each_place(platform, stack):
    """Plants other values (never the canary's) where a leak could hide, then searches as above."""
    marker = uuid.uuid4().hex[:10]
    user, password, pincode = SELF_CHECK["user"], SELF_CHECK["password"], SELF_CHECK["pincode"]
    bootstrap = platform.settings.kafka_bootstrap
    schema, topic = f"canary_selfcheck_{marker}", f"e2e.canary-selfcheck.{marker}"
    folder = platform.settings.files_dir / f"selfcheck-{marker}"
    conn = await asyncpg.connect(platform.settings.database_url)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # database: clear text in a table of another schema, and bytes PostgreSQL prints as hex
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"CREATE TABLE {schema}.planted (note text, secret bytea)")
        await conn.execute(f"INSERT INTO {schema}.planted VALUES ($1, $2)", f"login {user}", password.encode())
        # Kafka: an HTTP Basic value (base64 of user:password) as the body, the pincode in a header
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            basic = base64.b64encode(f"{user}:{password}".encode())
            await producer.send_and_wait(topic, b"Authorization: Basic " + basic, partition=1,
                                         headers=[("pin", pincode.encode())])
        finally:
            await producer.stop()
        # files: the pincode as UTF-16 inside a zip inside a zip
        inner = io.BytesIO()
        with zipfile.ZipFile(inner, "w") as z:
            z.writestr("note.txt", f"pin {pincode}".encode("utf-16-le"))
        folder.mkdir()
        with zipfile.ZipFile(folder / "outer.zip", "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("inner.zip", inner.getvalue())
        # logs: through the gateway's own structlog logger and the standard library's
        from services.ts_gateway.handlers import log

        log.warning("e2e.canary_selfcheck", user=user)
        logging.getLogger("aiokafka").warning("e2e canary self-check %s", password)

        scan = await scan_everything(platform, stack, needles_for(SELF_CHECK))
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
        await admin.delete_topics([topic])
        await admin.close()
        for path in sorted(folder.rglob("*"), reverse=True):
            path.unlink()
        folder.rmdir()

    found = {(h.place, h.name, h.form) for h in scan.hits}
    expected = {("database", "user", "clear"), ("database", "password", "hex"),
                ("kafka", "user", "base64"), ("kafka", "password", "base64"), ("kafka", "pincode", "clear"),
                ("files", "pincode", "utf-16-le"), ("logs", "user", "clear"), ("logs", "password", "clear")}
    assert expected <= found, f"missed: {sorted(expected - found)}; found: {sorted(found)}"
    assert any(h.where.startswith(f"{topic}[1]") for h in scan.hits), "partition 1 was not searched"
    assert any(h.where.endswith("outer.zip!inner.zip!note.txt") for h in scan.hits), "nested zips were not opened"
