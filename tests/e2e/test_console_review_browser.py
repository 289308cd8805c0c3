"""The console as its Italian users meet it, in real Chromium, on the real app, PostgreSQL and Kafka: the defects a
user-eye review found, each checked where the user reads it. A page's parameter it cannot read answers an Italian page
(not FastAPI's English JSON) naming the parameter, with the header and a way back."""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page

from tests.console_support import RunningConsole, browser_of, italian_context, running_console
from tests.e2e.test_console_browser import _log_in
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.e2e

FEEDBACK = (b"record_key;field;code;severity;message\n"
            b"S1;patient_cf;CF_CHECK_CHAR;error;il carattere di controllo dovrebbe essere J, non K\n")


@pytest.fixture
async def console(fresh_db: str, tmp_path: Path) -> AsyncIterator[RunningConsole]:
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as running:
        await running.add_users()
        yield running


@contextlib.asynccontextmanager
async def signed_in(chromium: Browser, console: RunningConsole, user: str) -> AsyncIterator[Page]:
    """A Chromium page of an Italian browser, signed in as `user` (a console_support user)."""
    async with browser_of(chromium) as browser:
        page = await (await italian_context(browser)).new_page()
        await _log_in(page, console.url, user)
        yield page


async def _failed_load(console: RunningConsole, records: bytes = FEEDBACK, count: int = 1) -> int:
    feedback = console.file_ref("feedback.csv", "feedback", records, count, "text/csv")
    return await console.instance("201", [("flows.load-failed", {"errors": count, "summary": f"{count} errori",
                                                                 "feedback": feedback})])


async def test_a_page_parameter_it_cannot_read_gets_an_italian_page_naming_it(
        console: RunningConsole, chromium: Browser) -> None:
    instance = await _failed_load(console)
    async with signed_in(chromium, console, "op.201") as page:
        answer = await page.goto(f"{console.url}/istanze/{instance}/feedback?da=abc")
        assert answer is not None and answer.status == 422
        assert "Input should be" not in await page.content()  # FastAPI's English JSON, no page at all
        text = await page.inner_text("main")
        assert "«da»" in text and "'abc'" in text and "numero intero" in text, text
        # the header with the user and the menu, and a way back: not a dead end
        assert "op.201" in await page.inner_text("header")
        back = page.locator("main a", has_text=f"Torna all'istanza {instance}")  # the page it came from
        assert await back.count() == 1 and await back.get_attribute("href") == f"/istanze/{instance}"


def _c1_file(records: int) -> bytes:
    """A real C1 file of `records` records, as the formatter writes them."""
    from services.formatter.chunks import ChunkFormatter
    from services.formatter.columnar import ProblemLog
    from services.formatter.layouts import load_layout
    from tests.unit.test_formatter_support import service, table

    out = ChunkFormatter(load_layout("FLUSSO_C", "2020"), ProblemLog()).format(
        table([service(f"RX{n}", 1) for n in range(records)]))
    return bytes(out.records["C1"].tobytes())


