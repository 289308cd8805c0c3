"""`flows send-730` refuses an instance it cannot send BEFORE asking for any credential, reading the instance from
a real database (it was a unit test with `check_sendable` replaced by a stub that always refused: it could not
tell whether the command checks the instance, nor what it reads)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from contracts import flows
from contracts.deadlines import italian_today
from services.cli.main import app
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream
from services.ts_gateway import sealing
from services.ts_gateway.keys import GatewayKeys
from services.ts_gateway.payment_year import last_day_for
from tests.integration.test_ts_overlap import ledger_part, payment_documents

pytestmark = pytest.mark.integration
PROMPTS = ("C.F. proprietario", "TS user", "TS password", "Pincode", "Transmission date")


async def _checked(url: str, instance: int, flow_type: flows.FlowType) -> None:
    """An instance loaded and Checked (not Formatted), as the loader records it."""
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        store = EventStore(pool, source="/test", projections=FLOW_PROJECTIONS)
        running = flows.LoadRunning(instance=instance, request_id=uuid.uuid4(), flow_type=flow_type, version="2020",
                                    ente="201",
                                    period=flows.Period.model_validate({"start": "2026-10-01", "end": "2026-10-31"}),
                                    requested_by="op.rossi")
        checked = flows.LoadChecked(instance=instance, source_instance=instance + 1, counts={"services": 3})
        await store.append(instance_stream(instance), [
            NewEvent(flows.TYPE_OF[flows.LoadRunning], running.model_dump(mode="json"), actor="loader"),
            NewEvent(flows.TYPE_OF[flows.LoadChecked], checked.model_dump(mode="json"), actor="loader")],
            expected_version=0, key=str(instance))
    finally:
        await pool.close()


async def _prepared(url: str) -> None:
    """The read models' tables, as the services create them when they start."""
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
    finally:
        await pool.close()


