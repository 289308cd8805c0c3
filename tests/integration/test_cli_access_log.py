"""The `flows` commands that show or write personal data are in the access log beside the console's reads
(services/cli/personal.py): the real CLI, run as the operator runs it (its own process), against the test stack's
PostgreSQL and Kafka; then the log is read as the auditor reads it, with `flows access-log` and on /accessi. With
PostgreSQL stopped, a command whose data is on Kafka refuses, and shows nothing."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from contracts import flows
from contracts.envelope import Envelope
from services.console.access import ACCESS_EVENT
from services.runtime.filestore import FileStore
from tests.console_support import RunningConsole, running_console
from tests.kafka_topics import create_topics
from tests.pg_outage import postgres_down
from tests.seeding import seed_instance
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

INSTANCE = 1971
CF = "RSSMRA80A01F839W"
FEEDBACK = (f"record_key;field;code;severity;message\n"
            f"S1@R1/01;patient_cf;CF_CHECK_CHAR;error;il carattere di controllo del codice fiscale {CF[:15]}X "
            f"dovrebbe essere W\n").encode()
C1 = f"150201{CF}ROSSI MARIO\n".encode()  # a C1's bytes as the export copies them (never parsed here)
OPERATOR = "op.cli"


async def _formatted_instance(url: str, files_dir: Path) -> None:
    """Instance INSTANCE of ente 201: loaded with a warning (its feedback names a codice fiscale), then formatted."""
    files = FileStore(files_dir)

    def ref(name: str, kind: str, data: bytes) -> flows.FileRef:
        sha, size = files.put_bytes(data)
        return flows.FileRef(name=name, kind=kind, records=1, bytes=size, sha256=sha,
                             media_type="text/csv" if kind == "feedback" else "text/plain")

    history: list[flows.Payload] = [
        flows.LoadRunning(instance=INSTANCE, request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C,
                          version="2020", ente="201",
                          period=flows.Period.model_validate({"start": "2026-10-01", "end": "2026-10-31"}),
                          requested_by="op.rossi"),
        flows.LoadChecked(instance=INSTANCE, source_instance=INSTANCE + 1, counts={"services": 1}, warnings=1,
                          feedback=ref(f"feedback_{INSTANCE}.csv", "feedback", FEEDBACK)),
        flows.FormattingStarted(instance=INSTANCE),
        flows.Formatted(instance=INSTANCE, files=[ref(f"C1_150201_202610_{INSTANCE}.txt", "C1", C1)])]
    await seed_instance(url, INSTANCE, history)


def _env(url: str, files_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_")}
    env.update(DATABASE_URL=url, FLOWS_KAFKA_BOOTSTRAP=KAFKA, FLOWS_FILES_DIR=str(files_dir),
               FLOWS_OPERATOR=OPERATOR, COLUMNS="400")
    return env


async def _flows(env: dict[str, str], *args: str, code: int = 0, cwd: Path | None = None) -> tuple[str, str]:
    """`flows ARGS` in its own process, as the console script runs it: (stdout, stderr), its exit code checked."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli.main", *args, env=env, cwd=cwd,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)  # a hang guard
    assert proc.returncode == code, (args, out.decode(), err.decode())
    return out.decode(), " ".join(err.decode().split())


