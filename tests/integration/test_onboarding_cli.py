"""The `onboarding` CLI on the real PostgreSQL: open, add documents, see what is wrong, switch, status."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from typer.testing import CliRunner

from services.cli.onboarding_cli import app
from tests.fixtures.onboarding.workbooks import aggregation_rows, workbook

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture
def cli_env(fresh_db, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    monkeypatch.setenv("FLOWS_FILES_DIR", str(tmp_path / "files"))
    monkeypatch.setenv("COLUMNS", "220")  # rich would shorten the dashboard's cells to 80 columns
    return tmp_path


def onboarding(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_the_desk_sees_the_wrong_cell_then_a_switch_refused_on_san_gennaro_with_a_proposal(cli_env):
    wrong = aggregation_rows()
    wrong["Prestazioni"][0][3] = "150999"
    book = cli_env / "annex-a1.xlsx"
    book.write_bytes(workbook({"Prestazioni": wrong["Prestazioni"]}))
    onboarding("open", "--id", "ONB-CLI-1", "--kind", "new-aggregation", "--name", "Laboratorio Analisi Vesuvio",
               "--sts11", "150123", "--municipality", "063049", "--spoke", "150456:Lab Partenope:on-cup",
               "--spoke", "150789:Lab Posillipo")
    out = onboarding("add-document", "ONB-CLI-1", str(book), "--type", "tracciato-prestazioni")
    assert "foglio Prestazioni, riga 2, campo IUP_SSA_CODE, cella D2: 150999 non è l'STS11 dell'HUB 150123" in \
        " ".join(out.split())
    assert "1 di 13 presenti, 1 non conforme: Tracciato Prestazioni (foglio Prestazioni" in " ".join(out.split())

    onboarding("open", "--id", "ONB-CLI-2", "--kind", "software-house-change", "--name", "Centro Vomero",
               "--sts11", "150321", "--municipality", "063049")
    pdf = cli_env / "doc.pdf"
    pdf.write_bytes(b"%PDF-1.7")
    onboarding("add-document", "ONB-CLI-2", str(pdf), "--type", "formal-request-software-house-change",
               "--meta", "protocol=2026/5", "--meta", "letterhead=yes", "--meta", "software_house=Medisoft",
               "--meta", "credentials=new-oauth2")
    onboarding("add-document", "ONB-CLI-2", str(pdf), "--type", "endpoint-form-b2")  # no meta: for the desk
    out = onboarding("add-document", "ONB-CLI-2", str(pdf), "--type", "switch-date-request",
                     "--meta", "switch_date=2026-01-05", "--meta", "switch_window=09:00-10:00")
    assert "1 in attesa di valutazione: Form di abilitazione degli endpoint per l'ambiente di produzione " \
        "(Allegato B2)" in " ".join(out.split())
    out = onboarding("assess", "ONB-CLI-2", "endpoint-form-b2", "--compliant")
    assert "taken in charge" in out and "switch refused" in out and "earliest valid slot" in out

    # up to 3 years away: 19 September falls on a weekend two years running (2026 and 2027, then 2037 and 2038)
    san_gennaro = next(d for d in (datetime.now(UTC).date() + timedelta(days=n) for n in range(60, 1200))
                       if (d.month, d.day) == (9, 19) and d.weekday() < 5)
    out = onboarding("switch", "ONB-CLI-2", "--date", san_gennaro.isoformat(), "--window", "09:00-10:00")
    assert "è la festa del santo patrono di Napoli (San Gennaro)" in " ".join(out.split())
    proposal = re.search(r"earliest valid slot: (\d{4}-\d\d-\d\d \d\d:\d\d-\d\d:\d\d)", out)
    assert proposal, out

    table = onboarding("status")
    assert "ONB-CLI-1" in table and "ONB-CLI-2" in table and "switch-refu" in table
    # the dashboard's row keeps the refusal as data; the CLI writes its English from it
    assert f"refused; earliest valid {proposal.group(1)}" in table, table
    detail = onboarding("status", "ONB-CLI-1")
    assert "MISSING" in detail and "NON-COMPLIANT" in detail


def test_an_unknown_request_is_one_clear_line(cli_env):
    result = runner.invoke(app, ["status", "ONB-NOBODY"])
    assert result.exit_code == 1 and "richiesta ONB-NOBODY: non trovata" in result.output


def test_a_corrupt_workbook_is_one_clear_line_naming_the_file_and_the_problem(cli_env):
    onboarding("open", "--id", "ONB-CLI-3", "--kind", "new-aggregation", "--name", "Laboratorio Analisi Vesuvio",
               "--sts11", "150123", "--municipality", "063049", "--spoke", "150456:Lab Partenope")
    book = cli_env / "annex-a1.xlsx"
    book.write_bytes(workbook({"Prestazioni": aggregation_rows()["Prestazioni"]})[:300])  # cut short
    result = runner.invoke(app, ["add-document", "ONB-CLI-3", str(book), "--type", "tracciati"])
    out = " ".join(result.output.split())
    assert result.exit_code == 1, out
    assert out.startswith("error: annex-a1.xlsx: non è leggibile come cartella di lavoro XLSX: "), out
    assert "Traceback" not in out and "BadZipFile" not in out
    # as one document of a given type, the same problem is the document's finding
    out = onboarding("add-document", "ONB-CLI-3", str(book), "--type", "tracciato-prestazioni")
    assert "annex-a1.xlsx: non è leggibile come cartella di lavoro XLSX: " in " ".join(out.split())


def test_the_shell_actor_of_an_onboarding_command_is_the_shared_operator_name(cli_env, fresh_db, monkeypatch):
    """FLOWS_OPERATOR names who acts, as in every other `flows` command (cli.common.operator_name); before, the
    onboarding CLI took the login by itself and recorded `cli:<login>` whoever the operator said they were."""
    monkeypatch.setenv("FLOWS_OPERATOR", "desk.esposito")
    onboarding("open", "--id", "ONB-CLI-OP", "--kind", "software-house-change", "--name", "Centro Vomero",
               "--sts11", "150321", "--municipality", "063049")
    pdf = cli_env / "doc.pdf"
    pdf.write_bytes(b"%PDF-1.7")
    onboarding("add-document", "ONB-CLI-OP", str(pdf), "--type", "endpoint-form-b2")  # no meta: for the desk
    onboarding("assess", "ONB-CLI-OP", "endpoint-form-b2", "--compliant")

    async def recorded() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(fresh_db)
        try:
            return await conn.fetch("SELECT type, actor, data::jsonb AS data FROM events WHERE stream_id = $1 "
                                    "ORDER BY version", "onboarding-ONB-CLI-OP")
        finally:
            await conn.close()

    rows = asyncio.run(recorded())
    assert {r["type"] for r in rows} >= {"onboarding.request-opened", "onboarding.document-received",
                                         "onboarding.document-assessed"}, rows
    assert {r["actor"] for r in rows} == {"cli:desk.esposito"}, rows
    opened = json.loads(rows[0]["data"])
    assert opened["opened_by"] == "cli:desk.esposito", opened
