"""The 730 goes to Sistema TS through the whole platform: source data on Kafka -> loader (Checked)
-> formatter (730 zips, Formatted) -> TS gateway (sealed credentials, inviaFileMtom, EsitoInvii,
DettaglioErrori) -> Confirmed / Confirmed with errors / Rejected, against the TS simulator on
loopback. Each test uses its own entity and month, so instances and zips never mix.

Most tests publish the command as an external system would (`_send_730`); `flows_cli` runs the
real `flows` entry point in its own process, as an operator does (the key rotation test here, and
the secrets canary). The sealed box lives in ts_sealed_credentials only while its submission runs.
The crash tests run the gateway as a process of its own (`gateway_process`) and kill it with SIGKILL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import io
import json
import os
import signal
import sys
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from lxml import etree

from contracts import flows
from contracts.deadlines import italian_today
from contracts.states import InstanceState, fold
from services.runtime.commands import send_command
from services.runtime.filestore import FileStore
from services.runtime.read_models import instance_stream
from services.runtime.settings import Settings
from services.ts_gateway import keys as gateway_keys
from services.ts_gateway import payment_year
from services.ts_gateway.sealing import PUBLIC_KEY_FILE, Credentials, key_id, seal
from services.ts_gateway.submission import PROTOCOLLO
from tests.e2e.conftest import TS_CF, TS_PASSWORD, TS_PINCODE, TS_USER
from tests.e2e.driving import _formatted_730, _wait_state
from tests.isolation import logged_process
from tests.stack_urls import free_port

pytestmark = pytest.mark.e2e
FINAL = {InstanceState.CONFIRMED.value, InstanceState.CONFIRMED_WITH_ERRORS.value, InstanceState.REJECTED.value}
FLOWS = Path(sys.executable).with_name("flows")  # the console script `uv sync` installs, as an operator runs it


# ---- driving the platform ------------------------------------------------------------------------


async def _send_730(platform: Any, instance: int, user: str = TS_USER, password: str = TS_PASSWORD,
                    pincode: str = TS_PINCODE, cf: str = TS_CF, seen_version: int | None = None) -> str:
    """What `flows send-730` does: seal to the gateway's public key, publish the command (its ce_id)."""
    public_key = (platform.settings.keys_dir / PUBLIC_KEY_FILE).read_bytes()
    sealed = seal(public_key, Credentials(user=user, password=password, pincode=pincode, cf_proprietario=cf))
    request = flows.TsSubmissionRequested(instance=instance, sealed_credentials=sealed, seen_version=seen_version,
                                          transmission_date=italian_today(), requested_by="e2e.ts")
    return await send_command(platform.settings.kafka_bootstrap, "flows.ts-submission-requested", request,
                              key=str(instance))


@dataclass(frozen=True)
class CliRun:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        """Both streams, with rich's line wrapping undone."""
        return " ".join((self.stdout + "\n" + self.stderr).split())


