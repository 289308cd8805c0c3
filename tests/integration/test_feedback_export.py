"""`flows feedback N --out FILE` of an instance with several esiti (the load's feedback and Sistema TS's errors of
each part of a 730) writes every line of every esito, each once, saying which esito it belongs to, in the order
the console's pages list them; one esito is written as its file. On a real PostgreSQL (the read model the pages
read) and a real file store."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contracts import flows
from services.cli.main import app
from services.runtime.filestore import FileStore
from tests.seeding import seed_instance

pytestmark = pytest.mark.integration

# The load's feedback (LF, the loader's COPY: a message with ';' is quoted) and TS's errors of two parts (CRLF).
LOAD_FEEDBACK = (b"record_key;field;code;severity;message\n"
                 b"S1@R1/01;patient_cf;CF_CHECK_CHAR;error;il carattere di controllo dovrebbe essere J, non K\n"
                 b"S2@R2/01;surname;SURNAME_TOO_LONG;warning;\"il cognome ha 41 caratteri; il campo ne tiene 40\"\n")
TS_COLUMNS = "COD REGIONE;COD ASL;DESCRIZIONE ERRORE"


def ts_errors(part: int) -> bytes:
    return (f"{TS_COLUMNS}\r\n150;201;documento DOC-{part}1 rifiutato\r\n"
            f"150;201;documento DOC-{part}2 rifiutato\r\n").encode()


def rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=";"))


async def _a_730_with_esiti(url: str, files_dir: Path, esiti: dict[str, bytes]) -> int:
    """A 730 instance whose load warned and Sistema TS refused some documents of each part: one esito per entry of
    `esiti` (name -> bytes; a name starting ts_errors is TS's)."""
    store_files = FileStore(files_dir)

    def ref(name: str, data: bytes) -> flows.FileRef:
        sha, size = store_files.put_bytes(data)
        return flows.FileRef(name=name, kind="ts-errors" if name.startswith("ts_errors") else "feedback",
                             records=len(data.splitlines()) - 1, bytes=size, sha256=sha, media_type="text/csv")

    refs = {name: ref(name, data) for name, data in esiti.items()}
    load = next((r for r in refs.values() if r.kind == "feedback"), None)
    parts = [r for r in refs.values() if r.kind == "ts-errors"]
    n = 1951
    history: list[flows.Payload] = [
        flows.LoadRunning(instance=n, request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_730, version="2020",
                          ente="201", period=flows.Period.model_validate({"start": "2026-01-01",
                                                                          "end": "2026-06-30"}),
                          requested_by="op.rossi"),
        flows.LoadChecked(instance=n, source_instance=n + 1, counts={"services": 4}, warnings=1, feedback=load)]
    if parts:
        history += [flows.FormattingStarted(instance=n), flows.Formatted(instance=n, files=[])]
        history += [flows.TsFeedbackReceived(instance=n, part=k, parts=len(parts), outcome="confirmed_with_errors",
                                             errors_file=f) for k, f in enumerate(parts, start=1)]
    await seed_instance(url, n, history)
    return n


@pytest.fixture
def files_dir(fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    monkeypatch.setenv("FLOWS_FILES_DIR", str(tmp_path / "files"))
    return tmp_path / "files"


def test_feedback_out_writes_every_esito_of_the_instance_each_line_once_naming_its_esito(
        fresh_db: str, files_dir: Path, tmp_path: Path) -> None:
    esiti = {"feedback_1951.csv": LOAD_FEEDBACK, "ts_errors_1951_p1.csv": ts_errors(1),
             "ts_errors_1951_p2.csv": ts_errors(2)}
    instance = asyncio.run(_a_730_with_esiti(fresh_db, files_dir, esiti))
    out = tmp_path / "esiti.csv"
    result = CliRunner().invoke(app, ["feedback", str(instance), "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    written = rows(out.read_bytes())
    expected = []
    for name, data in esiti.items():  # the pages' order: by name, the load's first
        header, *lines = rows(data)
        expected += [["esito", *header], *[[name, *line] for line in lines]]
    # every line of every esito, once, with the esito it belongs to (the old code kept the last file alone)
    assert written == expected
    assert "3 esiti" in result.output and all(name in result.output for name in esiti), result.output


def test_feedback_out_of_an_instance_with_one_esito_is_that_file(fresh_db: str, files_dir: Path,
                                                                 tmp_path: Path) -> None:
    instance = asyncio.run(_a_730_with_esiti(fresh_db, files_dir, {"feedback_1951.csv": LOAD_FEEDBACK}))
    out = tmp_path / "esito.csv"
    result = CliRunner().invoke(app, ["feedback", str(instance), "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == LOAD_FEEDBACK  # the published contract's file, unchanged