async def test_a_file_page_offers_more_records_only_when_there_are_and_past_its_end_says_so(
        console: RunningConsole, chromium: Browser) -> None:
    # A feedback of exactly one page (100 problems): "Record successivi" would lead to "record da 101 a 100".
    hundred = b"record_key;field;code;severity;message\n" + b"".join(
        f"S{n};patient_cf;CF_CHECK_CHAR;error;controllo {n}\n".encode() for n in range(100))
    instance = await _failed_load(console, hundred, 100)
    c1_data = _c1_file(1)
    c1 = console.file_ref("C1_150201_202610_1.txt", "C1", c1_data, len(c1_data.splitlines()))
    formatted = await console.instance("201", [("flows.load-checked", {"source_instance": 2, "counts": {}}),
                                               ("flows.formatting-started", {}),
                                               ("flows.formatted", {"files": [c1]})])
    async with signed_in(chromium, console, "op.201") as page:
        await page.goto(f"{console.url}/istanze/{instance}/feedback")
        assert await page.locator("#tabella tbody tr").count() == 100
        assert await page.locator("nav a", has_text="Record successivi").count() == 0
        # Past the end, by an old link or a changed ?da=: an Italian page that leads back to the first records.
        for url, title in ((f"/istanze/{instance}/feedback?da=500", f"Esito dell'istanza {instance}"),
                           (f"/istanze/{formatted}/file/C1_150201_202610_1.txt?da=100", "C1_150201_202610_1.txt")):
            answer = await page.goto(console.url + url)
            assert answer is not None and answer.status == 404, url
            text = await page.inner_text("main")
            assert title in text and "non ha record dalla posizione" in text, text
            assert "no records" not in text and "da 501 a 500" not in text, text
            back = page.locator("main a", has_text="Torna ai primi record")
            assert await back.get_attribute("href") == url.split("?")[0]
        await page.goto(f"{console.url}/istanze/{formatted}/file/C1_150201_202610_1.txt")
        assert await page.locator("#tabella tbody tr").count() == len(c1_data.splitlines()) < 100


async def test_the_access_log_says_in_italian_who_read_what(console: RunningConsole, chromium: Browser) -> None:
    instance = await _failed_load(console)
    async with signed_in(chromium, console, "op.201") as page:
        await page.goto(f"{console.url}/istanze/{instance}/feedback")
    async with signed_in(chromium, console, "aud.1") as page:
        await page.goto(f"{console.url}/accessi")
        cells = await page.locator("main table").first.locator("tbody tr").first.locator("td").all_inner_texts()
        # Ruolo and Cosa in words, with the file read: never the identifiers "operator", "feedback-view"
        assert cells[1:5] == ["op.201", "operatore", "consultazione dell'esito feedback.csv", str(instance)], cells


async def test_an_access_log_filter_that_is_no_instance_number_is_refused_not_dropped(
        console: RunningConsole, chromium: Browser) -> None:
    instance = await _failed_load(console)
    async with signed_in(chromium, console, "op.201") as page:
        await page.goto(f"{console.url}/istanze/{instance}/feedback")
    async with signed_in(chromium, console, "aud.1") as page:
        await page.goto(f"{console.url}/accessi?istanza=abc")
        assert "Istanza 'abc' non valida" in await page.inner_text("main")
        # not every access listed as if it were that instance's
        assert await page.locator("main table").first.locator("tbody tr", has_text="op.201").count() == 0
        await page.goto(f"{console.url}/accessi?istanza={instance}")
        assert await page.locator("main table").first.locator("tbody tr", has_text="op.201").count() == 1


async def test_a_hash_chain_of_one_event_is_said_in_the_singular(console: RunningConsole, chromium: Browser) -> None:
    one = await console.instance("201")  # Running: one event in its stream
    two = await _failed_load(console)
    async with signed_in(chromium, console, "op.201") as page:
        await page.goto(f"{console.url}/istanze/{one}")
        assert await page.inner_text("#catena") == "verificata (1 evento)"
        await page.goto(f"{console.url}/istanze/{two}")
        assert await page.inner_text("#catena") == "verificata (2 eventi)"


async def test_the_errors_of_a_load_are_counted_as_italians_write_numbers(
        console: RunningConsole, chromium: Browser) -> None:
    instance = await _failed_load(console, count=1500)
    async with signed_in(chromium, console, "op.201") as page:
        await page.goto(f"{console.url}/istanze/{instance}")
        said = await page.inner_text("dt:has-text('Errori, avvisi') + dd")
        assert said.startswith("1.500 errori, 0 avvisi"), said


