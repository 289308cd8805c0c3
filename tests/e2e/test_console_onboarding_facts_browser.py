"""The desk declares a document's facts on the upload in real Chromium, on the real app, PostgreSQL and Kafka: the
chosen type's facts only (the others hidden by console.js), a resolution with its protocol and date assessed at once
as compliant, an act declared not signed assessed at once with its finding, a window like 25:00-26:00 refused beside
its field with nothing recorded; without JavaScript every type's facts are on the page and the upload still works; a
structure's user gets no facts form and its upload waits for the desk. axe-core clean on each state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, FilePayload, Locator, Page

from tests.console_support import STRUCTURE, RunningConsole, browser_of, italian_context, running_console
from tests.e2e.test_console_browser import _axe_clean, _log_in
from tests.e2e.test_console_review_browser import signed_in
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.e2e

RECONFIGURATION = "Documento formale di riconfigurazione come Spoke dell'HUB"


@pytest.fixture
async def console(fresh_db: str, tmp_path: Path) -> AsyncIterator[RunningConsole]:
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as running:
        await running.add_users()
        yield running


def pdf(name: str) -> FilePayload:
    return {"name": name, "mimeType": "application/pdf", "buffer": f"%PDF-1.7 {name}".encode()}


def row(page: Page, label: str):  # type: ignore[no-untyped-def]
    return page.locator("main table tbody tr", has=page.locator(f"td:text-is(\"{label}\")"))


async def choose(facts: Locator, question: str, answer: str) -> None:
    """A yes/no answer, as a user gives it: Bootstrap Italia draws the radio on its label, which takes the click."""
    group = facts.get_by_role("group", name=question)
    await group.locator("label", has_text=answer).click()
    assert await group.get_by_label(answer, exact=True).is_checked()


async def upload(page: Page) -> str:
    async with page.expect_navigation():
        await page.click("button:has-text('Carica e valuta')")
    return await page.inner_text("#esito")


async def documents(console: RunningConsole, rid: str) -> list[tuple[str, str, Any]]:
    return [(e.type, e.actor, e.data.get("compliant")) for e in await console.store.read_stream(f"onboarding-{rid}")
            if e.type.startswith("onboarding.document-")]


async def test_the_desk_declares_facts_and_reads_the_assessment_at_once(console: RunningConsole,
                                                                         chromium: Browser) -> None:
    rid = await console.onboarding_request("ONB-DATI", STRUCTURE)
    async with signed_in(chromium, console, "desk.1") as page:
        await page.goto(f"{console.url}/onboarding/{rid}")
        await page.select_option("#tipo-doc", "accreditation-resolution")
        # only the chosen type's facts are shown (and sent)
        visible = [await s.get_attribute("data-tipo") for s in await page.locator("fieldset[data-tipo]").all()
                   if await s.is_visible()]
        assert visible == ["accreditation-resolution"], visible
        await _axe_clean(page, Axe(), "40-onboarding-dati-del-documento")
        # the page as a browser without JavaScript shows it, every type's facts at once, scanned too
        await page.evaluate("document.querySelectorAll('fieldset[data-tipo]')"
                            ".forEach(f => { f.hidden = f.disabled = false; })")
        await _axe_clean(page, Axe(), "40b-onboarding-dati-senza-javascript")
        await page.select_option("#tipo-doc", "accreditation-resolution")  # console.js hides the others again
        facts = page.locator("#dati-accreditation-resolution")
        await facts.get_by_label("Numero di protocollo").fill("2026/77")
        await facts.get_by_label("Data del documento").fill("2026-03-12")
        await page.set_input_files("#documento", pdf("delibera.pdf"))
        assert "Documento delibera.pdf ricevuto e valutato" in await upload(page)
        resolution = row(page, "Delibera di accreditamento")
        assert await resolution.locator("td").nth(1).inner_text() == "conforme"
        assert "Dati dichiarati da desk.1: Numero di protocollo «2026/77», Data del documento «2026-03-12»" in \
            await resolution.inner_text()

        await page.select_option("#tipo-doc", "spoke-reconfiguration-act")
        facts = page.locator("#dati-spoke-reconfiguration-act")
        await facts.get_by_label("Numero di protocollo").fill("2026/78")
        await choose(facts, "Firmato", "no")
        await page.set_input_files("#documento", pdf("riconfigurazione.pdf"))
        assert "Documento riconfigurazione.pdf ricevuto e valutato" in await upload(page)
        act = row(page, RECONFIGURATION)
        assert await act.locator("td").nth(1).inner_text() == "non conforme"
        assert await act.locator("tr.rilievo td").all_inner_texts() == [
            "", "", "signed", "", "il dato dichiarato signed è 'no', deve essere sì"]
        await _axe_clean(page, Axe(), "41-onboarding-dati-valutati")
    assert await documents(console, rid) == [
        ("onboarding.document-received", "desk.1", None), ("onboarding.document-assessed", "desk.1", True),
        ("onboarding.document-received", "desk.1", None), ("onboarding.document-assessed", "desk.1", False)]


async def test_a_window_out_of_the_day_comes_back_beside_its_field_and_nothing_is_recorded(
        console: RunningConsole, chromium: Browser) -> None:
    rid = await console.onboarding_request("ONB-DATI-FASCIA", STRUCTURE, "Centro Vomero",
                                           kind="interoperability-change")
    async with signed_in(chromium, console, "desk.1") as page:
        await page.goto(f"{console.url}/onboarding/{rid}")
        await page.select_option("#tipo-doc", "formal-request-interoperability-change")
        facts = page.locator("#dati-formal-request-interoperability-change")
        await facts.get_by_label("Numero di protocollo").fill("2026/90")
        await choose(facts, "Su carta intestata dell'ente", "sì")
        await facts.get_by_label("Cambia anche la Software House").select_option("no")
        await facts.get_by_label("Credenziali OAuth2.0").select_option("basic")
        await facts.get_by_label("Giorno desiderato per lo switch").fill("2026-11-10")
        window = facts.get_by_label("Fascia oraria desiderata per lo switch")
        await window.fill("25:00-26:00")
        await page.set_input_files("#documento", pdf("richiesta.pdf"))
        said = await upload(page)
        error = ("Fascia oraria desiderata per lo switch: è '25:00-26:00', non una fascia oraria: le ore vanno da 00 "
                 "a 23.")
        assert said.startswith("Documento non caricato, non è stato registrato nulla") and error in said, said
        window = page.locator("#dati-formal-request-interoperability-change").get_by_label(
            "Fascia oraria desiderata per lo switch")
        assert await window.input_value() == "25:00-26:00"
        assert await window.get_attribute("aria-invalid") == "true"
        described = (await window.get_attribute("aria-describedby") or "").split()
        assert [await page.locator(f"#{d}").inner_text() for d in described] == [
            "OO:MM-OO:MM, per esempio 09:00-11:00", error]
        await _axe_clean(page, Axe(), "42-onboarding-dato-errato")
        assert await documents(console, rid) == []
        await window.fill("09:00-11:00")  # the other facts are still there; the file is chosen again
        await page.set_input_files("#documento", pdf("richiesta.pdf"))
        assert "ricevuto e valutato" in await upload(page)
    assert await documents(console, rid) == [
        ("onboarding.document-received", "desk.1", None), ("onboarding.document-assessed", "desk.1", True)]


async def test_without_javascript_every_type_s_facts_are_shown_and_the_chosen_ones_are_read(
        console: RunningConsole, chromium: Browser) -> None:
    rid = await console.onboarding_request("ONB-DATI-SENZA-JS", STRUCTURE)
    async with browser_of(chromium) as browser:
        page = await (await italian_context(browser, java_script_enabled=False)).new_page()
        await _log_in(page, console.url, "desk.1")
        await page.goto(f"{console.url}/onboarding/{rid}")
        sets = page.locator("fieldset[data-tipo]")
        assert await sets.count() == 5 and all([await s.is_visible() for s in await sets.all()])
        # (axe runs in the page's JavaScript: the page as it is without it is scanned in the first test)
        await page.select_option("#tipo-doc", "suap-authorisation")
        await page.locator("#dati-suap-authorisation").get_by_label("Numero di protocollo").fill("SUAP/12")
        await page.set_input_files("#documento", pdf("suap.pdf"))
        assert "ricevuto e valutato" in await upload(page)
        assert await row(page, "Autorizzazione SUAP").locator("td").nth(1).inner_text() == "conforme"
    assert await documents(console, rid) == [
        ("onboarding.document-received", "desk.1", None), ("onboarding.document-assessed", "desk.1", True)]


async def test_a_structure_gets_no_facts_form_and_its_upload_waits_for_the_desk(
        console: RunningConsole, chromium: Browser) -> None:
    rid = await console.onboarding_request("ONB-DATI-STRUTTURA", STRUCTURE)
    async with signed_in(chromium, console, "st.1") as page:
        await page.goto(f"{console.url}/onboarding/{rid}")
        assert await page.locator("#dati-documento").count() == 0
        assert await page.locator("[name^='dato:']").count() == 0
        assert "gli altri documenti (delibere, atti, richieste formali, form) li valuta lo sportello di onboarding" \
            in await page.inner_text("#valuta-sportello")
        await page.select_option("#tipo-doc", "spoke-reconfiguration-act")
        await page.set_input_files("#documento", pdf("riconfigurazione.pdf"))
        assert "ricevuto: lo valuterà lo sportello di onboarding" in await upload(page)
        assert await row(page, RECONFIGURATION).locator("td").nth(1).inner_text() == "da valutare"
        await _axe_clean(page, Axe(), "44-onboarding-struttura-senza-dati")
    assert await documents(console, rid) == [("onboarding.document-received", "st.1", None)]
