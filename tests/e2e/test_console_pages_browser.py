"""Pages of the console an audit of issue 12 found untested, in real Chromium on the real app, PostgreSQL and Kafka:
axe-core (no serious or critical violation) and a screenshot of the Scadenze page (every kind of row it marks, and its
error) and of a 730 viewed document by document; the desk recording its verdicts on a structure's documents and
reading them on the request's page and the dashboard; an instance whose stream was edited in the database shown with
its hash chain not verified, naming the event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from unittest import mock

import pytest
from axe_playwright_python.async_playwright import Axe
from cryptography import x509
from playwright.async_api import Browser

from services.console import instance_pages
from services.runtime.read_models import instance_stream
from services.runtime.sanitel import make_test_certificate
from tests.console_support import STRUCTURE, RunningConsole, running_console
from tests.e2e.test_console_browser import _axe_clean
from tests.e2e.test_console_review_browser import signed_in
from tests.stack_urls import KAFKA
from tests.unit.test_xml730 import a_month_of_documents, write

pytestmark = pytest.mark.e2e


@pytest.fixture
async def console(fresh_db: str, tmp_path: Path) -> AsyncIterator[RunningConsole]:
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as running:
        await running.add_users()
        yield running


async def test_the_deadlines_page_with_every_kind_of_row_and_its_error_passes_axe(
        console: RunningConsole, chromium: Browser) -> None:
    """On 5 November 2026 the periods ending in October are due on the 10th (within 7 days: marked) but for the one a
    Formatted instance covers (its link), ALPI TA's on the 30th (open); September's were due on 12 October (late):
    every badge and row colour the page has, scanned. A month with no due dates in the data is an Italian error."""
    c1 = console.file_ref("C1_150201_202610_1.txt", "C1", b"x" * 10, 1)
    formatted = await console.instance("201", [("flows.load-checked", {"source_instance": 2, "counts": {}}),
                                               ("flows.formatting-started", {}),
                                               ("flows.formatted", {"files": [c1]})],
                                       period=("2026-10-01", "2026-10-31"))
    # the console's clock only, so the page has all four states whatever day the test runs on
    with mock.patch.object(instance_pages, "italian_today", lambda: date(2026, 11, 5)):
        async with signed_in(chromium, console, "op.201") as page:
            await page.goto(f"{console.url}/scadenze?mese=2026-10")
            rows = page.locator("main table tbody tr")
            states = set(await rows.locator(".badge").all_inner_texts())
            assert states == {"Coperta", "Scade entro 7 giorni", "Aperta"}, states
            covered = rows.filter(has=page.locator("td:text-is('FLUSSO C')"))
            assert await covered.locator(".badge").inner_text() == "Coperta"
            assert await covered.locator(f"a[href='/istanze/{formatted}']").count() == 1
            assert await rows.filter(has=page.locator("text=Scade entro 7 giorni")).evaluate_all(
                "rs => rs.every(r => r.classList.contains('table-warning'))")
            await _axe_clean(page, Axe(), "14-scadenze")
            await page.goto(f"{console.url}/scadenze?mese=2026-09")
            assert set(await page.locator("main table tbody .badge").all_inner_texts()) == {"In ritardo"}
            await _axe_clean(page, Axe(), "15-scadenze-in-ritardo")
            await page.goto(f"{console.url}/scadenze?mese=2099-03")
            assert "Scadenze non disponibili" in await page.inner_text("main .alert-danger")
            await _axe_clean(page, Axe(), "16-scadenze-errore")


async def test_a_730_viewed_document_by_document_passes_axe(console: RunningConsole, chromium: Browser,
                                                            tmp_path: Path) -> None:
    cert = x509.load_pem_x509_certificate(make_test_certificate()[0])
    (tmp_path / "730").mkdir()
    (part,) = write(a_month_of_documents(12), cert, tmp_path / "730").parts
    name = "730_150201_000123_2026S2_1947_p1.zip"
    zipped = console.file_ref(name, "730-zip", part.path.read_bytes(), 12, "application/zip")
    instance = await console.instance("201", [("flows.load-checked", {"source_instance": 2, "counts": {}}),
                                              ("flows.formatting-started", {}),
                                              ("flows.formatted", {"files": [zipped]})], flow_type="FLUSSO_730")
    async with signed_in(chromium, console, "op.201") as page:
        await page.goto(f"{console.url}/istanze/{instance}")
        async with page.expect_navigation():
            await page.click(f"a:has-text('Vedi'):has-text('{name}')")
        assert (await page.inner_text("main table caption")).endswith(": documenti da 1 a 12")
        assert await page.locator("#tabella tbody tr").count() == 12
        assert (await page.locator("#tabella thead th").all_inner_texts())[-1] == "Voci di spesa"
        await _axe_clean(page, Axe(), "17-file-730")


async def test_the_desk_records_its_verdicts_and_reads_them_on_the_request_and_the_dashboard(
        console: RunningConsole, chromium: Browser) -> None:
    """A structure's SUAP authorisation judged non-compliant with its reason, then its accreditation compliant, from
    the request's page: each row says its verdict, the reason is the document's finding, the dashboard counts the
    compliant one; a non-compliant verdict without a reason is refused in Italian and records nothing."""
    request = await console.onboarding_request("ONB-VERDETTI", STRUCTURE)
    # uploaded as the console uploads them: nothing declared, so the desk judges them
    await console.onboarding_document(request, "autorizzazione SUAP.pdf", b"%PDF-1.4 suap", metadata={})
    await console.onboarding_document(request, "delibera.pdf", b"%PDF-1.4 accreditamento",
                                      "accreditation-resolution", metadata={})
    reason = "Manca la firma del responsabile SUAP"

    def row(page, label: str):  # type: ignore[no-untyped-def]
        return page.locator("main table tbody tr", has=page.locator(f"td:text-is('{label}')"))

    async with signed_in(chromium, console, "desk.1") as page:
        await page.goto(f"{console.url}/onboarding")
        listed = page.locator("main table tbody tr", has_text=request)
        before = (await listed.locator("td").all_inner_texts())[5]
        assert before.startswith("0/"), before
        await page.goto(f"{console.url}/onboarding/{request}")
        suap = row(page, "Autorizzazione SUAP")
        assert (await suap.locator("td").nth(1).inner_text()) == "da valutare"
        await _axe_clean(page, Axe(), "18-onboarding-da-valutare")

        # non conforme without a reason: refused, nothing recorded
        await suap.locator("select[name=esito]").select_option("non-conforme")
        async with page.expect_navigation():
            await suap.locator("button:has-text('Registra')").click()
        # the request's page again, naming the document (axe on it too: the message is an alert on the page)
        assert await page.inner_text("#esito") == ("Esito non registrato per «Autorizzazione SUAP» (autorizzazione "
                                                   "SUAP.pdf): indichi l'esito e, se il documento non è conforme, "
                                                   "il motivo.")
        await _axe_clean(page, Axe(), "18b-onboarding-esito-non-registrato")
        assert await console.pool.fetchval("SELECT count(*) FROM events WHERE stream_id LIKE 'onboarding-%' "
                                           "AND type = 'onboarding.document-assessed'") == 0

        await page.goto(f"{console.url}/onboarding/{request}")
        suap = row(page, "Autorizzazione SUAP")
        await suap.locator("select[name=esito]").select_option("non-conforme")
        await suap.locator("input[name=motivo]").fill(reason)
        async with page.expect_navigation(url=f"{console.url}/onboarding/{request}"):
            await suap.locator("button:has-text('Registra')").click()
        suap = row(page, "Autorizzazione SUAP")
        assert (await suap.locator("td").nth(1).inner_text()) == "non conforme"
        assert await suap.locator("tr.rilievo td").last.inner_text() == reason

        accreditation = page.locator("main table tbody tr", has_text="delibera.pdf")
        label = (await accreditation.locator("td").first.inner_text()).strip()
        await accreditation.locator("select[name=esito]").select_option("conforme")
        async with page.expect_navigation(url=f"{console.url}/onboarding/{request}"):
            await accreditation.locator("button:has-text('Registra')").click()
        assert (await row(page, label).locator("td").nth(1).inner_text()) == "conforme"
        assert (await row(page, "Autorizzazione SUAP").locator("td").nth(1).inner_text()) == "non conforme"
        await _axe_clean(page, Axe(), "19-onboarding-verdetti")

        await page.goto(f"{console.url}/onboarding")
        listed = page.locator("main table tbody tr", has_text=request)
        after = (await listed.locator("td").all_inner_texts())[5]
        assert after == "1/" + before.split("/")[1], (before, after)
    verdicts = await console.pool.fetch("SELECT actor, data FROM events WHERE stream_id LIKE 'onboarding-%' "
                                        "AND type = 'onboarding.document-assessed' ORDER BY position")
    assert [(v["actor"], v["data"]["compliant"]) for v in verdicts] == [("desk.1", False), ("desk.1", True)]


async def test_an_instance_whose_stream_was_edited_in_the_database_says_its_chain_does_not_verify(
        console: RunningConsole, chromium: Browser) -> None:
    instance = await console.instance("201", [("flows.load-checked", {"source_instance": 2,
                                                                      "counts": {"services": 120}})])
    async with signed_in(chromium, console, "op.201") as page:
        await page.goto(f"{console.url}/istanze/{instance}")
        assert await page.inner_text("#catena") == "verificata (2 eventi)"
        # Someone with the database's password rewrites the counts of the load's check (as tests/integration/
        # test_eventstore.py's tamper): the rows are still there, the event's hash no longer matches its content.
        edited = await console.pool.execute(
            "UPDATE events SET data = jsonb_set(data, '{counts,services}', '300') WHERE stream_id = $1 AND version = 2",
            instance_stream(instance))
        assert edited == "UPDATE 1"
        await page.goto(f"{console.url}/istanze/{instance}")
        said = await page.inner_text("#catena")
        assert said.startswith("non verificata evento 2: il contenuto dell'evento è stato modificato dopo la "
                               "registrazione (atteso "), said
        assert await page.locator("#catena .badge.bg-danger").count() == 1
        await _axe_clean(page, Axe(), "24-istanza-catena-non-verificata")
