"""The console in real Chromium (Debian's package, driven by Playwright) against the real services: an operator of ente
201 logs in, loads a month and watches it go Scheduled -> Running -> Checked with no reload, reads the feedback of a
failed load, formats and watches Formatted arrive, views a file as a table, downloads it; cannot open ente 202's
instance; fills and sends Nuovo caricamento with the keyboard alone; formats a Checked instance from its row of the
list and downloads a failed load's feedback from its row, where the auditor is offered no action; axe-core finds no
serious or critical violation on any page; the access log holds the file view. Screenshots of every page go to
out/console-screenshots/ (not committed).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Page

from contracts import flows
from services.runtime.commands import send_command
from services.ts_gateway.sealing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, key_id, sealed_key_id, unseal
from simulators.cup.generator import month_period
from tests.console_support import (
    PASSWORD,
    STRUCTURE,
    browser_of,
    is_current_static_url,
    italian_context,
    running_console,
)
from tests.e2e import test_secrets_canary as canary
from tests.e2e.driving import _formatted_730, _wait_state, publish_month
from tests.e2e.test_secrets_canary import folder_files, needles_for, scan_everything, search
from tests.fixtures.onboarding.workbooks import aggregation_rows, workbook
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.e2e
canary_account = canary.canary_account  # the secrets canary's planted TS account (a fixture)

SCREENS = Path(__file__).resolve().parents[2] / "out" / "console-screenshots"
# Records every state the badge shows, and proves the page was never reloaded (the marker survives).
WATCH_STATES = """() => {
  window.__noReload = "kept";
  window.__states = [document.querySelector('#stato .badge').dataset.state];
  new MutationObserver(() => {
    const b = document.querySelector('#stato .badge');
    if (b && window.__states[window.__states.length - 1] !== b.dataset.state) window.__states.push(b.dataset.state);
  }).observe(document.getElementById('stato-istanza'), {childList: true, subtree: true});
}"""


# The history's rows of a 730's parts as the open page shows them, after each change: [sent, esiti] counts, a new pair
# whenever they change (the first: what the page had when it landed).
WATCH_PARTS = """() => {
  const counts = () => {
    const details = [...document.querySelectorAll('#stato-istanza table tbody tr td:nth-child(4)')]
      .map(t => t.textContent);
    return [details.filter(d => /^parte \\d+ di \\d+, protocollo/.test(d)).length,
            details.filter(d => /^parte \\d+ di \\d+: /.test(d)).length];
  };
  window.__parts = [counts()];
  new MutationObserver(() => {
    const now = counts(), last = window.__parts[window.__parts.length - 1];
    if (now[0] !== last[0] || now[1] !== last[1]) window.__parts.push(now);
  }).observe(document.getElementById('stato-istanza'), {childList: true, subtree: true});
}"""


# The visible form fields whose boundary cannot be seen (WCAG 2.1 1.4.11, non-text contrast: no side with a border
# of at least 1px whose colour has 3:1 against the background behind the field). axe does not check this; an
# <input> without a type once got no border at all from Bootstrap Italia, whose rules name input[type=text].
UNSEEN_FIELDS = """() => {
  const rgb = c => (c.match(/[\\d.]+/g) || []).map(Number);
  const linear = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = ([r, g, b]) => [r, g, b].map(linear).reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const behind = el => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length >= 3 && (c.length < 4 || c[3] > 0.5)) return c;
    }
    return [255, 255, 255];
  };
  const skip = new Set(['hidden', 'submit', 'button', 'checkbox', 'radio', 'file', 'reset', 'image']);
  return [...document.querySelectorAll('input, select, textarea')]
    .filter(el => el.getClientRects().length > 0 && !skip.has(el.type))
    .filter(el => {
      const s = getComputedStyle(el), bg = behind(el.parentElement || el);
      return !['Top', 'Right', 'Bottom', 'Left'].some(side =>
        parseFloat(s['border' + side + 'Width']) >= 1 && s['border' + side + 'Style'] !== 'none'
        && ratio(rgb(s['border' + side + 'Color']), bg) >= 3);
    })
    .map(el => el.id || el.name || el.outerHTML.slice(0, 80));
}"""


async def _axe_clean(page: Page, axe: Axe, name: str) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)
    results = await axe.run(page)
    serious = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
               for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert serious == [], f"{name}: {serious}"
    assert await page.evaluate(UNSEEN_FIELDS) == [], f"{name}: form fields without a visible boundary"


async def _wait_badge(page: Page, states: set[str], timeout_s: float = 120) -> str:
    await page.wait_for_function(
        "states => states.includes(document.querySelector('#stato .badge')?.dataset.state)",
        arg=sorted(states), timeout=timeout_s * 1000)
    return str(await page.get_attribute("#stato .badge", "data-state"))


async def _log_in(page: Page, url: str, user: str) -> None:
    """The login form, sent from the keyboard."""
    await page.goto(url + "/login")
    await page.fill("#utente", user)
    await page.fill("#password", PASSWORD)
    async with page.expect_navigation():
        await page.keyboard.press("Enter")


async def _submit_load(page: Page, month: str, scheduled: datetime | None) -> None:
    start, end = month_period(month)
    await page.goto(page.url.split("/istanze")[0] + "/istanze/nuova")
    await page.select_option("#tipo", "FLUSSO_C")
    await page.select_option("#ente", "201")
    await page.fill("#dal", start.isoformat())
    await page.fill("#al", end.isoformat())
    if scheduled is not None:
        await page.fill("#pianificata", scheduled.strftime("%Y-%m-%dT%H:%M:%S"))
    # The form is sent from the keyboard: focus on the last field, Enter.
    await page.focus("#pianificata")
    async with page.expect_navigation():
        await page.keyboard.press("Enter")


async def test_an_operator_of_201_works_a_month_in_the_browser(platform, chromium) -> None:  # type: ignore[no-untyped-def]
    pool = await platform.pool()
    cfg = platform.settings
    try:
        await publish_month(platform, pool, "201", "2026-08", 3000, seed=21)
        await publish_month(platform, pool, "201", "2026-07", 300, seed=22, bad=3)
        async with running_console(cfg.database_url, cfg.kafka_bootstrap, cfg.files_dir) as console, \
                browser_of(chromium) as browser:
            await console.add_users()
            foreign = await console.instance("202")
            context = await italian_context(browser, accept_downloads=True)
            page = await context.new_page()
            axe = Axe()
            # Every asset the browser fetches, console.js's fonts of Bootstrap Italia included (built below
            # data-vendor): the URL, its status and Cache-Control (services/console/assets.py).
            assets: list[tuple[str, int, str | None]] = []
            page.on("response", lambda r: assets.append((r.url.removeprefix(console.url), r.status,
                                                         r.headers.get("cache-control")))
                    if r.url.startswith(console.url + "/static/") else None)

            await page.goto(console.url + "/istanze")
            assert "/login" in page.url
            await _axe_clean(page, axe, "01-login")
            # console.js hands Bootstrap Italia its font path (window.__PUBLIC_PATH__, from data-vendor: the font
            # URLs carry the vendor directory's fingerprint) and asks the bundle for its fonts: the page is set in
            # Titillium Web, the Designers Italia face, fetched by the browser itself (not the system's fallback).
            fonts = await page.evaluate("window.__PUBLIC_PATH__")
            assert fonts.endswith("/fonts") and is_current_static_url(fonts.removesuffix("/fonts")), fonts
            assert await page.evaluate("document.fonts.ready.then(() => document.fonts.check(\"16px 'Titillium "
                                       "Web'\") && [...document.fonts].some(f => f.family.includes('Titillium') "
                                       "&& f.status === 'loaded'))"), "Titillium Web did not load"
            await page.fill("#utente", "op.201")
            await page.fill("#password", PASSWORD)
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            assert page.url.endswith("/istanze")
            # the browser is an Italian operator's: its language and its clock (tests.console_support.italian_context)
            assert await page.evaluate("[navigator.language, Intl.DateTimeFormat().resolvedOptions().timeZone]") == [
                "it-IT", "Europe/Rome"]
            await _axe_clean(page, axe, "02-istanze")

            # A load scheduled a few seconds ahead: the page sees every state arrive, live. The watcher goes on
            # first, then the accessibility scan (a screenshot and axe take seconds on a loaded machine: with the
            # watcher after them and 4 s of lead, the load could already be Running when it began to watch).
            await _submit_load(page, "2026-08", datetime.now(ZoneInfo("Europe/Rome")) + timedelta(seconds=10))
            await page.evaluate(WATCH_STATES)
            await _axe_clean(page, axe, "03-istanza-pianificata")
            checked_url = page.url
            assert await _wait_badge(page, {"Checked", "Failed loading"}) == "Checked"
            states = await page.evaluate("window.__states")
            assert states[0] == "Scheduled" and states[-1] == "Checked" and "Running" in states, states
            assert await page.evaluate("window.__noReload") == "kept"
            await _axe_clean(page, axe, "04-istanza-verificata")

            # A month with planted bad records fails; its feedback is a table naming each problem.
            await _submit_load(page, "2026-07", None)
            assert await _wait_badge(page, {"Checked", "Failed loading"}) == "Failed loading"
            await page.click("text=Leggi l'esito")
            assert await page.locator("table#tabella tbody tr").count() >= 3
            # What the operator reads is Italian: the titles, the severity, the messages (the file keeps its contract)
            assert await page.locator("table#tabella thead th").all_inner_texts() == [
                "Record", "Campo", "Codice", "Gravità", "Messaggio"]
            severities = set(await page.locator("table#tabella tbody td:nth-child(4)").all_inner_texts())
            assert "errore" in severities and severities <= {"errore", "avviso"}, severities
            messages = await page.locator("table#tabella tbody td:nth-child(5)").all_inner_texts()
            assert all(re.match(r"(il|la|le|nessun|prestazione) ", m) for m in messages), messages
            await _axe_clean(page, axe, "05-esito")
            async with page.expect_download() as csv:
                await page.click("text=Scarica il file")
            assert (await csv.value).suggested_filename.endswith(".csv")

            # Format the Checked instance; Formatted and its files arrive without a reload.
            await page.goto(checked_url)
            await page.evaluate(WATCH_STATES)
            await page.click("button:has-text('Formatta')")
            await page.wait_for_url(checked_url)
            await page.evaluate(WATCH_STATES)
            assert await _wait_badge(page, {"Formatted", "Format failed"}) == "Formatted"
            assert await page.evaluate("window.__noReload") == "kept"
            await page.wait_for_selector("text=Vedi C2")
            await _axe_clean(page, axe, "06-istanza-formattata")
            # Each file's links say "Vedi" and "Scarica" on screen (the row names the file) and name it for a screen
            # reader: every link's accessible name is its own.
            names = await page.locator("table:has(caption:has-text('File dell')) a").evaluate_all(
                "links => links.map(a => a.textContent.replace(/\\s+/g, ' ').trim())")
            assert len(names) == len(set(names)) == 4 and all(n.split(" ", 1)[1].startswith(("C1_", "C2_"))
                                                              for n in names), names
            shown = await page.locator("table:has(caption:has-text('File dell')) td.text-end").all_inner_texts()
            assert all(c.replace(".", "").isdigit() for c in shown) and any("." in c for c in shown), shown
            async with page.expect_download() as one:
                await page.locator("a:has-text('Scarica C2')").first.click()
            downloaded = await one.value
            assert downloaded.suggested_filename.startswith("C2")
            async with page.expect_download() as zipped:
                await page.click("text=Scarica tutti i file (zip)")
            assert (await zipped.value).suggested_filename.endswith(".zip")
            await page.locator("a:has-text('Vedi C2')").first.click()
            assert await page.locator("table#tabella tbody tr").count() > 0
            # The columns are the layout's Italian labels; a value a record does not have is an empty cell
            titles = await page.locator("table#tabella thead th").all_inner_texts()
            assert titles[:6] == ["Regione addebitante", "Azienda inviante", "Struttura erogatrice", "Numero ricetta",
                                  "Progressivo riga", "Data erogazione"], titles
            assert "None" not in await page.locator("table#tabella tbody td").all_inner_texts()
            await _axe_clean(page, axe, "07-file-c2")
            # The table still sorts by a column (console.js), numbers as numbers, both ways
            row_column = page.locator("table#tabella tbody td:nth-child(5)")
            await page.locator("table#tabella thead th").nth(4).locator("button").click()
            assert await page.locator("table#tabella thead th").nth(4).get_attribute("aria-sort") == "ascending"
            rows = [int(v) for v in await row_column.all_inner_texts()]
            assert rows == sorted(rows) and rows[-1] == 99 and rows[0] == 1, rows
            await page.locator("table#tabella thead th").nth(4).locator("button").click()
            assert [int(v) for v in await row_column.all_inner_texts()] == sorted(rows, reverse=True)

            # Another ente's instance does not exist for this operator.
            response = await page.goto(f"{console.url}/istanze/{foreign}")
            assert response is not None and response.status == 404
            assert await page.locator("h1").inner_text() == "Pagina non trovata"
            await _axe_clean(page, axe, "08-non-trovata")

            await page.goto(console.url + "/istanze/nuova")
            await _axe_clean(page, axe, "09-nuovo-caricamento")
            await browser.close()

            # The browser asked for nothing under /static but the current content, and was told to keep it.
            assert any(url.endswith(".woff2") for url, _, _ in assets), assets  # the font, below data-vendor
            assert [a for a in assets if not is_current_static_url(a[0]) or a[1] not in (200, 304)
                    or a[2] != "public, max-age=31536000, immutable"] == []

            instance = int(checked_url.rsplit("/", 1)[1])
            views = await pool.fetch("SELECT data FROM events WHERE stream_id LIKE 'access-%' AND actor = 'op.201' "
                                     "AND (data->>'instance')::bigint = $1", instance)
            assert {"file-view", "file-download", "files-zip"} <= {v["data"]["what"] for v in views}
            history = await pool.fetch("SELECT type, actor FROM events WHERE stream_id = $1 ORDER BY version",
                                       f"instance-{instance}")
            # The history names the user who asked: the load and the format commands carried op.201 as actor.
            actors = [(h["type"], h["actor"]) for h in history]
            assert ("flows.load-scheduled", "op.201") in actors and ("flows.format-requested", "op.201") in actors
            requested = await pool.fetchval("SELECT requested_by FROM instance_list WHERE instance = $1", instance)
            assert requested == "op.201"
    finally:
        await pool.close()


async def _loaded(platform, pool: asyncpg.Pool, ente: str, month: str) -> asyncpg.Record:  # type: ignore[no-untyped-def]
    """A FLUSSO_C load of `ente`'s `month` asked on Kafka as the console asks it: its instance_list row once the loader
    has checked it (Checked or Failed loading)."""
    start, end = month_period(month)
    request = flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, ente=ente,
                                  period=flows.Period(start=start, end=end), requested_by="op.201")
    await send_command(platform.settings.kafka_bootstrap, "flows.load-requested", request,
                       key=str(request.request_id))
    async with asyncio.timeout(60):
        while (instance := await pool.fetchval("SELECT instance FROM instance_list WHERE request_id = $1",
                                               request.request_id)) is None:
            await asyncio.sleep(0.2)
    return await _wait_state(pool, instance, {"Checked", "Failed loading"})


async def test_the_list_offers_each_rows_actions_to_whom_may_take_them(platform, chromium) -> None:  # type: ignore[no-untyped-def]
    """The list's Azioni column (Lista istanze di flusso: AZIONE, CANCELLA, Scarica FeedBack): the operator formats a
    Checked instance from its row and the instance moves on to Formatted, whose row then offers its files; downloads
    the feedback of a Failed loading from its row; Cancella leads to the instance page's form, which asks the reason.
    The auditor reads the same rows and downloads the same feedback, and is offered no action. Every link and button
    of the column has a name of its own for a screen reader, naming its instance; axe finds nothing serious."""
    pool = await platform.pool()
    cfg = platform.settings
    try:
        await publish_month(platform, pool, "201", "2026-01", 200, seed=31)
        await publish_month(platform, pool, "201", "2026-04", 300, seed=32, bad=3)
        checked = await _loaded(platform, pool, "201", "2026-01")
        failed = await _loaded(platform, pool, "201", "2026-04")
        assert (checked["state"], failed["state"]) == ("Checked", "Failed loading"), (dict(checked), dict(failed))
        ok, bad = int(checked["instance"]), int(failed["instance"])
        async with running_console(cfg.database_url, cfg.kafka_bootstrap, cfg.files_dir) as console, \
                browser_of(chromium) as browser:
            await console.add_users()
            axe = Axe()
            page = await (await italian_context(browser, accept_downloads=True)).new_page()
            await _log_in(page, console.url, "op.201")
            await page.goto(console.url + "/istanze")
            assert (await page.locator("table thead th").all_inner_texts())[-1] == "Azioni"
            await _axe_clean(page, axe, "14-istanze-azioni")
            assert await page.evaluate(UNIQUE_ACTION_NAMES) == [], "two items of the column have the same name"

            # The Failed loading row: its feedback and Cancella, nothing to format.
            assert await page.get_by_role("button", name=f"Formatta l'istanza {bad}", exact=True).count() == 0
            async with page.expect_download() as got:
                await page.get_by_role("link", name=f"Scarica l'esito (FeedBack) dell'istanza {bad}",
                                       exact=True).click()
            download = await got.value
            assert download.suggested_filename == f"feedback_{bad}.csv"
            stored = await pool.fetchval("SELECT sha256 FROM instance_files WHERE instance = $1 AND kind = 'feedback'",
                                         bad)
            body = Path(await download.path()).read_bytes()
            assert body == console.files.path(stored).read_bytes() and body.count(b"\n") >= 4
            assert body.startswith(b"record_key;field;code;severity;message")
            # Cancella leads to the instance page's form: a deletion needs its reason.
            await page.get_by_role("link", name=f"Cancella… l'istanza {bad}", exact=True).click()
            await page.wait_for_url(f"{console.url}/istanze/{bad}#cancella")
            assert await page.locator("form#cancella #motivo").is_visible()

            # The Checked row: Formatta starts the formatting, and the instance page shows it arrive.
            await page.goto(console.url + "/istanze")
            formatta = page.get_by_role("button", name=f"Formatta l'istanza {ok}", exact=True)
            async with page.expect_navigation(url=f"{console.url}/istanze/{ok}"):
                await formatta.click()
            assert await _wait_badge(page, {"Formatted", "Format failed"}) == "Formatted"
            await page.goto(console.url + "/istanze")
            row = page.locator(f"tbody tr:has(a[href='/istanze/{ok}'])")
            assert await row.locator(".badge").get_attribute("data-state") == "Formatted"
            assert await row.get_by_role("button").count() == 0  # formatted: nothing to format any more
            async with page.expect_download() as zipped:
                await page.get_by_role("link", name=f"Scarica i file (zip) dell'istanza {ok}", exact=True).click()
            assert (await zipped.value).suggested_filename == f"istanza-{ok}.zip"
            await _axe_clean(page, axe, "15-istanze-formattata")
            actors = [(h["type"], h["actor"]) for h in await pool.fetch(
                "SELECT type, actor FROM events WHERE stream_id = $1 ORDER BY version", f"instance-{ok}")]
            assert ("flows.format-requested", "op.201") in actors

            # The auditor reads every row and downloads the feedback, and may act on none.
            auditor = await (await italian_context(browser, accept_downloads=True)).new_page()
            await _log_in(auditor, console.url, "aud.1")
            await auditor.goto(console.url + "/istanze")
            assert await auditor.locator(f"tbody tr:has(a[href='/istanze/{bad}'])").count() == 1
            assert await auditor.locator("td.azioni button").count() == 0
            assert await auditor.locator("td.azioni a[href$='#cancella'], td.azioni a[href$='/invia-ts']").count() == 0
            assert await auditor.get_by_role("link", name=re.compile(r"^(Formatta|Cancella)")).count() == 0
            async with auditor.expect_download() as got:
                await auditor.get_by_role("link", name=f"Scarica l'esito (FeedBack) dell'istanza {bad}",
                                          exact=True).click()
            assert (await got.value).suggested_filename == f"feedback_{bad}.csv"
            assert await auditor.evaluate(UNIQUE_ACTION_NAMES) == []
            await _axe_clean(auditor, axe, "16-istanze-revisore")
            await browser.close()
        downloads = await pool.fetch("SELECT actor FROM events WHERE stream_id LIKE 'access-%' "
                                     "AND data->>'what' = 'feedback-download' AND (data->>'instance')::bigint = $1",
                                     bad)
        assert {d["actor"] for d in downloads} >= {"op.201", "aud.1"}
    finally:
        await pool.close()


# The accessible names (text content, visually hidden parts included) of the Azioni column's links and buttons that
# another one has too: none, when each names its instance.
UNIQUE_ACTION_NAMES = """() => {
  const names = [...document.querySelectorAll('td.azioni a, td.azioni button')]
    .map(e => e.textContent.replace(/\\s+/g, ' ').trim());
  return names.filter((n, i) => names.indexOf(n) !== i || !/istanza \\d+$/.test(n));
}"""


# The id (or tag) of the element that has the keyboard's focus.
FOCUSED = "document.activeElement.id || document.activeElement.tagName"


async def _tab_out_of(page: Page, field: str) -> str:
    """Tab until the focus leaves `field` (a date input takes one Tab per part: day, month, year); the next's id."""
    for _ in range(8):
        await page.keyboard.press("Tab")
        if (now := await page.evaluate(FOCUSED)) != field:
            return str(now)
    raise AssertionError(f"Tab never left #{field}")


