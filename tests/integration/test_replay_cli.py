"""`flows replay --verify` on a real database: silent when the log is intact, loud when a row was
rewritten behind the event store's back, and the read models rebuilt from the log equal the live ones, also on a
database whose read models were written before a migration changed their shape (0072, 0073)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from typer.testing import CliRunner

from contracts import flows
from services.cli.main import app
from services.cli.replay import all_projections
from services.console import auth
from services.console.access import record_access
from services.console.auth import Principal
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.host import prepare_database
from services.runtime.instances import new_event
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream
from tests.stack_urls import free_port

pytestmark = pytest.mark.integration


async def _an_instance_checked(url: str) -> None:
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
        store = EventStore(pool, source="/test", projections=FLOW_PROJECTIONS)
        running = flows.LoadRunning(instance=1947, request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C,
                                    version="2020", ente="201",
                                    period=flows.Period.model_validate({"start": "2026-10-01", "end": "2026-10-31"}),
                                    requested_by="op.rossi")
        checked = flows.LoadChecked(instance=1947, source_instance=1948, counts={"services": 3})
        await store.append(instance_stream(1947), [
            NewEvent("flows.load-running", running.model_dump(mode="json"), actor="loader"),
            NewEvent("flows.load-checked", checked.model_dump(mode="json"), actor="loader")],
            expected_version=0, key="1947")
    finally:
        await pool.close()


async def _tamper(url: str) -> None:
    """Instance 1947's Checked rewritten behind the event store's back (its services 3 -> 300), on a connection that
    may write even where the database's transactions are read-only by default."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET default_transaction_read_only = off")
        await conn.execute("""UPDATE events SET data = jsonb_set(data, '{counts,services}', '300')
                              WHERE stream_id = 'instance-1947' AND version = 2""")
    finally:
        await conn.close()


def test_replay_verify_passes_on_an_intact_log_and_reports_a_tampered_row(fresh_db, monkeypatch):
    asyncio.run(_an_instance_checked(fresh_db))
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    runner = CliRunner()

    intact = runner.invoke(app, ["replay", "--all", "--verify"], env={"COLUMNS": "200"})
    assert intact.exit_code == 0, intact.output
    assert "every hash chain verifies" in intact.output
    assert "equal the live ones" in intact.output

    asyncio.run(_tamper(fresh_db))
    tampered = runner.invoke(app, ["replay", "1947", "--verify"], env={"COLUMNS": "200"})
    assert tampered.exit_code == 2, tampered.output
    assert "hash chain broken" in tampered.output
    assert "instance-1947" in tampered.output
    # the read model still holds what was recorded at the time; rebuilt from the tampered log it differs
    assert "read models differ from the log" in tampered.output


def test_a_read_only_database_verifies_its_chains_with_chains_only_and_refuses_the_rebuild_saying_why(
        fresh_db, monkeypatch):
    """An auditor may be given a read-only replica and nothing more. PostgreSQL itself refuses the writes here (the
    database's default_transaction_read_only, which makes every transaction read-only as a standby's are): the
    rebuild, which writes a scratch schema, is refused up front in one line that says what to do; --chains-only
    verifies the chains there, and still finds a row rewritten behind the event store's back."""
    asyncio.run(_an_instance_checked(fresh_db))
    name = fresh_db.rpartition("/")[2]

    async def set_read_only(on: bool) -> None:
        conn = await asyncpg.connect(fresh_db)
        try:
            await conn.execute("SET default_transaction_read_only = off")
            await conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = {'on' if on else 'off'}")
        finally:
            await conn.close()

    async def refuses_writes() -> bool:
        conn = await asyncpg.connect(fresh_db)
        try:
            await conn.execute("CREATE TABLE written (id int)")
        except asyncpg.ReadOnlySQLTransactionError:
            return True
        finally:
            await conn.close()
        return False

    asyncio.run(set_read_only(True))
    assert asyncio.run(refuses_writes())
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    runner = CliRunner()

    refused = runner.invoke(app, ["replay", "--all", "--verify"], env={"COLUMNS": "400", "FLOWS_DEBUG": ""})
    assert refused.exit_code == 1, refused.output
    assert " ".join(refused.output.split()) == (
        "error: this database is read-only (a standby, or a read-only user): rebuilding the read models writes a "
        "scratch schema, which it refuses. Give --chains-only to verify the hash chains and the latest signed "
        "checkpoint here, or run the rebuild against the primary")

    verified = runner.invoke(app, ["replay", "--all", "--chains-only"], env={"COLUMNS": "200"})
    assert verified.exit_code == 0, verified.output
    assert "every hash chain verifies" in verified.output
    assert "the read models were not rebuilt (--chains-only)" in verified.output

    asyncio.run(_tamper(fresh_db))
    tampered = runner.invoke(app, ["replay", "1947", "--chains-only"], env={"COLUMNS": "200"})
    assert tampered.exit_code == 2, tampered.output
    assert "hash chain broken" in tampered.output and "instance-1947" in tampered.output
    assert asyncio.run(refuses_writes())  # still read-only: nothing of the command wrote

    asyncio.run(set_read_only(False))  # the rebuild again where it may write: the tampered row is a difference
    rebuilt = runner.invoke(app, ["replay", "1947", "--verify"], env={"COLUMNS": "200"})
    assert rebuilt.exit_code == 2 and "read models differ from the log" in rebuilt.output, rebuilt.output