async def flows_cli(platform: Any, *args: str, answers: Sequence[str] = (), operator: str = "e2e.ts",
                    timeout: float = 180) -> CliRun:
    """Runs `flows ARGS` in its own process against the e2e platform, the prompts answered on stdin.
    The process has no terminal (a new session), so the hidden prompts read stdin, as they would from
    a pipe. What it printed is appended to a file beside the services' log: the canary searches it."""
    cfg = platform.settings
    env = {**os.environ, "DATABASE_URL": cfg.database_url, "FLOWS_DATABASE_URL": cfg.database_url,
           "FLOWS_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap, "FLOWS_KEYS_DIR": str(cfg.keys_dir),
           "FLOWS_FILES_DIR": str(cfg.files_dir), "FLOWS_OPERATOR": operator, "COLUMNS": "200", "NO_COLOR": "1"}
    process = await asyncio.create_subprocess_exec(
        str(FLOWS), *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(process.communicate("".join(f"{a}\n" for a in answers).encode()), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"`flows {' '.join(args[:2])}` did not end in {timeout:.0f} s") from None
    run = CliRun(tuple(args), int(process.returncode or 0), out.decode(errors="replace"), err.decode(errors="replace"))
    if platform.log_path is not None:
        with (platform.log_path.parent / "flows-cli.log").open("a", encoding="utf-8") as log:
            log.write(f"$ flows {' '.join(args)}\n{run.stdout}{run.stderr}\n")
    return run


async def send_730_cli(platform: Any, instance: int, user: str = TS_USER, password: str = TS_PASSWORD,
                       pincode: str = TS_PINCODE, cf: str = TS_CF, when: date | None = None,
                       operator: str = "e2e.ts", wait: bool = True) -> CliRun:
    """`flows send-730 N` as an operator runs it: C.F., user, password, pincode, then the transmission
    date (Enter: today) when `when` is not given as the option; with `wait` it waits for the outcome
    (unless the date is later). An operator who is told that TS refuses documents for their payment year
    (services.ts_gateway.payment_year: these tests' 2026 payments, sent from February 2027 on) sends anyway: asked
    of the same documents and day as the command asks, so the answer is there exactly when the question is."""
    args = ["send-730", str(instance), *(["--transmission-date", when.isoformat()] if when else []),
            *([] if wait else ["--no-wait"])]
    pool = await platform.pool()
    try:
        years = await payment_year.payment_years(pool, instance)
    finally:
        await pool.close()
    warned = payment_year.warning_en(instance, years, when or italian_today()) is not None
    run = await flows_cli(platform, *args, answers=[*(["y"] if warned else []), cf, user, password, pincode,
                                                    *([] if when else [""])], operator=operator)
    assert run.code == 0, f"flows send-730 {instance} ended {run.code}"
    return run


def _settings_env(settings: Settings, **overrides: Any) -> dict[str, str]:
    """The environment from which a service process's `Settings()` reads `settings` back: every field
    set as FLOWS_<NAME> (and DATABASE_URL), none left to what the test process's own environment says."""
    fields = type(settings).model_fields
    env = {k: v for k, v in os.environ.items()
           if k != "DATABASE_URL" and not (k.startswith("FLOWS_") and k[len("FLOWS_"):].lower() in fields)}
    for name, value in {**settings.model_dump(), **overrides}.items():
        if value is not None:
            env[f"FLOWS_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env["DATABASE_URL"] = settings.database_url
    env["PYTHONUNBUFFERED"] = "1"
    return env


@asynccontextmanager
async def gateway_process(platform: Any, name: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """The TS gateway as a process of its own (`python -m services.ts_gateway`, the platform's settings),
    in place of the platform's in-process one, so a test can SIGKILL it: nothing of a dead process runs
    after the signal (no finally, no rollback, no lock released by the code), unlike cancelled tasks.
    Yields once its consumer holds the partitions (its /readyz); at the end the in-process gateway is
    started again, and the process, if still alive, stopped. Its log goes beside the services' log, where
    the secrets canary searches it."""
    await platform.stop("ts-gateway")  # gracefully: it leaves the group, the process gets every partition
    try:
        port = free_port(700, 760)
        log = platform.log_path.parent / f"ts-gateway-{name}.log"
        env = _settings_env(platform.settings, health_port=port)
        async with logged_process(log, "-m", "services.ts_gateway", env=env) as process, \
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            try:
                async with asyncio.timeout(60):
                    while True:
                        assert process.returncode is None, f"the gateway exited:\n{log.read_text()[-3000:]}"
                        with contextlib.suppress(aiohttp.ClientError, OSError):
                            async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
                                if ready.status == 200:
                                    break
                        await asyncio.sleep(0.2)
            except TimeoutError:
                raise AssertionError(f"the gateway process not ready in 60 s:\n{log.read_text()[-3000:]}") from None
            yield process
    finally:
        platform.start("ts-gateway")


def _sigkill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL, synchronous: the process is gone before the caller's next line (the kernel closes its sockets,
    so PostgreSQL ends its sessions and Kafka sees its connections drop; its group membership stays until
    the session times out)."""
    os.kill(process.pid, signal.SIGKILL)


async def _box(pool: asyncpg.Pool, instance: int) -> asyncpg.Record | None:
    """The instance's stored sealed box (ts_sealed_credentials), if a submission of it is running."""
    return await pool.fetchrow("SELECT * FROM ts_sealed_credentials WHERE instance = $1", instance)


async def _requests(pool: asyncpg.Pool, instance: int) -> list[dict[str, Any]]:
    """The submission requests as the instance's history recorded them."""
    return [json.loads(r["data"]) for r in await pool.fetch(
        "SELECT data::text AS data FROM events WHERE stream_id = $1 AND type = 'flows.ts-submission-requested' "
        "ORDER BY version", instance_stream(instance))]


async def _events_on(bootstrap: str, topic: str, match: Callable[[dict[str, Any]], bool], count: int = 1,
                     timeout: float = 120) -> list[dict[str, Any]]:
    """The first `count` messages of `topic` (read from the beginning) for which `match` holds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"e2e-ts-{uuid.uuid4().hex}", enable_auto_commit=False)
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(found) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [body for r in records if match(body := json.loads(r.value))]
    except TimeoutError:
        raise AssertionError(f"{len(found)} of {count} expected messages on {topic} in {timeout:.0f} s: "
                             f"{found}") from None
    finally:
        await consumer.stop()
    return found[:count]


async def _zips(pool: asyncpg.Pool, instance: int) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM instance_files WHERE instance = $1 AND kind = '730-zip' ORDER BY name",
                            instance)


async def _sim_submissions(platform: Any) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{platform.ts_url}/__sim/submissions") as answer:
        answer.raise_for_status()
        return list((await answer.json())["submissions"])


async def _set_behaviour(platform: Any, **behaviour: Any) -> None:
    """Replaces the simulator's whole behaviour (fields not given take their defaults)."""
    async with aiohttp.ClientSession() as http, http.post(f"{platform.ts_url}/__sim/behaviour",
                                                         json=behaviour) as answer:
        assert answer.status == 200, await answer.text()


@pytest.fixture
async def behaviour(platform: Any) -> AsyncIterator[Callable[..., Any]]:
    """Sets the simulator's behaviour for one test; the defaults are back afterwards, whatever happened."""
    async def set_(**fields: Any) -> None:
        await _set_behaviour(platform, **fields)

    try:
        yield set_
    finally:
        await _set_behaviour(platform)


@pytest.fixture
async def pool(platform: Any) -> AsyncIterator[asyncpg.Pool]:
    pool = await platform.pool()
    try:
        yield pool
    finally:
        await pool.close()


def _document_numbers(platform: Any, sha256: str) -> list[str]:
    """numDocumento of every documentoSpesa in a 730 zip of the file store."""
    with zipfile.ZipFile(FileStore(platform.settings.files_dir).path(sha256)) as zipped:
        (entry,) = zipped.namelist()
        root = etree.fromstring(zipped.read(entry))
    return [d.findtext("idSpesa/numDocumentoFiscale/numDocumento") or "" for d in root.findall("documentoSpesa")]


def _submissions_per_zip(submissions: list[dict[str, Any]], zips: list[asyncpg.Record]) -> dict[str, int]:
    return {z["name"]: sum(1 for s in submissions if z["sha256"].startswith(_stored_zip(s["file_name"]))) for z in zips}


async def _polls(platform: Any, zips: set[str]) -> int:
    """How often TS was asked about the files sent from these stored zips (their hash prefixes)."""
    return sum(s["polls"] for s in await _sim_submissions(platform) if _stored_zip(s["file_name"]) in zips)


def _stored_zip(file_name: str) -> str:
    """The hash prefix of the stored zip a file TS received was sent from, which the gateway's nomeFileAllegato
    carries (services.ts_gateway.submission.file_name_for): TS received that zip with the operator's C.F.
    proprietario added (services.ts_gateway.operations.with_cf_proprietario), whose own hash is another."""
    return file_name.removesuffix(".zip").rsplit("_", 1)[1]


# ---- the tests -------------------------------------------------------------------------------------


async def test_a_730_month_goes_from_source_data_to_confirmed_by_sistema_ts_with_one_submission_per_zip(
        platform, pool):
    instance = await _formatted_730(platform, "203", "2026-07", services=600)
    zips = await _zips(pool, instance)
    assert zips, "a Formatted 730 instance has at least one zip"

    await _send_730(platform, instance)

    bootstrap = platform.settings.kafka_bootstrap
    submitted = await _events_on(bootstrap, "flows.ts-submitted", lambda b: b["instance"] == instance, len(zips))
    assert sorted(s["part"] for s in submitted) == list(range(1, len(zips) + 1))
    assert all(PROTOCOLLO.fullmatch(s["protocollo"]) for s in submitted), submitted
    assert {s["zip_sha256"] for s in submitted} == {z["sha256"] for z in zips}
    (final,) = await _events_on(bootstrap, "flows.ts-feedback-received",
                                lambda b: b["instance"] == instance and b["instance_outcome"] is not None)
    assert final["instance_outcome"] == "confirmed", final

    row = await _wait_state(pool, instance, FINAL)
    assert row["state"] == InstanceState.CONFIRMED.value, dict(row)
    # the history passed through Waiting feedback: every protocollo was recorded before any outcome
    history = [(r["type"], json.loads(r["data"])) for r in await pool.fetch(
        "SELECT type, data::text AS data FROM events WHERE stream_id = $1 ORDER BY version", instance_stream(instance))]
    types = [t for t, _ in history]
    last_submitted = max(i for i, t in enumerate(types) if t == "flows.ts-submitted")
    assert fold(history[:last_submitted + 1]) is InstanceState.WAITING_FEEDBACK
    assert types.index("flows.ts-feedback-received") > last_submitted

    submissions = await _sim_submissions(platform)
    assert _submissions_per_zip(submissions, zips) == {z["name"]: 1 for z in zips}
    at_ts = {z["sha256"]: s["protocollo"] for s in submissions for z in zips
             if z["sha256"].startswith(_stored_zip(s["file_name"]))}
    assert {s["zip_sha256"]: s["protocollo"] for s in submitted} == {z["sha256"]: at_ts[z["sha256"]] for z in zips}
    # the instance was bigger than one zip (E2E_MAX_ZIP_BYTES): several parts of one structure
    per_structure = collections.Counter(z["name"].split("_")[2] for z in zips)
    assert max(per_structure.values()) >= 2, [z["name"] for z in zips]
    # every processed file's PDF receipt (RicevutaPdf) is kept with the instance's files
    receipts = await pool.fetch("SELECT * FROM instance_files WHERE instance = $1 AND kind = 'ts-receipt'", instance)
    assert sorted(r["part"] for r in receipts) == sorted(z["part"] for z in zips)
    zip_of_part = {z["part"]: z["sha256"] for z in zips}
    for receipt in receipts:
        pdf = FileStore(platform.settings.files_dir).path(receipt["sha256"]).read_bytes()
        assert pdf.startswith(b"%PDF") and receipt["name"].endswith(f"_{at_ts[zip_of_part[receipt['part']]]}.pdf")


async def test_documents_sistema_ts_reports_in_error_end_confirmed_with_errors_and_are_named_in_a_ts_errors_file(
        platform, pool, behaviour):
    instance = await _formatted_730(platform, "204", "2026-07")
    zips = await _zips(pool, instance)
    numbers = _document_numbers(platform, zips[0]["sha256"])
    in_error = sorted(set(numbers[:2]))
    assert len(in_error) == 2, numbers
    await behaviour(error_documents=in_error)

    await _send_730(platform, instance)

    row = await _wait_state(pool, instance, FINAL)
    assert row["state"] == InstanceState.CONFIRMED_WITH_ERRORS.value, dict(row)
    error_files = await pool.fetch("SELECT * FROM instance_files WHERE instance = $1 AND kind = 'ts-errors'",
                                   instance)
    assert error_files, "Confirmed with errors carries the per-document errors as a ts-errors file"
    rows = []
    for ref in error_files:
        text = FileStore(platform.settings.files_dir).path(ref["sha256"]).read_text(encoding="utf-8")
        rows += list(csv.DictReader(io.StringIO(text), delimiter=";"))
    assert {r["DOCUMENTO FISCALE NUMERO"] for r in rows} == set(in_error)
    every_number = [n for z in zips for n in _document_numbers(platform, z["sha256"])]
    assert len(rows) == sum(every_number.count(n) for n in in_error), rows
    assert all(r["CODICE ERRORE"] == "SIM02" for r in rows), rows
    assert "CF PROPRIETARIO" not in rows[0], "the feedback file never carries the TS user's codice fiscale"


async def test_a_wrong_pincode_ends_the_instance_rejected_with_the_intake_code_in_the_reason(platform, pool):
    instance = await _formatted_730(platform, "205", "2026-07")
    zips = await _zips(pool, instance)
    before = _submissions_per_zip(await _sim_submissions(platform), zips)

    await _send_730(platform, instance, pincode="9999999999")

    row = await _wait_state(pool, instance, FINAL)
    assert row["state"] == InstanceState.REJECTED.value, dict(row)
    assert row["summary"] and "104" in row["summary"] and "PINCODE ERRATO" in row["summary"], dict(row)
    assert before == _submissions_per_zip(await _sim_submissions(platform), zips) == {z["name"]: 0 for z in zips}
    (final,) = await _events_on(platform.settings.kafka_bootstrap, "flows.ts-feedback-received",
                                lambda b: b["instance"] == instance and b["instance_outcome"] is not None)
    assert final["instance_outcome"] == "rejected" and "104" in final["reason"], final


async def test_a_gateway_killed_after_sistema_ts_accepted_a_zip_adopts_that_protocollo_and_never_sends_it_twice(
        platform, pool):
    """The window: TS has accepted the zip, the gateway has not recorded the protocollo. The gateway
    runs as a process of its own (`gateway_process`); the simulator, in the test's event loop, records
    an accepted submission (appends it to its list) before it answers: the test replaces that list with
    one whose `append` SIGKILLs the gateway process on the spot, so the answer never reaches it. A delay
    would not do: the simulator delays before reading the request, and a request whose client died is
    never accepted. Restarted, the gateway must find the part "sending", ask EsitoInvii what TS received
    since, and adopt that protocollo instead of sending the zip again."""
    instance = await _formatted_730(platform, "206", "2026-07")
    zips = await _zips(pool, instance)
    ours = {z["sha256"] for z in zips}
    simulator = platform.simulator
    accepted_when_killed: list[Any] = []

    async with gateway_process(platform, "killed-on-accept") as gateway:
        class KillTheGatewayOnAccept(list):  # type: ignore[type-arg]
            def append(self, submission: Any) -> None:
                super().append(submission)
                if any(sha.startswith(_stored_zip(submission.file_name)) for sha in ours) \
                        and not accepted_when_killed:
                    accepted_when_killed.append(submission)
                    _sigkill(gateway)

        simulator.submissions = KillTheGatewayOnAccept(simulator.submissions)
        try:
            await _send_730(platform, instance)
            async with asyncio.timeout(60):
                while not accepted_when_killed:
                    await asyncio.sleep(0.05)
            assert await asyncio.wait_for(gateway.wait(), 10) == -signal.SIGKILL
        finally:
            simulator.submissions = list(simulator.submissions)
        (in_the_window,) = accepted_when_killed
        window_zip = next(sha for sha in ours if sha.startswith(_stored_zip(in_the_window.file_name)))
        # what the dead gateway left (no gateway runs yet): TS has the zip, the ledger says "sending", no protocollo
        assert _submissions_per_zip(await _sim_submissions(platform), zips) == {
            z["name"]: int(z["sha256"] == window_zip) for z in zips}
        part = await pool.fetchrow("SELECT * FROM ts_submission_part WHERE instance = $1 AND zip_sha256 = $2",
                                   instance, window_zip)
        assert part is not None and part["state"] == "sending" and part["protocollo"] is None, part and dict(part)
        # the sealed box survived the kill outside the history: the restarted gateway opens it from there
        box = await _box(pool, instance)
        assert box is not None, "the dead gateway's submission lost its sealed credentials"
        assert box["key_id"] == key_id((platform.settings.keys_dir / PUBLIC_KEY_FILE).read_bytes())
        assert not await pool.fetchval("SELECT count(*) FROM events WHERE strpos(data::text, $1) > 0", box["sealed"])
    # the gateway restarted (in the test process): its dead predecessor still holds the group's partitions
    # until its Kafka session times out, and the restarted one's resume pass begins once its group is joined. A hang
    # guard: that alone is some 10 s (8-11 s measured to the end at load 2), 120 s was too close on a loaded machine
    row = await _wait_state(pool, instance, FINAL, timeout=180)
    assert row["state"] == InstanceState.CONFIRMED.value, f"{row['state']}: {row['summary']}"
    assert await _box(pool, instance) is None, "the box outlived its submission"
    submissions = await _sim_submissions(platform)
    assert _submissions_per_zip(submissions, zips) == {z["name"]: 1 for z in zips}
    recorded = await pool.fetchval("SELECT protocollo FROM ts_submission_part WHERE instance = $1 AND zip_sha256 = $2",
                                   instance, window_zip)
    assert recorded == in_the_window.protocollo
    submitted = await _events_on(platform.settings.kafka_bootstrap, "flows.ts-submitted",
                                 lambda b: b["instance"] == instance, len(zips))
    assert {s["zip_sha256"]: s["protocollo"] for s in submitted}[window_zip] == in_the_window.protocollo


async def test_a_rejected_send_with_a_wrong_password_can_be_sent_again_and_ends_confirmed(platform, pool):
    """TS refuses the password (HTTP 401): Rejected at once, with the reason, and no retry that could
    lock the TS account. The operator sends again with the right password: only then do the zips go,
    once each, and the instance ends Confirmed; the history keeps both attempts."""
    instance = await _formatted_730(platform, "201", "2026-06")
    zips = await _zips(pool, instance)

    await _send_730(platform, instance, password="Not-The-Password-1")
    row = await _wait_state(pool, instance, FINAL)
    assert row["state"] == InstanceState.REJECTED.value, dict(row)
    assert "HTTP 401" in (row["summary"] or "") and "Not-The-Password-1" not in (row["summary"] or ""), dict(row)
    assert _submissions_per_zip(await _sim_submissions(platform), zips) == {z["name"]: 0 for z in zips}

    assert await _box(pool, instance) is None, "the refused credentials' box outlived the Rejected outcome"

    await _send_730(platform, instance)
    row = await _wait_state(pool, instance, {InstanceState.CONFIRMED.value})
    assert _submissions_per_zip(await _sim_submissions(platform), zips) == {z["name"]: 1 for z in zips}
    outcomes = [json.loads(r["data"])["instance_outcome"] for r in await pool.fetch(
        "SELECT data::text AS data FROM events WHERE stream_id = $1 AND type = 'flows.ts-feedback-received' "
        "ORDER BY version", instance_stream(instance))]
    assert [o for o in outcomes if o] == ["rejected", "confirmed"]
    assert await _box(pool, instance) is None
    # the history keeps who asked, when for, and which key the box was sealed to; never the box
    current = key_id((platform.settings.keys_dir / PUBLIC_KEY_FILE).read_bytes())
    assert [(r["requested_by"], r["transmission_date"], r["sealed_to_key"], "sealed_credentials" in r)
            for r in await _requests(pool, instance)] == [("e2e.ts", italian_today().isoformat(), current, False)] * 2


async def test_a_send_asked_again_while_the_first_waited_is_not_sent_after_the_first_is_rejected(platform, pool):
    """Two requests that read the same history (the console's form sent twice, or `flows send-730` again after
    a timeout): the first goes, and TS refuses its password. The second repeats it: acknowledged, never sent and
    never dead-lettered, even though a Rejected instance may be sent again: a request the operator makes after
    reading the rejection goes (it used to go at once, so a wrong password was tried on the TS account twice)."""
    instance = await _formatted_730(platform, "206", "2026-09", services=60)
    zips = await _zips(pool, instance)
    seen = await pool.fetchval("SELECT max(version) FROM events WHERE stream_id = $1", instance_stream(instance))
    await _send_730(platform, instance, password="Not-The-Password-2", seen_version=seen)
    repeat = await _send_730(platform, instance, seen_version=seen)  # the right password, but asked as a repeat
    # The gateway records a handled command in the transaction of its effects; a refused one (dead-lettered) rolls
    # that back: recorded, the repeat was acknowledged, not refused.
    async with asyncio.timeout(120):
        while not await pool.fetchval("SELECT 1 FROM processed_message WHERE consumer = 'ts-gateway' "
                                      "AND message_id = $1", repeat):
            await asyncio.sleep(0.2)
    row = await _wait_state(pool, instance, FINAL)
    assert row["state"] == InstanceState.REJECTED.value and "HTTP 401" in (row["summary"] or ""), dict(row)
    after = await pool.fetchval("SELECT max(version) FROM events WHERE stream_id = $1", instance_stream(instance))
    await _send_730(platform, instance, seen_version=after)  # read the rejection, sent again
    await _wait_state(pool, instance, {InstanceState.CONFIRMED.value})
    assert _submissions_per_zip(await _sim_submissions(platform), zips) == {z["name"]: 1 for z in zips}
    # the repeat recorded nothing: the requests recorded are the first and the one asked after the rejection
    assert [r["seen_version"] for r in await _requests(pool, instance)] == [seen, after]


async def test_a_key_rotated_mid_submission_still_opens_the_old_box_after_a_restart_and_is_deleted_once_unused(
        platform, pool, behaviour, monkeypatch):
    """Instance X is sent (sealed to key K1) and held in Waiting feedback by TS; the operator runs
    `flows ts rotate-key` (K2); the gateway (a process of its own, `gateway_process`) is killed with
    SIGKILL and restarted, so it must open X's stored box with the retired K1. Y, sent after the
    rotation, is sealed to K2. X ends Confirmed, its box goes, and the next resume pass deletes K1's
    private key (the grace for commands still on Kafka set to 0 here), not before."""
    keys_dir = platform.settings.keys_dir
    retired = keys_dir / gateway_keys.RETIRED_DIR
    x = await _formatted_730(platform, "202", "2026-07")
    y = await _formatted_730(platform, "202", "2026-08")
    first = key_id((keys_dir / PUBLIC_KEY_FILE).read_bytes())
    await behaviour(polls_in_progress=1_000_000)  # TS keeps X "in progress" until told otherwise

    async with gateway_process(platform, "killed-after-rotation") as gateway:
        await send_730_cli(platform, x, wait=False)
        await _wait_state(pool, x, {InstanceState.WAITING_FEEDBACK.value})
        box = await _box(pool, x)
        assert box is not None and box["key_id"] == first

        rotation = await flows_cli(platform, "ts", "rotate-key")
        assert rotation.code == 0, rotation.text
        second = key_id((keys_dir / PUBLIC_KEY_FILE).read_bytes())
        assert second != first and f"new seals use key {second}" in rotation.text
        assert (retired / f"{first}.pem").is_file()

        # in the middle of X's polling, K1 retired: the kill waits for the gateway's first poll of X (Waiting
        # feedback is recorded before it, and on a loaded machine the rotation's CLI can end before that poll)
        x_zips = {z["sha256"][:16] for z in await _zips(pool, x)}  # as the names TS received carry them
        deadline = time.monotonic() + 60
        while not await _polls(platform, x_zips):
            assert time.monotonic() < deadline, "the gateway never polled X"
            assert gateway.returncode is None, "the gateway died before it polled X"
            await asyncio.sleep(0.05)
        _sigkill(gateway)
        assert await asyncio.wait_for(gateway.wait(), 10) == -signal.SIGKILL
        polls_before = await _polls(platform, x_zips)
        assert polls_before > 0, "the killed gateway never polled X"
        monkeypatch.setattr(gateway_keys, "RETIRED_KEY_GRACE_S", 0.0)  # for the gateway that restarts now
    # the restarted gateway's first resume pass ran (it polls X again), and kept K1: X's box needs it. A hang guard:
    # the pass begins once the restarted gateway's group is joined, after the killed one's Kafka session timed out
    # (8 s measured at load 2, most of it that session), which 60 s did not leave ten times over
    deadline = time.monotonic() + 180
    while await _polls(platform, x_zips) <= polls_before:
        assert time.monotonic() < deadline, "the restarted gateway never polled X again within 180 s"
        await asyncio.sleep(0.2)
    assert (retired / f"{first}.pem").is_file(), "K1 was deleted while X's box was sealed to it"

    await send_730_cli(platform, y, wait=False)
    await _wait_state(pool, y, {InstanceState.WAITING_FEEDBACK.value})
    box = await _box(pool, y)
    assert box is not None and box["key_id"] == second
    await behaviour()  # TS finishes processing

    for instance in (x, y):
        row = await _wait_state(pool, instance, FINAL)
        assert row["state"] == InstanceState.CONFIRMED.value, f"{instance}: {row['state']}: {row['summary']}"
        assert await _box(pool, instance) is None
    assert [r["sealed_to_key"] for r in await _requests(pool, x)] == [first]
    assert [r["sealed_to_key"] for r in await _requests(pool, y)] == [second]
    deadline = time.monotonic() + 30  # the resume pass runs every second here (the platform's pass_s; production 10 s)
    while (retired / f"{first}.pem").exists():
        assert time.monotonic() < deadline, "the retired key outlived the last submission sealed to it"
        await asyncio.sleep(0.2)
    assert key_id((keys_dir / PUBLIC_KEY_FILE).read_bytes()) == second
