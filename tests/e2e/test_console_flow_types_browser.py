"""The Tipi di flusso page (the Flow Manager's "Lista tipi di flusso") in real Chromium, on the real app, PostgreSQL and
Kafka: in the menu of an operator after Scadenze, not in that of a role that cannot list instances (nor the page);
one row per flow type with the layout versions of the layouts' folder and the one a load of the month takes, its
files, destination and deadline rule; a layout's fields; a year without deadline rules said in Italian; axe-core finds
no serious or critical violation on any of them."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from unittest import mock

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page

from contracts import ts730
from contracts.flows import FlowType
from services.console import instance_pages
from services.console.labels import FLOW_TYPE_DESCRIPTIONS, FLOW_TYPE_LABELS, upload_platform
from services.formatter.layouts import DEFAULT_ROOT, DEFAULT_VERSION, LayoutRegistry
from tests.console_support import RunningConsole, running_console
from tests.e2e.test_console_browser import _axe_clean
from tests.e2e.test_console_review_browser import signed_in
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.e2e

NOVEMBER = date(2026, 11, 5)  # the console's clock in these tests (instance_pages.italian_today, as Scadenze's)


@pytest.fixture
async def console(fresh_db: str, tmp_path: Path) -> AsyncIterator[RunningConsole]:
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as running:
        await running.add_users()
        yield running


async def _menu(page: Page) -> list[str]:
    return [text.strip() for text in await page.locator("header nav a.nav-link").all_inner_texts()]


async def _row(page: Page, flow_type: str) -> dict[str, str]:
    row = page.locator(f"main table tbody tr[data-flow-type='{flow_type}']")
    cells = [text.strip() for text in await row.locator("th, td").all_inner_texts()]
    return dict(zip(("nome", "versioni", "descrizione", "file", "destinazione", "scadenza"), cells, strict=True))


async def _versions(page: Page, flow_type: str) -> tuple[list[str], list[str]]:
    """The versions a row lists (as read, without the link's hidden words) and those marked in force."""
    cell = page.locator(f"tr[data-flow-type='{flow_type}'] td.versioni")
    listed = await cell.locator(".versione").all_inner_texts()
    in_force = await cell.locator("li", has=page.locator(".in-vigore")).locator(".versione").all_inner_texts()
    return listed, in_force


async def test_an_operator_finds_every_flow_type_with_its_versions_files_destination_and_deadline(
        console: RunningConsole, chromium: Browser) -> None:
    available = LayoutRegistry().available()
    with mock.patch.object(instance_pages, "italian_today", lambda: NOVEMBER):
        async with signed_in(chromium, console, "op.201") as page:
            menu = await _menu(page)
            assert menu[menu.index("Scadenze") + 1] == "Tipi di flusso", menu
            async with page.expect_navigation():
                await page.locator("header nav").get_by_role("link", name="Tipi di flusso", exact=True).click()
            assert page.url == f"{console.url}/tipi-di-flusso"
            assert await page.inner_text("main h1") == "Tipi di flusso"
            assert await page.get_attribute("header nav a.nav-link.active", "aria-current") == "page"
            assert (await page.inner_text("header nav a.nav-link.active")).strip() == "Tipi di flusso"
            caption = await page.inner_text("main table caption")
            assert "un caricamento di novembre 2026" in caption and "dati del 2026" in caption, caption
            assert await page.locator("main table thead th").all_inner_texts() == [
                "Nome", "Versioni del tracciato", "Descrizione", "File prodotti", "Destinazione", "Scadenza"]
            assert await page.locator("main table tbody tr").count() == len(FlowType)
            for flow in FlowType:
                row = await _row(page, flow.value)
                assert row["nome"] == FLOW_TYPE_LABELS[flow.value]
                assert row["descrizione"] == FLOW_TYPE_DESCRIPTIONS[flow.value]
                assert row["destinazione"] == upload_platform(flow.value)
                layouts = [v for f, v in available if f == flow.value]
                listed, in_force = await _versions(page, flow.value)
                assert listed == (layouts or sorted(ts730.SCHEMA_FILES)), (flow, listed)
                assert in_force == [instance_pages.version_in_force(flow.value, NOVEMBER)], (flow, in_force)
            flusso_c = await _row(page, "FLUSSO_C")
            assert flusso_c["file"].startswith("2 file di testo a larghezza fissa, uno per tipo di record:")
            assert "C1: anagrafico" in flusso_c["file"] and "C2: sanitario" in flusso_c["file"]
            assert flusso_c["scadenza"] == "Mensile: entro il giorno 10 del mese successivo."
            assert (await _row(page, "FLUSSO_730"))["file"].startswith("File XML compressi (zip):")
            assert (await _versions(page, "FLUSSO_730"))[1] == [DEFAULT_VERSION]
            alpi = page.locator("tr[data-flow-type='FLUSSO_ALPI_TA'] td.scadenza li")
            assert await alpi.count() == 4
            assert await alpi.first.inner_text() == "19/01/2026 – 23/01/2026: entro il 27/02/2026"
            # the 730's versions are no layout: no link; every layout version links to its fields
            assert await page.locator("tr[data-flow-type='FLUSSO_730'] td.versioni a").count() == 0
            assert await page.locator("td.versioni a").count() == len(available)
            await _axe_clean(page, Axe(), "40-tipi-di-flusso")

            # the link's name, as a screen reader says it: the version with its flow, not a bare "2020"
            link = page.get_by_role("link", name="Tracciato FLUSSO C versione 2020", exact=True)
            assert await link.count() == 1
            async with page.expect_navigation():
                await link.click()
            assert page.url == f"{console.url}/tipi-di-flusso/FLUSSO_C/2020"
            assert await page.inner_text("main h1") == "Tracciato FLUSSO C versione 2020"
            assert "è in vigore per un caricamento di novembre 2026" in await page.inner_text("main")
            layout = LayoutRegistry().get("FLUSSO_C", "2020")
            assert await page.locator("main h2").all_inner_texts() == [
                "C1: anagrafico (dati dell'assistito)", "C2: sanitario (prestazioni erogate)"]
            tables = page.locator("main table")
            assert await tables.count() == len(layout.records)
            for table, record in zip(await tables.all(), layout.records, strict=True):
                assert await table.locator("tbody tr").count() == len(record.fields)
                assert await table.locator("tbody th").all_inner_texts() == [f.title for f in record.fields]
            first = await tables.first.locator("tbody tr").first.locator("th, td").all_inner_texts()
            assert [t.strip() for t in first] == ["Regione addebitante", "1–3", "3", "alfanumerico", "sì", "tutte"]
            await _axe_clean(page, Axe(), "41-tracciato")

            # a version the folder does not have: the page of no layout, with the way back to the list
            answer = await page.goto(f"{console.url}/tipi-di-flusso/FLUSSO_C/1999")
            assert answer is not None and answer.status == 404
            assert await page.locator("main a", has_text="Torna ai tipi di flusso").count() == 1
            answer = await page.goto(f"{console.url}/tipi-di-flusso/FLUSSO_730/2020")
            assert answer is not None and answer.status == 404


async def test_a_new_layout_year_in_the_folder_is_on_the_page_and_in_force_from_its_year(
        console: RunningConsole, chromium: Browser, tmp_path: Path) -> None:
    """The versions are the layouts' folder's, not a copy: a 2026 layout of Flusso C dropped in is listed and, on a
    day of 2026, in force (its fields one click away); the other flows keep theirs."""
    root = tmp_path / "layouts"
    shutil.copytree(DEFAULT_ROOT, root)
    text = (root / "FLUSSO_C" / "2020.toml").read_text(encoding="utf-8")
    (root / "FLUSSO_C" / "2026.toml").write_text(text.replace('version = "2020"', 'version = "2026"'),
                                                 encoding="utf-8")
    with (mock.patch.object(instance_pages, "italian_today", lambda: NOVEMBER),
          mock.patch.object(instance_pages, "LayoutRegistry", lambda: LayoutRegistry(root))):
        async with signed_in(chromium, console, "op.201") as page:
            await page.goto(f"{console.url}/tipi-di-flusso")
            assert await _versions(page, "FLUSSO_C") == (["2020", "2026"], ["2026"])
            assert await _versions(page, "FLUSSO_MEF") == (["2020"], ["2020"])
            async with page.expect_navigation():
                await page.click("tr[data-flow-type='FLUSSO_C'] td.versioni a:has-text('2026')")
            assert await page.inner_text("main h1") == "Tracciato FLUSSO C versione 2026"
            await page.goto(f"{console.url}/tipi-di-flusso/FLUSSO_C/2020")
            assert "non è in vigore per un caricamento di novembre 2026" in await page.inner_text("main")


async def test_a_year_without_deadline_rules_is_said_in_italian_with_the_way_to_scadenze(
        console: RunningConsole, chromium: Browser) -> None:
    with mock.patch.object(instance_pages, "italian_today", lambda: date(2099, 3, 1)):
        async with signed_in(chromium, console, "op.201") as page:
            await page.goto(f"{console.url}/tipi-di-flusso")
            for flow in FlowType:
                cell = page.locator(f"tr[data-flow-type='{flow.value}'] td.scadenza")
                assert (await cell.inner_text()).strip() == (
                    "Le regole di scadenza per i dati del 2099 mancano: avvisi l'esercizio. Vedi Scadenze."), flow
                assert await cell.locator("a[href='/scadenze']").count() == 1
            # the latest layout of each flow is in force for a load of a later year
            assert (await _versions(page, "FLUSSO_C"))[1] == ["2020"]
            await _axe_clean(page, Axe(), "42-tipi-di-flusso-senza-regole")


async def test_a_role_that_cannot_list_instances_has_no_entry_and_no_page(
        console: RunningConsole, chromium: Browser) -> None:
    for user in ("desk.1", "st.1", "adm.1"):
        async with signed_in(chromium, console, user) as page:
            assert "Tipi di flusso" not in await _menu(page), user
            for path in ("/tipi-di-flusso", "/tipi-di-flusso/FLUSSO_C/2020"):
                answer = await page.goto(console.url + path)
                assert answer is not None and answer.status == 404, (user, path)
                assert "Tipi di flusso" not in await _menu(page), user
    for user in ("ops.1", "aud.1"):  # every other role that lists instances has it, after Scadenze
        async with signed_in(chromium, console, user) as page:
            menu = await _menu(page)
            assert menu[menu.index("Scadenze") + 1] == "Tipi di flusso", (user, menu)
            answer = await page.goto(f"{console.url}/tipi-di-flusso")
            assert answer is not None and answer.ok, user