async def _type_date(page: Page, field: str, iso: str) -> None:
    """Types `iso` into the focused date input `field` as its segments come. Chromium orders day and month by its own
    language, not the page's locale (headless Debian chromium: mm/dd/yyyy; an Italian operator's: gg/mm/aaaa):
    month first is tried, and if the field took it the other way, Shift+Tab back to its first segment, day first."""
    year, month, day = iso.split("-")
    await page.keyboard.type(month + day + year)
    if await page.input_value("#" + field) != iso:
        for _ in range(2):
            await page.keyboard.press("Shift+Tab")
        await page.keyboard.type(day + month + year)
    assert await page.input_value("#" + field) == iso


async def test_the_load_form_is_filled_and_sent_with_the_keyboard_alone(platform, chromium) -> None:  # type: ignore[no-untyped-def]
    """Nuovo caricamento with no mouse and no fill(): Tab from the top of the page to the form, the flow type chosen
    with the arrow keys, the dates typed digit by digit into the date fields, the scheduled start left
    empty, Space on Avvia caricamento; the loader takes the load and the page is its instance."""
    cfg = platform.settings
    async with running_console(cfg.database_url, cfg.kafka_bootstrap, cfg.files_dir) as console, \
            browser_of(chromium) as browser:
        await console.add_users()
        page = await (await italian_context(browser)).new_page()
        await _log_in(page, console.url, "op.201")
        await page.goto(console.url + "/istanze/nuova")
        for _ in range(40):  # the header's links and the menu come first
            await page.keyboard.press("Tab")
            if await page.evaluate(FOCUSED) == "tipo":
                break
        else:
            raise AssertionError("Tab never reached the form's first field")
        assert await page.input_value("#tipo") == "FLUSSO_C"
        for _ in range(2):  # FLUSSO C, FLUSSO C PACC, FLUSSO MEF SOGEI
            await page.keyboard.press("ArrowDown")
        assert await page.input_value("#tipo") == "FLUSSO_MEF"
        assert await _tab_out_of(page, "tipo") == "ente"
        assert await page.input_value("#ente") == "201"
        assert await _tab_out_of(page, "ente") == "dal"
        await _type_date(page, "dal", "2024-05-01")
        assert await _tab_out_of(page, "dal") == "al"
        await _type_date(page, "al", "2024-05-31")
        assert await _tab_out_of(page, "al") == "pianificata"
        assert await _tab_out_of(page, "pianificata") == "BUTTON"
        assert await page.evaluate("document.activeElement.textContent") == "Avvia caricamento"
        async with page.expect_navigation(url=re.compile(re.escape(console.url) + r"/istanze/\d+$")):
            await page.keyboard.press("Space")
        instance = int(page.url.rsplit("/", 1)[1])
        row = await console.pool.fetchrow("SELECT flow_type, ente, period_start, period_end, requested_by "
                                          "FROM instance_list WHERE instance = $1", instance)
        assert (row["flow_type"], row["ente"], row["period_start"].isoformat(), row["period_end"].isoformat(),
                row["requested_by"]) == ("FLUSSO_MEF", "201", "2024-05-01", "2024-05-31", "op.201")
        shown = await page.inner_text("main dl")
        assert "FLUSSO MEF SOGEI" in shown and "01/05/2024 – 31/05/2024" in shown, shown