async def test_the_deadlines_caption_names_the_month_in_italian(console: RunningConsole, chromium: Browser) -> None:
    async with signed_in(chromium, console, "op.201") as page:
        await page.goto(f"{console.url}/scadenze?mese=2026-11")
        caption = await page.inner_text("main table caption")
        assert caption.startswith("Scadenze dei periodi che finiscono a novembre 2026 ("), caption
        assert await page.input_value("#mese") == "2026-11"  # the field keeps the value a month input takes


async def test_an_onboarding_state_the_dashboard_does_not_know_is_said_not_applied(
        console: RunningConsole, chromium: Browser) -> None:
    await console.onboarding_request("R-REVIEW-1", "150123")
    async with signed_in(chromium, console, "desk.1") as page:
        await page.goto(f"{console.url}/onboarding?stato=in-lavorazione")
        assert "Stato 'in-lavorazione' sconosciuto" in await page.inner_text("main")
        assert await page.locator("main table tbody tr", has_text="R-REVIEW-1").count() == 1  # not 'Nessuna richiesta'
        await page.goto(f"{console.url}/onboarding?stato=complete")
        assert await page.locator("main .alert-danger").count() == 0
        assert await page.locator("main table tbody tr", has_text="R-REVIEW-1").count() == 0


async def test_a_730_sent_after_the_gateway_key_rotated_is_refused_in_italian(fresh_db: str, tmp_path: Path,
                                                                              chromium: Browser) -> None:
    from services.ts_gateway.sealing import PUBLIC_KEY_FILE, ensure_gateway_keypair, new_key_pair, write_atomically

    keys = tmp_path / "keys"
    ensure_gateway_keypair(keys)
    async with running_console(fresh_db, KAFKA, tmp_path / "files", keys_dir=keys) as console:
        await console.add_users()
        zipped = console.file_ref("730_150201_001101_2026S2_1_p1.zip", "730-zip", b"PK", 1, "application/zip")
        instance = await console.instance("201", [("flows.load-checked", {"source_instance": 2, "counts": {}}),
                                                  ("flows.formatting-started", {}),
                                                  ("flows.formatted", {"files": [zipped]})], flow_type="FLUSSO_730")
        async with signed_in(chromium, console, "op.201") as page:
            await page.goto(f"{console.url}/istanze/{instance}/invia-ts")
            write_atomically(keys / PUBLIC_KEY_FILE, new_key_pair()[0], 0o644)  # flows ts rotate-key, meanwhile
            for field, value in (("#ts-cf", "RSSMRA80A01F839W"), ("#ts-utente", "utente"), ("#ts-password", "pw"),
                                 ("#ts-pincode", "1234")):
                await page.fill(field, value)
            async with page.expect_navigation():
                await page.click("#invia-ts button[type=submit]")
            text = await page.inner_text("main")
            assert "La chiave del gateway TS è cambiata" in text and "Nulla è stato inviato" in text, text
            assert "sealed to key" not in text and "seal them again" not in text