async def _reads(url: str) -> list[dict]:
    """The access log's records, oldest first, with the actor the event store keeps."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT actor, data::text AS data FROM events WHERE stream_id LIKE 'access-%' "
                                "AND type = $1 ORDER BY recorded_at, stream_id, version", ACCESS_EVENT)
    finally:
        await conn.close()
    return [{"actor": r["actor"], **json.loads(r["data"])} for r in rows]


def _table(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]


async def test_every_command_that_shows_or_writes_an_instances_personal_data_is_in_the_access_log(
        fresh_db: str, tmp_path: Path) -> None:
    files_dir = tmp_path / "files"
    await _formatted_instance(fresh_db, files_dir)
    env = _env(fresh_db, files_dir)
    host = socket.gethostname()

    # Not reads of personal data: the history, the file list. Nothing recorded.
    shown, _ = await _flows(env, "show", str(INSTANCE))
    assert "flows.formatted" in shown and CF not in shown
    listed, _ = await _flows(env, "files", str(INSTANCE))
    assert f"C1_150201_202610_{INSTANCE}.txt" in listed and CF not in listed
    assert await _reads(fresh_db) == []

    # The feedback shown, then written; a file viewed; every file exported.
    out, _ = await _flows(env, "feedback", str(INSTANCE))
    assert f"{CF[:15]}X" in out
    esiti = tmp_path / "esiti.csv"
    await _flows(env, "feedback", str(INSTANCE), "--out", str(esiti))
    assert esiti.read_bytes() == FEEDBACK
    out, _ = await _flows(env, "files", str(INSTANCE), "--view", f"feedback_{INSTANCE}.csv")
    assert "CF_CHECK_CHAR" in out
    exported = tmp_path / "export"
    await _flows(env, "export", str(INSTANCE), "--out", "export", cwd=tmp_path)  # a relative folder: kept in full
    assert (exported / f"C1_150201_202610_{INSTANCE}.txt").read_bytes() == C1

    # Refused before anything is shown: nothing recorded.
    _, err = await _flows(env, "files", str(INSTANCE), "--view", "nessuno.txt", code=1)
    assert "has no file 'nessuno.txt'" in err
    _, err = await _flows(env, "feedback", "999999", code=1)
    assert "there is no instance 999999" in err

    reads = await _reads(fresh_db)
    common = {"actor": f"cli:{OPERATOR}", "user": f"cli:{OPERATOR}", "role": None, "channel": "cli",
              "address": host, "instance": INSTANCE, "ente": "201"}
    feedback = f"feedback_{INSTANCE}.csv"
    assert reads == [
        {**common, "what": "feedback-view", "file": feedback, "command": f"flows feedback {INSTANCE} --limit 50"},
        {**common, "what": "feedback-download", "file": feedback, "out": str(esiti),
         "command": f"flows feedback {INSTANCE} --out {esiti}"},
        {**common, "what": "file-view", "file": feedback,
         "command": f"flows files {INSTANCE} --view {feedback} --limit 20"},
        {**common, "what": "files-export", "file": f"C1_150201_202610_{INSTANCE}.txt, {feedback}",
         "out": str(exported), "command": f"flows export {INSTANCE} --out export"},
    ], reads

    # The auditor's `flows access-log`: by the reader's name, by instance; the channel and what was read.
    out, _ = await _flows(env, "access-log", "--user", f"cli:{OPERATOR}")
    rows = _table(out)
    assert [(r[1], r[2], r[3], r[4], r[5], r[7]) for r in rows] == [
        (f"cli:{OPERATOR}", "-", "cli", what, str(INSTANCE), host)
        for what in ("files-export", "file-view", "feedback-download", "feedback-view")], out
    assert f"flows export {INSTANCE} --out export" in rows[0][6] and "ente 201" in rows[0][6], rows[0]
    assert len(_table((await _flows(env, "access-log", "--instance", str(INSTANCE)))[0])) == 4
    assert "no access recorded" in (await _flows(env, "access-log", "--instance", "1"))[0]


async def test_the_auditor_reads_the_commands_reads_beside_the_consoles_on_the_access_log_page(
        fresh_db: str, tmp_path: Path) -> None:
    files_dir = tmp_path / "files"
    async with running_console(fresh_db, KAFKA, files_dir) as console:
        await console.add_users()
        await _formatted_instance(fresh_db, files_dir)
        async with console.client("operator") as operator:  # op.201 reads the feedback page in the console
            assert (await operator.get(f"{console.url}/istanze/{INSTANCE}/feedback")).status_code == 200
        await _flows(_env(fresh_db, files_dir), "feedback", str(INSTANCE))  # and op.cli with the CLI
        async with console.client("auditor") as auditor:
            page = (await auditor.get(f"{console.url}/accessi?istanza={INSTANCE}")).text
    rows = [row.split("</tr>")[0] for row in page.split('<tr class="accesso"')[1:]]
    assert len(rows) == 2, page
    cli, web = rows  # the latest first
    assert 'data-canale="cli"' in cli and f"<td>cli:{OPERATOR}</td><td>—</td>" in cli, cli
    assert "<td>riga di comando (flows)</td>" in cli and "consultazione dell&#39;esito" in cli, cli
    assert f"<code>flows feedback {INSTANCE} --limit 50</code>" in cli and f"<td>{socket.gethostname()}</td>" in cli
    assert 'data-canale="console"' in web and "<td>op.201</td><td>operatore</td>" in web, web
    assert "<td>console</td>" in web and "<code>" not in web, web


async def _a_dead_letter_naming_a_patient(topic: str) -> str:
    """A source record dead-lettered on `topic`.dlq as the services do it (original body, dlq_* headers): its
    reason quotes the refused codice fiscale. Its id."""
    from services.runtime.deadletters import list_letters

    await create_topics(KAFKA, topic, f"{topic}.dlq")
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA)
    await producer.start()
    try:
        headers = Envelope.new(topic, "/test").to_headers() + [
            (name, value.encode()) for name, value in (
                ("dlq_reason", f"patient_cf: String should match pattern (got '{CF[:15]}X')"),
                ("dlq_original_topic", topic), ("dlq_original_partition", "0"), ("dlq_original_offset", "0"),
                ("dlq_attempts", "1"), ("dlq_consumer_group", "loader"))]
        body = json.dumps({"source_id": "CUP-201-1", "ente": "201", "patient_cf": f"{CF[:15]}X",
                           "patient_surname": "ROSSI", "patient_name": "MARIO"}).encode()
        await producer.send_and_wait(f"{topic}.dlq", body, key=b"CUP-201-1", headers=headers)
    finally:
        await producer.stop()
    async with asyncio.timeout(30):  # a hang guard
        while not (letters := await list_letters(KAFKA, topic)):
            await asyncio.sleep(0.2)
    return letters[0].id


async def _a_source_record() -> None:
    """One record on sources.delivered-service (a regional system publishing): `flows tail --from-beginning` of
    it has at least this one to show."""
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA)
    await producer.start()
    try:
        body = json.dumps({"source_id": f"CUP-201-{uuid.uuid4().hex[:8]}", "ente": "201", "patient_cf": CF,
                           "patient_surname": "ROSSI", "patient_name": "MARIO"}).encode()
        await producer.send_and_wait("sources.delivered-service", body, key=b"CUP-201",
                                     headers=Envelope.new("sources.delivered-service", "/test").to_headers())
    finally:
        await producer.stop()


async def _tail_until_following(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`flows tail ARGS` (which follows until stopped) interrupted with Ctrl-C once it follows its partitions:
    (exit code, stdout)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli.main", "tail", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(60):  # a hang guard
            assert proc.stderr is not None
            line = (await proc.stderr.readline()).decode()
        assert "following" in line, line
    finally:
        proc.send_signal(2)  # SIGINT: the operator's Ctrl-C
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_dead_letters_and_a_tail_of_source_records_are_recorded_and_a_tail_of_flow_events_is_not(
        fresh_db: str, tmp_path: Path) -> None:
    env = _env(fresh_db, tmp_path / "files")
    topic = f"test.sources-{uuid.uuid4().hex[:8]}"
    letter = await _a_dead_letter_naming_a_patient(topic)
    await _a_source_record()

    listed, _ = await _flows(env, "dlq", "list", topic)
    assert f"{CF[:15]}X" in listed and letter in listed  # the reason quotes it
    shown, _ = await _flows(env, "dlq", "show", letter)
    assert '"patient_surname": "ROSSI"' in shown
    tailed, _ = await _flows(env, "tail", "sources.delivered-service", "--ente", "201", "--from-beginning",
                             "--json", "--limit", "1")
    assert json.loads(tailed)["data"]["patient_cf"], tailed
    # flow events only (no source record has an instance): followed, nothing recorded
    code, _ = await _tail_until_following(env, "flows.load-checked", "sources.delivered-service", "--instance",
                                          str(INSTANCE))
    assert code == 0

    reads = await _reads(fresh_db)
    assert [(r["what"], r["user"], r["channel"], r["instance"], r.get("topic"), r.get("topics"), r.get("dead_letter"),
             r["command"]) for r in reads] == [
        ("dead-letter-list", f"cli:{OPERATOR}", "cli", None, f"{topic}.dlq", None, None, f"flows dlq list {topic}"),
        ("dead-letter-view", f"cli:{OPERATOR}", "cli", None, topic, None, letter, f"flows dlq show {letter}"),
        ("topic-tail", f"cli:{OPERATOR}", "cli", None, None, "sources.delivered-service", None,
         "flows tail sources.delivered-service --ente 201 --from-beginning --json --limit 1"),
    ], reads
    assert reads[2]["ente"] == "201"

    out, _ = await _flows(env, "access-log", "--user", f"cli:{OPERATOR}")
    assert [r[4] for r in _table(out)] == ["topic-tail", "dead-letter-view", "dead-letter-list"], out


async def test_with_postgresql_stopped_a_command_refuses_to_show_personal_data_it_cannot_record(
        fresh_db: str, tmp_path: Path) -> None:
    """The tail and the dead letters are read from Kafka, which is up: without the access log they would be shown
    unrecorded. Each refuses, naming the access log, and prints nothing of them; PostgreSQL back, they work and are
    recorded."""
    env = _env(fresh_db, tmp_path / "files")
    topic = f"test.sources-{uuid.uuid4().hex[:8]}"
    letter = await _a_dead_letter_naming_a_patient(topic)
    await _a_source_record()
    tail = ("tail", "sources.delivered-service", "--from-beginning", "--limit", "1")
    async with postgres_down():
        for args in (tail, ("dlq", "show", letter), ("dlq", "list", topic)):
            out, err = await _flows(env, *args, code=1)
            assert out == "", out  # nothing of the messages
            assert "the access log cannot be written (PostgreSQL at" in err, err
            assert f"`flows {' '.join(args)}` shows personal data only once its reading is recorded, so nothing " \
                   "was shown nor written" in err, err
            assert "Try `flows stack up`" in err, err
        # an instance's feedback is in PostgreSQL itself: unreachable, nothing to show either
        _, err = await _flows(env, "feedback", str(INSTANCE), code=1)
        assert "cannot reach PostgreSQL" in err, err
    assert await _reads(fresh_db) == []
    out, _ = await _flows(env, *tail)
    assert "sources.delivered-service" in out
    assert [r["what"] for r in await _reads(fresh_db)] == ["topic-tail"]


async def test_a_list_of_dead_letters_is_recorded_in_the_console_as_with_the_cli(console: RunningConsole,
                                                                                tmp_path: Path) -> None:
    """The Esercizio list shows each dead letter's reason, which quotes the refused value, as `flows dlq list` does:
    recorded on both channels, the same kind and topic; an empty list shows nothing and records nothing."""
    topic = f"test.sources-{uuid.uuid4().hex[:8]}"
    await _a_dead_letter_naming_a_patient(topic)
    async with console.client("ops") as ops:
        listed = await ops.get(f"{console.url}/esercizio/scarti", params={"coda": topic})
        assert listed.status_code == 200 and f"{CF[:15]}X" in listed.text
        empty = await ops.get(f"{console.url}/esercizio/scarti", params={"coda": f"test.none-{uuid.uuid4().hex}"})
        assert "Nessun messaggio non elaborabile" in empty.text
    await _flows(_env(console.settings.database_url, tmp_path / "files"), "dlq", "list", topic)
    reads = await _reads(console.settings.database_url)
    assert [(r["what"], r["user"], r["channel"], r["topic"]) for r in reads] == [
        ("dead-letter-list", "ops.1", "console", f"{topic}.dlq"),
        ("dead-letter-list", f"cli:{OPERATOR}", "cli", f"{topic}.dlq")], reads
    async with console.client("auditor") as auditor:
        page = (await auditor.get(f"{console.url}/accessi")).text
    assert page.count(f"elenco dei messaggi non elaborabili (con i motivi) di {topic}.dlq") == 2, page