async def test_a_730_sent_with_credentials_sealed_in_the_browser(  # type: ignore[no-untyped-def]
        platform, stack, canary_account, tmp_path, chromium) -> None:
    """The browser seals the TS credentials (WebCrypto) into the gateway's box; the console only ever
    receives the box; the gateway opens it, the simulator confirms, and the page shows each part's submission and
    esito, then Confirmed, live.
    The canary account's values typed in the browser are then nowhere in clear (nor hex, base64,
    UTF-16): not in Kafka, the database, the files, the services' or the console's logs."""
    cfg = platform.settings
    instance = await _formatted_730(platform, "201", "2026-05", services=120)
    pool = await platform.pool()
    typed = canary_account
    console_log = tmp_path / "console-logs" / "console.log"
    console_log.parent.mkdir()
    handler = logging.FileHandler(console_log)
    logging.getLogger().addHandler(handler)  # uvicorn's and the console's records, as a deployment keeps them
    try:
        async with running_console(cfg.database_url, cfg.kafka_bootstrap, cfg.files_dir,
                                   keys_dir=cfg.keys_dir) as console, browser_of(chromium) as browser:
            await console.add_users()
            page = await (await italian_context(browser)).new_page()
            posted: list[str] = []
            page.on("request", lambda r: posted.append(r.post_data or "") if r.method == "POST" else None)
            axe = Axe()
            await _log_in(page, console.url, "op.201")
            await page.goto(f"{console.url}/istanze/{instance}")
            async with page.expect_navigation():
                await page.click("text=Invia a Sistema TS")
            await _axe_clean(page, axe, "10-invia-ts")

            # A box sealed by this browser opens with the gateway's private key, to the same values.
            public_pem = (cfg.keys_dir / PUBLIC_KEY_FILE).read_text()
            box = await page.evaluate("pem => window.flowsSealTs(pem, {user: 'u1', password: 'p<w>\"d', "
                                      "pincode: '42', cf_proprietario: 'RSSMRA80A01H501U'})", public_pem)
            assert sealed_key_id(box) == key_id(public_pem.encode())
            opened = unseal((cfg.keys_dir / PRIVATE_KEY_FILE).read_bytes(), box)
            assert (opened.user, opened.password, opened.pincode, opened.cf_proprietario) == \
                ("u1", 'p<w>"d', "42", "RSSMRA80A01H501U")

            # The form with the keyboard alone: type, Tab to the next field, Enter sends.
            await page.focus("#ts-cf")
            for value in (typed["cf_proprietario"], typed["user"], typed["password"], typed["pincode"]):
                await page.keyboard.type(value)
                await page.keyboard.press("Tab")
            async with page.expect_navigation(url=f"{console.url}/istanze/{instance}"):
                await page.keyboard.press("Enter")
            await page.evaluate(WATCH_STATES)
            await page.evaluate(WATCH_PARTS)
            assert await _wait_badge(page, {"Confirmed", "Confirmed with errors", "Rejected"}) == "Confirmed"
            assert await page.evaluate("window.__noReload") == "kept"
            # The outcome came part by part, live: each part's submission and esito rows of the history arrived on the
            # open page (the zips are small: several parts), and the page showed some before it showed them all.
            parts = await pool.fetchval("SELECT count(*) FROM instance_files WHERE instance = $1 AND kind = '730-zip'",
                                        instance)
            seen = await page.evaluate("window.__parts")
            assert parts > 1 and seen[-1] == [parts, parts], (parts, seen)
            assert seen[0][1] < parts, f"every esito was already on the page it landed on: {seen}"
            assert any(0 < esiti < parts for _, esiti in seen), f"the esiti arrived all at once: {seen}"
            await _axe_clean(page, axe, "11-confermata")
            await browser.close()

        sent = [p for p in posted if "sigillo=" in p]
        assert len(sent) == 1
        needles = needles_for(typed)
        posts = [h for body in posted for h in search("browser POST", "request body", body.encode(), needles)]
        assert posts == [], "a credential left the browser in clear"
        scan = await scan_everything(platform, stack, needles)
        console_logs = [h for where, blob in folder_files(console_log.parent)
                        for h in search("console logs", where, blob, needles)]
        assert scan.hits + console_logs == [], scan.hits + console_logs
        assert all(scan.seen[place] > 0 for place in ("kafka", "database", "files", "logs")), scan.seen
        actors = await pool.fetch("SELECT type, actor FROM events WHERE stream_id = $1", f"instance-{instance}")
        assert ("flows.ts-submission-requested", "op.201") in [(a["type"], a["actor"]) for a in actors] or \
            await pool.fetchval("SELECT count(*) FROM events WHERE stream_id = $1 AND data->>'requested_by' = "
                                "'op.201'", f"instance-{instance}") > 0
    finally:
        logging.getLogger().removeHandler(handler)
        await pool.close()