async def test_a_load_form_sent_twice_makes_one_instance(platform, chromium) -> None:  # type: ignore[no-untyped-def]
    """The same Nuovo caricamento form sent a second time (a double click, the browser's resubmission on F5 of the
    'Richiesta inviata' page) is the same request: the loader's idempotency (request_id) makes one instance of it.
    The same form sent for another period is another request."""
    cfg = platform.settings
    async with running_console(cfg.database_url, cfg.kafka_bootstrap, cfg.files_dir) as console:
        await console.add_users()
        async with signed_in(chromium, console, "op.201") as page:
            await page.goto(console.url + "/istanze/nuova")
            await page.select_option("#tipo", "FLUSSO_MEF")
            await page.fill("#dal", "2024-03-01")
            await page.fill("#al", "2024-03-31")
            sent = []
            page.on("request", lambda r: sent.append(r.post_data) if r.method == "POST" else None)
            async with page.expect_navigation():
                await page.click("main form button[type=submit]")
            first = page.url
            assert "/istanze/" in first and len(sent) == 1
            again = await page.request.post(console.url + "/istanze/nuova", data=sent[0], max_redirects=0, headers={
                "content-type": "application/x-www-form-urlencoded"})
            assert again.status == 303, again.status
            assert again.headers["location"] == first.removeprefix(console.url)
            # The same form changed and sent again (Back, another month, Invia) is another load: a new instance,
            # not the first one again (the form's id alone made it a duplicate, and April was never loaded).
            april = sent[0].replace("dal=2024-03-01", "dal=2024-04-01").replace("al=2024-03-31", "al=2024-04-30")
            assert april != sent[0]
            other = await page.request.post(console.url + "/istanze/nuova", data=april, max_redirects=0, headers={
                "content-type": "application/x-www-form-urlencoded"})
            assert other.status == 303, other.status
            assert other.headers["location"] != first.removeprefix(console.url)
        count = await console.pool.fetchval(
            "SELECT count(*) FROM instance_list WHERE flow_type = 'FLUSSO_MEF' AND ente = '201' "
            "AND period_start = '2024-03-01'")
        assert count == 1, f"{count} instances of one form"
        aprils = await console.pool.fetchval(
            "SELECT count(*) FROM instance_list WHERE flow_type = 'FLUSSO_MEF' AND ente = '201' "
            "AND period_start = '2024-04-01'")
        assert aprils == 1, f"{aprils} instances of April, asked from the same form"


async def test_each_esito_of_an_instance_is_read_from_its_own_link(console: RunningConsole, chromium: Browser) -> None:
    """A 730 whose load warned and which Sistema TS refused in part: the load's feedback and TS's errors of each
    part. Every 'Leggi l'esito' led to the same page, the first file's, so TS's errors could not be read there."""
    feedback = console.file_ref("feedback_1.csv", "feedback", FEEDBACK, 1, "text/csv")
    ts_csv = "COD REGIONE;DESCRIZIONE ERRORE\n150;documento {} rifiutato\n"
    parts = [console.file_ref(f"ts_errors_1_p{n}.csv", "ts-errors", ts_csv.format(f"P{n}").encode(), 1, "text/csv")
             for n in (1, 2)]
    instance = await console.instance("201", [("flows.load-checked", {"source_instance": 2, "counts": {},
                                                                      "warnings": 1, "feedback": feedback}),
                                              ("flows.formatting-started", {}),
                                              ("flows.formatted", {"files": parts})], flow_type="FLUSSO_730")
    async with signed_in(chromium, console, "op.201") as page:
        for name, said in (("ts_errors_1_p2.csv", "documento P2 rifiutato"),
                           ("ts_errors_1_p1.csv", "documento P1 rifiutato"),
                           ("feedback_1.csv", "il carattere di controllo")):
            await page.goto(f"{console.url}/istanze/{instance}")
            async with page.expect_navigation():
                await page.click(f"a:has-text(\"Leggi l'esito\"):has-text('{name}')")
            assert (await page.inner_text("main table caption")).startswith(f"{name}: "), name
            assert said in await page.inner_text("#tabella"), name


