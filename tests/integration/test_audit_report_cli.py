"""`flows audit report N` writes its PDF in one known place whatever folder it runs from (FLOWS_REPORTS_DIR, the
stack's <state>/audit/reports), prints the file's full path, and never replaces an existing report unless told to.
On a real PostgreSQL: the instance's stream and read model as the services write them."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from pathlib import Path

import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from contracts import flows
from services.cli.main import app
from tests.seeding import seed_instance

pytestmark = pytest.mark.integration
INSTANCE = 1961


async def _a_checked_instance(url: str) -> None:
    history: list[flows.Payload] = [
        flows.LoadRunning(instance=INSTANCE, request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C,
                          version="2020", ente="201",
                          period=flows.Period.model_validate({"start": "2026-10-01", "end": "2026-10-31"}),
                          requested_by="op.rossi"),
        flows.LoadChecked(instance=INSTANCE, source_instance=INSTANCE + 1, counts={"services": 4})]
    await seed_instance(url, INSTANCE, history)


def flows_cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_the_report_goes_to_the_reports_folder_with_its_full_path_and_never_over_another(
        fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reports = tmp_path / "data" / "audit" / "reports"
    elsewhere = tmp_path / "home-of-the-operator"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # an operator running it from anywhere
    for name, value in {"DATABASE_URL": fresh_db, "FLOWS_FILES_DIR": str(tmp_path / "files"),
                        "FLOWS_CHECKPOINTS_DIR": str(tmp_path / "checkpoints"), "FLOWS_REPORTS_DIR": str(reports),
                        "FLOWS_OPERATOR": "aud.neri", "COLUMNS": "400"}.items():
        monkeypatch.setenv(name, value)
    asyncio.run(_a_checked_instance(fresh_db))

    said = flows_cli("audit", "report", str(INSTANCE))
    first = Path(re.search(r"^file: (.+)$", said, re.M).group(1))  # type: ignore[union-attr]
    assert first.is_absolute() and first.parent == reports, said
    assert re.fullmatch(rf"report-{INSTANCE}-\d{{8}}-\d{{6}}\.pdf", first.name), first
    assert f"Audit report: instance {INSTANCE}" in PdfReader(first).pages[0].extract_text()
    assert list(elsewhere.iterdir()) == []  # nothing in the folder it ran from
    assert not [p for p in reports.iterdir() if p.name.startswith(".report-")]  # no part file left behind

    # Run again (in the same second or not): a second file, the first untouched.
    before = first.read_bytes()
    second = Path(re.search(r"^file: (.+)$", flows_cli("audit", "report", str(INSTANCE)), re.M).group(1))  # type: ignore[union-attr]
    assert second != first and second.parent == reports and first.read_bytes() == before
    assert sorted(p.name for p in reports.iterdir()) == sorted([first.name, second.name])

    # --out: a relative name is the folder it runs from, printed in full; an existing file is refused, unchanged.
    said = flows_cli("audit", "report", str(INSTANCE), "--out", "mine.pdf")
    assert f"file: {elsewhere / 'mine.pdf'}" in said, said
    mine = (elsewhere / "mine.pdf").read_bytes()
    refused = " ".join(flows_cli("audit", "report", str(INSTANCE), "--out", "mine.pdf", code=1).split())
    assert "--out mine.pdf already exists: give another name, or add --overwrite to replace it" in refused, refused
    assert (elsewhere / "mine.pdf").read_bytes() == mine
    refused = " ".join(flows_cli("audit", "report", str(INSTANCE), "--out", str(reports), code=1).split())
    assert "is a folder: give the PDF's file name" in refused, refused
    os.utime(elsewhere / "mine.pdf", (0, 0))
    flows_cli("audit", "report", str(INSTANCE), "--out", "mine.pdf", "--overwrite")
    assert (elsewhere / "mine.pdf").stat().st_mtime > 0  # replaced, as asked
    assert sorted(p.name for p in elsewhere.iterdir()) == ["mine.pdf"]
