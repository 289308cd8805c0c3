"""`flows send-730` refuses an instance it cannot send BEFORE asking for any credential, reading the instance from
a real database (it was a unit test with `check_sendable` replaced by a stub that always refused: it could not
tell whether the command checks the instance, nor what it reads)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contracts import flows
from services.cli.main import app
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream
from services.ts_gateway import sealing
from services.ts_gateway.keys import GatewayKeys

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