async def test_the_feedback_download_holds_every_esito_each_line_once_naming_its_esito(
        console: RunningConsole, chromium: Browser) -> None:
    """feedback.csv (and the API's feedback) gave the first esito alone: the load's feedback of a 730, without a line
    of Sistema TS's errors. It now holds every esito the pages list, each line once, led by the esito's file name
    (the caption of its page), each esito after its own header; from any esito's page 'Scarica tutti gli esiti'
    downloads it, 'Scarica il file' that esito alone."""
    esiti = {"feedback_1.csv": FEEDBACK,
             **{f"ts_errors_1_p{n}.csv": f"COD REGIONE;DESCRIZIONE ERRORE\r\n150;documento P{n} rifiutato\r\n"
                .encode() for n in (1, 2)}}
    refs = {name: console.file_ref(name, "feedback" if name.startswith("feedback") else "ts-errors", data, 1,
                                   "text/csv") for name, data in esiti.items()}
    instance = await console.instance("201", [("flows.load-checked", {"source_instance": 2, "counts": {},
                                                                      "warnings": 1,
                                                                      "feedback": refs["feedback_1.csv"]}),
                                              ("flows.formatting-started", {}),
                                              ("flows.formatted", {"files": [refs["ts_errors_1_p1.csv"],
                                                                             refs["ts_errors_1_p2.csv"]]})],
                                     flow_type="FLUSSO_730")
    expected = []
    for name, data in esiti.items():
        header, *lines = _csv_rows(data)
        expected += [["esito", *header], *[[name, *line] for line in lines]]
    async with signed_in(chromium, console, "op.201") as page:
        for url in (f"/istanze/{instance}/feedback.csv", f"/api/istanze/{instance}/feedback"):
            answer = await page.request.get(console.url + url)
            assert answer.ok, url
            assert _csv_rows(await answer.body()) == expected, url
            assert f'filename="esiti_{instance}.csv"' in answer.headers["content-disposition"], url
        await page.goto(f"{console.url}/istanze/{instance}/feedback?file=ts_errors_1_p2.csv")
        async with page.expect_download() as every:
            await page.click("text=Scarica tutti gli esiti")
        assert _csv_rows((await (await every.value).path()).read_bytes()) == expected
        async with page.expect_download() as one:
            await page.click("text=Scarica il file")
        assert (await (await one.value).path()).read_bytes() == esiti["ts_errors_1_p2.csv"]


def _csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=";"))


async def test_a_730_or_ts_csv_page_past_its_end_says_so_too(console: RunningConsole, chromium: Browser) -> None:
    errors = console.file_ref("ts_errors_1_p1.csv", "ts-errors", b"COD REGIONE;DESCRIZIONE ERRORE\n150;x\n", 1,
                              "text/csv")
    instance = await console.instance("201", [("flows.load-checked", {"source_instance": 2, "counts": {}}),
                                              ("flows.formatting-started", {}),
                                              ("flows.formatted", {"files": [errors]})], flow_type="FLUSSO_730")
    async with signed_in(chromium, console, "op.201") as page:
        answer = await page.goto(f"{console.url}/istanze/{instance}/file/ts_errors_1_p1.csv?da=500")
        assert answer is not None and answer.status == 404
        assert "non ha record dalla posizione 501" in await page.inner_text("main")


# Every Content-Security-Policy violation of the page, as the browser reports it (the `securitypolicyviolation`
# event): installed before any of the page's own scripts and styles run.
COLLECT_CSP_VIOLATIONS = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(`${e.effectiveDirective} blocked ${e.blockedURI.slice(0, 40)} (${e.sourceFile})`));
"""


async def test_no_page_breaks_its_own_content_security_policy(console: RunningConsole, chromium: Browser) -> None:
    """Bootstrap Italia's CSS embeds the VideoJS icon font as a data: URL; under `default-src 'self'` the browser
    refused it (seen only in its console). The pages load with no CSP violation and no console error."""
    instance = await _failed_load(console)
    async with signed_in(chromium, console, "op.201") as page:
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text[:160]) if m.type == "error" else None)
        await page.add_init_script(COLLECT_CSP_VIOLATIONS)
        for path in ("/istanze", "/istanze/nuova", f"/istanze/{instance}", f"/istanze/{instance}/feedback",
                     "/scadenze"):
            answer = await page.goto(console.url + path)
            assert answer is not None and answer.ok, path
            await page.evaluate("document.fonts.ready")
            violations = await page.evaluate("window.__csp")
            assert (violations, errors) == ([], []), f"{path}: {violations} {errors}"
        # What was allowed is that font, and no more: fonts from the console itself or a data: URL, nowhere else.
        policy = (await page.request.get(console.url + "/istanze")).headers["content-security-policy"]
        assert "font-src 'self' data:" in [d.strip() for d in policy.split(";")], policy