async def test_the_desk_sees_the_wrong_cell_of_an_uploaded_workbook(fresh_db, tmp_path, chromium) -> None:  # type: ignore[no-untyped-def]
    """A desk user uploads tracciati with a wrong IUP_SSA_CODE and the page names sheet, row, column,
    cell and rule; the structure sees only its own request; axe on the onboarding pages."""
    wrong = aggregation_rows()
    wrong["Prestazioni"][0][3] = "150999"
    book = tmp_path / "allegato-a1.xlsx"
    book.write_bytes(workbook({"Prestazioni": wrong["Prestazioni"]}))
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, browser_of(chromium) as browser:
        await console.add_users()
        own = await console.onboarding_request("ONB-VESUVIO", STRUCTURE)
        other = await console.onboarding_request("ONB-VOMERO", "150321", "Centro <b>Vomero</b>")
        axe = Axe()
        page = await (await italian_context(browser)).new_page()
        await _log_in(page, console.url, "desk.1")
        await page.goto(console.url + "/onboarding")
        assert await page.locator(f"a[href='/onboarding/{other}']").count() == 1
        assert "Centro <b>Vomero</b>" in await page.locator("table#richieste").inner_text()  # shown, not interpreted
        await _axe_clean(page, axe, "12-onboarding")
        await page.goto(f"{console.url}/onboarding/{own}")
        await page.select_option("#tipo-doc", "tracciato-prestazioni")
        await page.set_input_files("#documento", str(book))
        async with page.expect_navigation():
            await page.click("button:has-text('Carica e valuta')")
        assert "Documento allegato-a1.xlsx ricevuto e valutato" in await page.inner_text("#esito")
        finding = page.locator("tr.rilievo", has_text="150999")
        assert await finding.count() == 1
        cells = await finding.locator("td").all_inner_texts()
        assert cells[:4] == ["Prestazioni", "2", "IUP_SSA_CODE", "D2"], cells
        assert cells[4] == "150999 non è l'STS11 dell'HUB 150123", cells
        await _axe_clean(page, axe, "13-onboarding-richiesta")

        structure = await (await italian_context(browser)).new_page()
        await _log_in(structure, console.url, "st.1")
        await structure.goto(console.url + "/onboarding")
        assert await structure.locator(f"a[href='/onboarding/{own}']").count() == 1
        assert await structure.locator(f"a[href='/onboarding/{other}']").count() == 0
        response = await structure.goto(f"{console.url}/onboarding/{other}")
        assert response is not None and response.status == 404
        await browser.close()