def test_on_a_real_hot_standby_chains_only_verifies_and_finds_a_tampered_row_and_the_rebuild_is_refused(
        fresh_db, monkeypatch):
    """The auditor's case for real: a streaming replica of the test stack's PostgreSQL (pg_basebackup -R, started as
    a hot standby), where every transaction is read-only because the server is in recovery. --chains-only verifies
    the chains there; a row rewritten on the primary reaches the standby and is found there; the rebuild is refused
    in the one line that says what to do."""
    from deploy.localstack.postgres import PG_SETTINGS, _pg_bin, _pg_env, _pg_runas

    asyncio.run(_an_instance_checked(fresh_db))
    primary = urlsplit(fresh_db)
    name = primary.path.lstrip("/")
    port = free_port(30, 90)
    runas = _pg_runas()
    folder = Path(tempfile.mkdtemp(prefix="flows-standby-"))
    if runas:
        os.chown(folder, runas["user"], runas["group"])
    data, log = folder / "data", folder / "postgres.log"

    def pg(*args: str) -> None:
        done = subprocess.run(list(args), capture_output=True, text=True, env=_pg_env(), timeout=120, check=False,
                              **runas)
        assert done.returncode == 0, done.stdout + done.stderr + (log.read_text() if log.exists() else "")

    async def standby_holds(services: str) -> None:
        """Until the standby replayed the primary's write: instance 1947's Checked with these services."""
        for _ in range(600):
            conn = await asyncpg.connect(standby)
            try:
                found = await conn.fetchval("SELECT data->'counts'->>'services' FROM events WHERE stream_id = "
                                            "'instance-1947' AND version = 2")
                assert await conn.fetchval("SELECT pg_is_in_recovery()")
            finally:
                await conn.close()
            if found == services:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the standby never replayed services = {services}")

    standby = f"postgresql://postgres@127.0.0.1:{port}/{name}"
    try:
        pg(_pg_bin("pg_basebackup"), "-h", str(primary.hostname), "-p", str(primary.port), "-U", "postgres",
           "-D", str(data), "-R", "-X", "stream", "-c", "fast")
        options = f"-h 127.0.0.1 -p {port} -k {folder} " + " ".join(f"-c {k}={v}" for k, v in PG_SETTINGS.items())
        pg(_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        asyncio.run(standby_holds("3"))
        monkeypatch.setenv("DATABASE_URL", standby)
        runner = CliRunner()

        refused = runner.invoke(app, ["replay", "--all", "--verify"], env={"COLUMNS": "400", "FLOWS_DEBUG": ""})
        assert refused.exit_code == 1, refused.output
        assert " ".join(refused.output.split()).startswith("error: this database is read-only (a standby, or a "
                                                          "read-only user): rebuilding the read models writes")

        verified = runner.invoke(app, ["replay", "--all", "--chains-only"], env={"COLUMNS": "200"})
        assert verified.exit_code == 0, verified.output
        assert "every hash chain verifies" in verified.output

        asyncio.run(_tamper(fresh_db))  # on the primary
        asyncio.run(standby_holds("300"))
        tampered = runner.invoke(app, ["replay", "1947", "--chains-only"], env={"COLUMNS": "200"})
        assert tampered.exit_code == 2, tampered.output
        assert "hash chain broken" in tampered.output and "instance-1947" in tampered.output
    finally:
        if (data / "postmaster.pid").exists():
            pg(_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "60", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_replay_of_an_instance_that_does_not_exist_is_an_error_like_every_command_s(fresh_db, monkeypatch):
    """`flows replay 99999` printed its own red line ('no stream instance-99999') and ended with the exit code of a
    replay that found the log tampered (2); every other command given an instance the platform does not have says
    `error: there is no instance N; ...` and exits 1 (services/cli/common.py, user_errors)."""
    asyncio.run(_an_instance_checked(fresh_db))
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    runner = CliRunner()
    shown = runner.invoke(app, ["show", "99999"], env={"COLUMNS": "200"})
    assert shown.exit_code == 1 and "error: there is no instance 99999" in shown.output, shown.output
    for args in (["replay", "99999"], ["replay", "99999", "--verify"]):
        replayed = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert (replayed.exit_code, replayed.output) == (shown.exit_code, shown.output), args
    # an instance that exists is replayed as before
    assert runner.invoke(app, ["replay", "1947", "--verify"], env={"COLUMNS": "200"}).exit_code == 0


def test_replay_all_verify_works_on_a_database_where_only_the_migrations_ran(fresh_db, monkeypatch):
    """A database no service has started on (fresh_db: migrated, nothing else) has no read-model tables, which the
    services create at start-up (host.prepare_database); `flows users` and the access log append there all the
    same. The replay creates them itself, with the same function, instead of failing on a missing live table."""
    async def migrations_only_then_some_events() -> None:
        pool = await create_pool(fresh_db, min_size=1, max_size=2)
        try:
            assert await pool.fetchval("SELECT to_regclass('instance_list')") is None  # only the migrations ran
            await auth.add_user(pool, "op.rossi", "operator", ["201"], None, "una password lunga", by="cli:tester")
            await auth.disable_user(pool, "op.rossi", by="cli:tester")
            await record_access(EventStore(pool, source="/test"), Principal("aud.1", "auditor"), "feedback-view",
                                1947, "10.0.0.8")
        finally:
            await pool.close()

    asyncio.run(migrations_only_then_some_events())
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    replayed = CliRunner().invoke(app, ["replay", "--all", "--verify"], env={"COLUMNS": "200"})
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 2 stream(s), 3 events" in replayed.output, replayed.output
    assert "every hash chain verifies" in replayed.output and "equal the live ones" in replayed.output

    async def read_models() -> list[str]:
        conn = await asyncpg.connect(fresh_db)
        try:
            return [table for projection in all_projections() for table in projection.tables
                    if await conn.fetchval("SELECT to_regclass($1)", table) is None]
        finally:
            await conn.close()

    assert asyncio.run(read_models()) == []  # every read model's table is there now, as a service would leave it


# ---- a database written before the read models kept data (migrations 0072 and 0073) --------------------------------
# What the projections wrote before those migrations, kept here as the record of the old shape: a deletion's
# English sentence in instance_list.summary, a refused switch's Italian note in onboarding_dashboard.switch_note.
def _old_deletion_summary(deleted_by: str, reason: str | None) -> str:
    return f"deleted by {deleted_by}: {reason or 'no reason given'}"


def _old_refusal_note(refused: dict) -> str:
    day = date.fromisoformat(refused["proposed_date"])
    return "; ".join(refused["reasons"]) + (f"; prima data valida {day:%d/%m/%Y} {refused['proposed_window_start']}-"
                                            f"{refused['proposed_window_end']}")


def _instance_histories() -> dict[int, list[flows.Payload]]:
    def created(n: int, flow: str = "FLUSSO_C") -> flows.Payload:
        return flows.LoadRunning(instance=n, request_id=uuid.uuid4(), flow_type=flows.FlowType(flow), version="2020",
                                 ente="201", period=flows.Period.model_validate({"start": "2026-10-01",
                                                                                 "end": "2026-10-31"}),
                                 requested_by="op.rossi")

    def deleted(n: int, reason: str | None) -> flows.Payload:
        return flows.InstanceDeleted(instance=n, deleted_by="op.rossi", reason=reason)

    checked = [flows.LoadChecked(instance=0, source_instance=9, counts={"services": 2})]
    return {
        1: [created(1), flows.LoadFailed(instance=1, errors=3, summary="3 errori in 2 record"),
            deleted(1, "caricata due volte")],
        2: [created(2), *checked, deleted(2, None)],
        3: [created(3), *checked, flows.FormattingStarted(instance=3),
            flows.FormatFailed(instance=3, reasons=["disco pieno", "riprovare"]), deleted(3, "doppione")],
        # a later (illegal) outcome after the deletion: its summary was the row's before and stays
        4: [created(4), flows.LoadFailed(instance=4, errors=1, summary="1 errore in 1 record"), deleted(4, "x"),
            flows.LoadFailed(instance=4, errors=2, summary="2 errori in 1 record")],
        5: [created(5), flows.LoadFailed(instance=5, errors=1, summary="1 errore in 1 record")],
        6: [created(6, "FLUSSO_730"), *checked, flows.FormattingStarted(instance=6),
            flows.Formatted(instance=6, files=[]),
            flows.TsSubmitted(instance=6, part=1, parts=1, protocollo="12345678901234567", zip_sha256="e" * 64),
            flows.TsFeedbackReceived(instance=6, part=1, parts=1, outcome="confirmed_with_errors",
                                     reason="2 CF sconosciuti", instance_outcome="confirmed_with_errors"),
            deleted(6, "inviato per errore")],
    }


def _onboarding_histories() -> dict[str, list[tuple[str, dict]]]:
    opened = ("request-opened", {"kind": "software-house-change", "structure_name": "Centro Vomero",
                                 "structure_sts11": "150321", "municipality_istat": "063049",
                                 "opened_at": "2026-09-01T08:00:00+00:00"})
    scheduled = ("switch-scheduled", {"switch_date": "2026-10-12", "window_start": "09:00", "window_end": "11:00",
                                      "credentials": "basic", "warning": "preavviso sotto le 4 settimane"})

    def refused(day: str, start: str = "08:30") -> tuple[str, dict]:
        return ("switch-refused", {"switch_date": "2026-09-19", "window_start": "09:00", "window_end": "11:00",
                                   "reasons": ["sabato 19/09/2026 non è un giorno lavorativo"], "proposed_date": day,
                                   "proposed_window_start": start, "proposed_window_end": "10:30"})

    taken = ("taken-in-charge", {"taken_on": "2026-09-11", "expected_completion_from": "2026-10-08",
                                 "expected_completion_to": "2026-10-22"})
    return {"R1": [opened, refused("2026-09-21")],
            "R2": [opened, scheduled, refused("2026-09-21"), (scheduled[0], {**scheduled[1], "warning": None})],
            "R3": [opened, refused("2026-09-21"), refused("2026-09-22", "09:30")],  # the last refusal counts
            "R4": [opened, refused("2026-09-23"), taken],  # the refusal's note stayed after another milestone
            "R5": [opened, scheduled],
            "R6": [opened, scheduled, refused("2026-09-24")]}  # a new slot refused: the scheduled switch stays


def test_replay_verify_finds_no_difference_on_a_database_written_before_the_read_models_kept_data(
        fresh_db, monkeypatch):
    """The live rows as the projections wrote them before migrations 0072, 0073 and 0074 (a deletion's sentence as
    the summary, a refused switch's note, a scheduled switch dropped by a refusal), those migrations not yet
    applied: `flows replay --all --verify` migrates (as a service's start does), and the live rows equal the ones
    rebuilt from the unchanged log, keeping data."""
    deletions = {n: next(p for p in h if isinstance(p, flows.InstanceDeleted))
                 for n, h in _instance_histories().items() if any(isinstance(p, flows.InstanceDeleted) for p in h)}

    async def written_before() -> None:
        pool = await create_pool(fresh_db, min_size=1, max_size=2)
        try:
            await prepare_database(pool, all_projections())
            store = EventStore(pool, source="/test", projections=all_projections())
            for n, history in _instance_histories().items():
                events = [new_event(p.model_copy(update={"instance": n}), "loader") for p in history]
                await store.append(instance_stream(n), events, expected_version=0, key=str(n), publish=False)
            for rid, requested in _onboarding_histories().items():
                await store.append(f"onboarding-{rid}", [NewEvent(f"onboarding.{kind}", {"request_id": rid, **data})
                                                         for kind, data in requested],
                                   expected_version=0, key=rid, publish=False)
            # Back to the shape the code before 0072 and 0073 left, as if those had never run.
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("ALTER TABLE instance_list DROP COLUMN deleted_by, DROP COLUMN deletion_reason")
                for n in (1, 2, 3, 6):  # the deletion was the last event with a summary
                    await conn.execute("UPDATE instance_list SET summary = $2 WHERE instance = $1", n,
                                       _old_deletion_summary(deletions[n].deleted_by, deletions[n].reason))
                await conn.execute("ALTER TABLE onboarding_dashboard DROP COLUMN switch_refused_reasons, "
                                   "DROP COLUMN proposed_date, DROP COLUMN proposed_window")
                for rid in ("R1", "R3", "R4", "R6"):  # the last switch event was a refusal
                    last = [d for kind, d in _onboarding_histories()[rid] if kind == "switch-refused"][-1]
                    # the code before 0074 also dropped a switch already scheduled (R6) on a refusal
                    await conn.execute("UPDATE onboarding_dashboard SET switch_note = $2, switch_date = NULL, "
                                       "switch_window = NULL, status = CASE WHEN status = 'switch-scheduled' THEN "
                                       "'switch-refused' ELSE status END WHERE request_id = $1",
                                       rid, _old_refusal_note(last))
                await conn.execute("DELETE FROM schema_migrations WHERE version IN (72, 73, 74)")
        finally:
            await pool.close()

    asyncio.run(written_before())
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    replayed = CliRunner().invoke(app, ["replay", "--all", "--verify"], env={"COLUMNS": "200"})
    assert replayed.exit_code == 0, replayed.output
    assert "every hash chain verifies" in replayed.output and "equal the live ones" in replayed.output

    async def rows() -> tuple[dict, dict]:
        conn = await asyncpg.connect(fresh_db)
        try:
            instances = {r["instance"]: tuple(r)[1:] for r in await conn.fetch(
                "SELECT instance, summary, deleted_by, deletion_reason FROM instance_list")}
            dashboard = {r["request_id"]: tuple(r)[1:] for r in await conn.fetch(
                "SELECT request_id, status, switch_date, switch_note, switch_refused_reasons::text, proposed_date, "
                "proposed_window FROM onboarding_dashboard")}
            return instances, dashboard
        finally:
            await conn.close()

    instances, dashboard = asyncio.run(rows())
    assert instances == {1: ("3 errori in 2 record", "op.rossi", "caricata due volte"),
                         2: (None, "op.rossi", None),
                         3: ("disco pieno; riprovare", "op.rossi", "doppione"),
                         4: ("2 errori in 1 record", "op.rossi", "x"),
                         5: ("1 errore in 1 record", None, None),
                         6: ("2 CF sconosciuti", "op.rossi", "inviato per errore")}
    reasons = '["sabato 19/09/2026 non è un giorno lavorativo"]'
    assert dashboard == {
        "R1": ("switch-refused", None, None, reasons, date(2026, 9, 21), "08:30-10:30"),
        "R2": ("switch-scheduled", date(2026, 10, 12), None, None, None, None),
        "R3": ("switch-refused", None, None, reasons, date(2026, 9, 22), "09:30-10:30"),
        "R4": ("taken-in-charge", None, None, reasons, date(2026, 9, 23), "08:30-10:30"),
        "R5": ("switch-scheduled", date(2026, 10, 12), "preavviso sotto le 4 settimane", None, None, None),
        "R6": ("switch-scheduled", date(2026, 10, 12), "preavviso sotto le 4 settimane", reasons, date(2026, 9, 24),
               "08:30-10:30")}
