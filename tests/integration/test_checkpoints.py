"""Signed checkpoints on the real stack: whoever can write the database still cannot rewrite a stream,
drop its last event or edit one row without `flows replay --verify` naming the stream; a proof
checks with the public key alone and fails with another key."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from contracts import flows
from services.cli.main import app
from services.runtime.checkpoints import public_pem
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore, NewEvent, event_hash
from services.runtime.host import prepare_database
from services.runtime.kafkaread import read_to_end
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream

pytestmark = pytest.mark.integration
WIDE = {"COLUMNS": "250"}


async def _instances_async(url: str, numbers: list[int]) -> None:
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
        store = EventStore(pool, source="/test", projections=FLOW_PROJECTIONS)
        for n in numbers:
            running = flows.LoadRunning(instance=n, request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C,
                                        version="2020", ente="201",
                                        period=flows.Period.model_validate({"start": "2026-10-01",
                                                                            "end": "2026-10-31"}),
                                        requested_by="op.rossi")
            checked = flows.LoadChecked(instance=n, source_instance=n + 1000, counts={"services": 3})
            await store.append(instance_stream(n), [
                NewEvent("flows.load-running", running.model_dump(mode="json"), actor="loader"),
                NewEvent("flows.load-checked", checked.model_dump(mode="json"), actor="loader")],
                expected_version=0, key=str(n))
    finally:
        await pool.close()


async def _sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _rewrite_stream_with_recomputed_hashes(url: str, stream: str) -> None:
    """What an insider with write access would do: change a fact, then fix every hash after it."""
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        store = EventStore(pool, source="/test")
        events = await store.read_stream(stream)
        prev = bytes(32)
        async with pool.acquire() as conn, conn.transaction():
            for event in events:
                data = dict(event.data)
                if event.type == "flows.load-checked":
                    data["counts"] = {"services": 3000}
                digest = event_hash(prev, stream_id=event.stream_id, version=event.version, event_id=event.id,
                                    type=event.type, data=data, actor=event.actor, recorded_at=event.recorded_at,
                                    metadata=event.metadata)
                await conn.execute("UPDATE events SET data = $1::jsonb, prev_hash = $2, hash = $3 "
                                   "WHERE stream_id = $4 AND version = $5",
                                   data, prev, digest, stream, event.version)
                prev = digest
        assert await store.verify_stream(stream) == [], "the rewrite must leave a chain that verifies on its own"
    finally:
        await pool.close()


@pytest.fixture
def audit_env(fresh_db, tmp_path, monkeypatch, settings):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    monkeypatch.setenv("FLOWS_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("FLOWS_CHECKPOINT_KEY", str(tmp_path / "keys" / "checkpoint.key"))
    monkeypatch.setenv("FLOWS_CHECKPOINTS_DIR", str(tmp_path / "checkpoints"))
    asyncio.run(_instances_async(fresh_db, [1947, 1948, 1949]))
    return tmp_path


def _checkpoint(runner: CliRunner) -> None:
    taken = runner.invoke(app, ["audit", "checkpoint"], env=WIDE)
    assert taken.exit_code == 0, taken.output
    assert "checkpoint 1 signed: 3 stream(s), 6 event(s)" in taken.output


TAMPERS = {
    "one row edited": lambda url: _sql(url, """UPDATE events SET data = jsonb_set(data, '{counts,services}', '300')
                                              WHERE stream_id = 'instance-1948' AND version = 2"""),
    "stream rewritten with recomputed hashes": lambda url: _rewrite_stream_with_recomputed_hashes(url, "instance-1948"),
    # the append-only trigger stops a mistake, not the owner of the database
    "last event deleted": lambda url: _sql(url, "ALTER TABLE events DISABLE TRIGGER events_no_delete",
                                           "DELETE FROM outbox WHERE event_id IN (SELECT event_id FROM events "
                                           "WHERE stream_id = 'instance-1948' AND version = 2)",
                                           "DELETE FROM events WHERE stream_id = 'instance-1948' AND version = 2",
                                           "ALTER TABLE events ENABLE TRIGGER events_no_delete"),
}
EXPECTED = {
    "one row edited": "instance-1948: its events up to version 2 hash to",
    "stream rewritten with recomputed hashes": "instance-1948: its events up to version 2 hash to",
    "last event deleted": "instance-1948: has 1 event(s), checkpoint 1 signed version 2: events were deleted",
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_replay_verify_names_the_stream_tampered_after_the_checkpoint(audit_env, fresh_db, tamper):
    runner = CliRunner()
    _checkpoint(runner)
    intact = runner.invoke(app, ["replay", "--all", "--verify"], env=WIDE)
    assert intact.exit_code == 0, intact.output
    assert "every stream matches signed checkpoint 1" in intact.output

    asyncio.run(TAMPERS[tamper](fresh_db))
    # appending to another stream after the checkpoint is not tampering
    asyncio.run(_instances_async(fresh_db, [1950]))
    tampered = runner.invoke(app, ["replay", "--all", "--verify"], env=WIDE)
    assert tampered.exit_code == 2, tampered.output
    assert "streams differ from signed checkpoint 1" in tampered.output
    assert EXPECTED[tamper] in " ".join(tampered.output.split()), tampered.output
    for untouched in ("instance-1947", "instance-1949", "instance-1950"):
        assert f"{untouched}:" not in tampered.output
    if tamper == "stream rewritten with recomputed hashes":
        assert "every hash chain verifies" in tampered.output  # only the checkpoint catches this one
    only_one = runner.invoke(app, ["replay", "1948", "--verify"], env=WIDE)
    assert only_one.exit_code == 2 and "instance-1948" in only_one.output, only_one.output
    other = runner.invoke(app, ["replay", "1947", "--verify"], env=WIDE)
    assert "every stream matches signed checkpoint 1" in other.output, other.output


def test_a_proof_checks_with_the_public_key_alone_and_fails_with_another(audit_env, settings):
    runner = CliRunner()
    _checkpoint(runner)
    key_file = Path(os.environ["FLOWS_CHECKPOINT_KEY"])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    proof_file, public, stranger = audit_env / "proof.json", audit_env / "public.pem", audit_env / "other.pem"
    assert runner.invoke(app, ["audit", "prove", "1948", "--out", str(proof_file)]).exit_code == 0
    assert runner.invoke(app, ["audit", "public-key", "--out", str(public)]).exit_code == 0
    stranger.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    proof = json.loads(proof_file.read_text())
    assert proof["head"]["stream_id"] == "instance-1948" and proof["checkpoint"]["tree_size"] == 3

    good = runner.invoke(app, ["audit", "verify-proof", str(proof_file), "--public-key", str(public)], env=WIDE)
    assert good.exit_code == 0, good.output
    assert "proof verifies" in good.output
    bad = runner.invoke(app, ["audit", "verify-proof", str(proof_file), "--public-key", str(stranger)], env=WIDE)
    assert bad.exit_code == 2, bad.output
    assert "signature does not verify" in bad.output

    forged = dict(proof, head=dict(proof["head"], version=1))
    proof_file.write_text(json.dumps(forged))
    lying = runner.invoke(app, ["audit", "verify-proof", str(proof_file), "--public-key", str(public)], env=WIDE)
    assert lying.exit_code == 2 and "does not lead to the signed root" in lying.output, lying.output

    missing = runner.invoke(app, ["audit", "prove", "4242"], env=WIDE)
    assert missing.exit_code == 1 and "instance-4242 is not in checkpoint 1" in missing.output

    # the checkpoint went to Kafka too, signed fields only
    cp = json.loads((audit_env / "checkpoints" / "checkpoint-1.json").read_text())
    published = asyncio.run(_published_roots(settings.kafka_bootstrap))
    assert cp["root"] in published


def test_a_lost_signing_key_is_never_replaced_without_being_asked(audit_env, fresh_db):
    """The key file moved away (lost, or a restore that forgot it): `flows audit checkpoint` made a new key without a
    word and signed checkpoint 2 with it, and `flows replay --all --chains-only` then said every stream matched, while
    the auditors hold only the old public key. Now the checkpoint, the public key and the audit service's start all
    refuse, naming the key that signed the last checkpoint; `--new-key` makes a new one on purpose."""
    runner = CliRunner()
    _checkpoint(runner)
    key_file = Path(os.environ["FLOWS_CHECKPOINT_KEY"])
    first = json.loads((audit_env / "checkpoints" / "checkpoint-1.json").read_text())["key_id"]
    key_file.rename(key_file.with_name("elsewhere.key"))
    for args in (["audit", "checkpoint"], ["audit", "public-key"]):
        refused = runner.invoke(app, args, env=WIDE)
        assert refused.exit_code == 1, refused.output
        said = " ".join(refused.output.split())
        assert f"the checkpoint signing key {key_file} is missing, and checkpoint 1" in said, said
        assert f"was signed by key {first}: restore the key file from its backup" in said, said
        assert not key_file.exists(), "no key made in its place"
    assert not (audit_env / "checkpoints" / "checkpoint-2.json").exists()

    renewed = runner.invoke(app, ["audit", "checkpoint", "--new-key"], env=WIDE)
    assert renewed.exit_code == 0, renewed.output
    second = json.loads((audit_env / "checkpoints" / "checkpoint-2.json").read_text())["key_id"]
    assert "checkpoint 2 signed" in renewed.output and second != first and key_file.exists()
    again = runner.invoke(app, ["audit", "checkpoint"], env=WIDE)
    assert again.exit_code == 0 and "nothing appended since; latest is" in again.output, again.output


async def _published_roots(bootstrap: str) -> set[str]:
    return {json.loads(r.value)["root"] for r in await read_to_end(bootstrap, ["audit.checkpoint"])}


async def test_the_audit_service_signs_periodically_and_only_when_something_was_appended(fresh_db, tmp_path,
                                                                                         settings, monkeypatch):
    from services.audit.app import main
    from services.runtime import checkpoints

    ticks = 0  # the service's ticks: each asks for a checkpoint, taken only when something was appended
    take = checkpoints.take

    async def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal ticks
        ticks += 1
        return await take(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "take", counted)
    await _instances_async(fresh_db, [7])
    cfg = settings.model_copy(update={"database_url": fresh_db, "checkpoint_key": tmp_path / "k" / "signing.key",
                                      "checkpoints_dir": tmp_path / "cps", "checkpoint_interval_s": 0.3})
    stop = asyncio.Event()
    service = asyncio.create_task(main(cfg, stop))
    try:
        async with asyncio.timeout(20):
            while not (tmp_path / "cps" / "checkpoint-1.json").exists():
                await asyncio.sleep(0.1)
            # three more ticks with nothing appended: no new checkpoint. Counted, not a second slept, which a loop
            # starved on a loaded machine may pass without a tick (the test could not fail then)
            first = ticks
            while ticks < first + 3:
                await asyncio.sleep(0.1)
            assert not (tmp_path / "cps" / "checkpoint-2.json").exists()
            await _instances_async(fresh_db, [8])
            while not (tmp_path / "cps" / "checkpoint-2.json").exists():
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await service
    second = json.loads((tmp_path / "cps" / "checkpoint-2.json").read_text())
    assert [h["stream_id"] for h in second["heads"]] == ["instance-7", "instance-8"]
    assert stat.S_IMODE((tmp_path / "k" / "signing.key").stat().st_mode) == 0o600


async def test_the_audit_service_does_not_start_without_the_key_that_signed_its_checkpoints(fresh_db, tmp_path,
                                                                                           settings):
    """The audit service signs every interval: started with its key file gone, it made a new key at once. Now it
    refuses to start, saying which key is missing (its health check says the same while it runs)."""
    from services.audit.app import main
    from services.runtime import checkpoints

    await _instances_async(fresh_db, [9])
    key, directory = tmp_path / "k" / "signing.key", tmp_path / "cps"
    cfg = settings.model_copy(update={"database_url": fresh_db, "checkpoint_key": key, "checkpoints_dir": directory,
                                      "checkpoint_interval_s": 0.3})
    pool = await create_pool(fresh_db, min_size=1, max_size=2)
    try:
        await checkpoints.take(pool, key, directory, None)
    finally:
        await pool.close()
    key.unlink()
    with pytest.raises(checkpoints.SigningKeyMissing, match="restore the key file from its backup"):
        await main(cfg, asyncio.Event())
    assert not key.exists() and [p.name for p in checkpoints.checkpoint_files(directory)] == ["checkpoint-1.json"]