@pytest.fixture
def cli_env(fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI on `fresh_db`, with a real gateway key pair in its keys folder (the command needs the public key)."""
    monkeypatch.setattr(sealing, "KEY_BITS", 2048)  # a 3072-bit key takes about a second to make here
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    GatewayKeys(keys)  # the gateway makes its key pair when it first starts
    assert (keys / sealing.PUBLIC_KEY_FILE).is_file()
    asyncio.run(_prepared(fresh_db))
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    monkeypatch.setenv("FLOWS_KEYS_DIR", str(keys))
    return fresh_db


@pytest.mark.parametrize(("flow_type", "says"), [
    (flows.FlowType.FLUSSO_C, "instance 1947 is FLUSSO_C: only 730 instances are sent to Sistema TS"),
    (flows.FlowType.FLUSSO_730, "instance 1947 is Checked: only Formatted (or Rejected, to resend) instances can be"),
])
def test_send_730_refuses_an_instance_before_asking_for_any_credential(cli_env: str, flow_type: flows.FlowType,
                                                                       says: str) -> None:
    asyncio.run(_checked(cli_env, 1947, flow_type))
    result = CliRunner().invoke(app, ["send-730", "1947"], input="SHOULD-NOT-BE-READ\n" * 5,
                                env={"FLOWS_DEBUG": "", "COLUMNS": "200"})
    out = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert says in out
    assert not [p for p in PROMPTS if p in out], out  # nothing was asked
    assert "SHOULD-NOT-BE-READ" not in out


def test_send_730_of_an_instance_that_does_not_exist_names_it_before_asking_anything(cli_env: str) -> None:
    result = CliRunner().invoke(app, ["send-730", "4242"], input="SHOULD-NOT-BE-READ\n" * 5,
                                env={"FLOWS_DEBUG": "", "COLUMNS": "200"})
    out = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "there is no instance 4242" in out and not [p for p in PROMPTS if p in out], out


async def _formatted_730(pool: Any, instance: int, paid: date | None = None) -> None:
    """A Formatted 730 instance of entity 201 and August 2026 (its snapshot instance + 1) holding two payment
    documents D1 and D2, paid on `paid` (default today: test_ts_overlap.payment_documents)."""
    store = EventStore(pool, source="/test", projections=FLOW_PROJECTIONS)
    zipped = flows.FileRef(name=f"730_{instance}.zip", kind="730-zip", records=2, bytes=6, sha256="a" * 64,
                           media_type="application/zip")
    events = [
        flows.LoadRunning(instance=instance, request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_730,
                          version="2020", ente="201", requested_by="op.rossi",
                          period=flows.Period.model_validate({"start": "2026-08-01", "end": "2026-08-31"})),
        flows.LoadChecked(instance=instance, source_instance=instance + 1, counts={}),
        flows.FormattingStarted(instance=instance), flows.Formatted(instance=instance, files=[zipped])]
    await store.append(instance_stream(instance), [
        NewEvent(flows.TYPE_OF[type(e)], e.model_dump(mode="json"), actor="test") for e in events],
        expected_version=0, key=str(instance))
    await payment_documents(pool, instance + 1, "201", ["D1", "D2"], paid)


async def _formatted_730s(url: str) -> None:
    """Two Formatted 730 instances of entity 201 and August 2026 holding the same two payment documents: 1950 (its
    snapshot 1951), whose file TS accepted, and 1952 (its snapshot 1953)."""
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        for instance in (1950, 1952):
            await _formatted_730(pool, instance)
        await ledger_part(pool, 1950, 1, "confirmed", "26091012000000001")
    finally:
        await pool.close()


def test_send_730_says_which_documents_ts_has_already_and_sends_nothing_unless_told_to(cli_env: str) -> None:
    asyncio.run(_formatted_730s(cli_env))
    result = CliRunner().invoke(app, ["send-730", "1952"], input="n\n" + "SHOULD-NOT-BE-READ\n" * 5,
                                env={"FLOWS_DEBUG": "", "COLUMNS": "200"})
    out = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert ("Sistema TS already has payment documents of instance 1952: 2 in instance 1950 (protocollo "
            "26091012000000001)") in out
    assert "Send it anyway? [y/N]" in out and "nothing sent" in out
    assert not [p for p in PROMPTS if p in out], out  # no credential was asked
    # the instance TS accepted has nothing another accepted instance holds: it is not warned of
    quiet = CliRunner().invoke(app, ["send-730", "1950"], input="\x04", env={"FLOWS_DEBUG": "", "COLUMNS": "200"})
    assert "already has" not in quiet.output and "C.F. proprietario" in quiet.output, quiet.output



async def _formatted_paid(url: str, paid: dict[int, date | None]) -> None:
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        for instance, day in paid.items():
            await _formatted_730(pool, instance, day)
    finally:
        await pool.close()


def _send(*args: str, answers: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["send-730", *args], input=answers, env={"FLOWS_DEBUG": "", "COLUMNS": "200"})
    return result.exit_code, " ".join(result.output.split())


def test_send_730_says_which_documents_ts_refuses_for_their_payment_year_on_the_day_it_would_send(
        cli_env: str) -> None:
    """TS takes a payment only in its year and in the January after (services.ts_gateway.payment_year): asked of
    today before any credential, of the transmission date given as the option, and again of a day typed at the
    prompt; nothing is sent unless the operator says so."""
    today = italian_today()
    asyncio.run(_formatted_paid(cli_env, {1960: date(2020, 3, 2), 1962: None}))
    code, out = _send("1960", answers="n\n" + "SHOULD-NOT-BE-READ\n" * 5)
    assert code == 1, out
    assert ("Sistema TS takes a payment document only in its payment year and, for the year before, in January (up "
            f"to the 730's deadline when it moves to the next working day): sent on {today}, documents of instance "
            "1960 will be refused (2 paid in 2020); they would all have been taken only from 2020-01-01 to 2021-01-31, "
            "which is past.") in out
    assert "Send it anyway? [y/N]" in out and "nothing sent" in out
    assert not [p for p in PROMPTS if p in out], out  # no credential was asked
    code, out = _send("1960", answers="y\n\x04")  # told, and sending anyway: the credentials are asked
    assert "will be refused (2 paid in 2020)" in out and "C.F. proprietario" in out and "nothing sent" not in out

    # 1962's documents are paid today: taken on any day of this year and of the January after (up to the 730's
    # deadline, moved past a weekend), not one day later
    last_day = last_day_for(today.year)
    day_after = last_day + timedelta(days=1)
    code, out = _send("1962", "--transmission-date", last_day.isoformat(), answers="\x04")
    assert "will be refused" not in out and "C.F. proprietario" in out, out
    code, out = _send("1962", "--transmission-date", day_after.isoformat(),
                      answers="n\n" + "SHOULD-NOT-BE-READ\n" * 5)
    assert code == 1, out
    # the days that take them all are still to come: said from today on, not as past (as they are the day after)
    assert (f"sent on {day_after}, documents of instance 1962 will be refused (2 paid in {today.year}); "
            f"they are all taken from {today} to {last_day}.") in out
    assert "nothing sent" in out and not [p for p in PROMPTS if p in out], out
    # the day typed at the prompt, after the credentials: asked again, and nothing sent on "no"
    code, out = _send("1962", answers=f"RSSMRA80A01H501U\nuser\npassword\n1234567890\n{day_after}\nn\n")
    assert code == 1, out
    assert "Transmission date" in out and "will be refused (2 paid in" in out and "nothing sent" in out, out
