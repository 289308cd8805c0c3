"""The console's onboarding pieces over HTTP, on the real app, PostgreSQL and Kafka: a request's document
downloaded by the desk and by its own structure (the bytes as received, each download in the access
log with who, when, what and from where), 404 to everyone else and for a document of another request;
a switch request from the page, refused on a broken rule with the earliest valid slot proposed (the
onboarding service's rule; the dashboard keeps the refusal as data, the pages write it in Italian), then taken
for the proposed slot, the structure's user as actor; a document
uploaded on a REAL full disk (tests/fault_disk.py), refused at once in Italian with nothing kept."""

from __future__ import annotations

import hashlib
import html
import os
import re
import tempfile
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from contracts.deadlines import italian_today
from services.console.labels import ONBOARDING_STATUS_LABELS, WEEKDAYS_IT
from services.onboarding.switch import SwitchCalendar, day_text, load_patron_days
from tests.console_support import STRUCTURE, RunningConsole, csrf_of, running_console
from tests.fault_disk import small_disk
from tests.fixtures.onboarding.workbooks import aggregation_rows, workbook
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

NAPOLI = "063049"  # the municipality of every request console_support opens
PDF = b"%PDF-1.4\n% autorizzazione SUAP del Laboratorio Vesuvio, firmata dal dott. Esposito\n"


async def _downloads(console: RunningConsole) -> list[dict]:
    rows = await console.pool.fetch("SELECT actor, recorded_at, data FROM events WHERE stream_id LIKE 'access-%' "
                                    "AND data->>'what' = 'onboarding-document-download' ORDER BY recorded_at")
    return [{"actor": r["actor"], "at": r["recorded_at"], **r["data"]} for r in rows]


async def test_a_document_is_downloaded_by_the_desk_and_its_structure_only_and_each_download_is_logged(
        console: RunningConsole) -> None:
    own = await console.onboarding_request("ONB-VESUVIO", STRUCTURE)
    other = await console.onboarding_request("ONB-VOMERO", "150321", "Centro Vomero")
    document = await console.onboarding_document(own, "autorizzazione SUAP.pdf", PDF)
    foreign = await console.onboarding_document(other, "altro.pdf", b"%PDF-1.4 another structure's act")
    url = f"{console.url}/onboarding/{own}/documenti/{document}"

    for role in ("desk", "structure"):
        async with console.client(role) as client:
            page = await client.get(f"{console.url}/onboarding/{own}")
            assert f'href="/onboarding/{own}/documenti/{document}"' in page.text, role  # the page links it
            got = await client.get(url)
            assert got.status_code == 200, role
            assert got.content == PDF and got.headers["content-type"] == "application/pdf"
            assert "autorizzazione%20SUAP.pdf" in got.headers["content-disposition"]
            # the structure's own request only; a document id of another request is not found in this one
            assert (await client.get(f"{console.url}/onboarding/{own}/documenti/{foreign}")).status_code == 404
            assert (await client.get(f"{console.url}/onboarding/{own}/documenti/..%2F..%2Fetc%2Fpasswd")
                    ).status_code == 404
    logged = await _downloads(console)
    assert [(d["actor"], d["role"], d["request"], d["document"], d["file"]) for d in logged] == [
        ("desk.1", "desk", own, document, "autorizzazione SUAP.pdf"),
        ("st.1", "structure", own, document, "autorizzazione SUAP.pdf")]
    assert all(d["address"] == "127.0.0.1" and d["at"] is not None for d in logged)

    for role in ("operator", "ops", "auditor", "admin"):
        async with console.client(role) as client:
            assert (await client.get(url)).status_code == 404, role
            page = await client.get(f"{console.url}/onboarding/{own}")
            assert f"/documenti/{document}" not in page.text, role  # no link to what it may not download
    async with console.client("structure") as client:  # another structure's request: 404, exists or not
        assert (await client.get(f"{console.url}/onboarding/{other}/documenti/{foreign}")).status_code == 404
    assert len(await _downloads(console)) == 2  # refused downloads leave no access record
    assert await console.store.verify_all() == []  # the access stream is hash-chained like every stream


async def _complete_switch_request(console: RunningConsole, request_id: str, declared: date | None = None) -> None:
    """A software-house change of the structure user's own structure, complete: its three documents
    compliant (their facts declared), so the onboarding service judges switch slots for it. The slot its switch
    document declares (`declared`, 09:00-10:00; by default the first day from 120 days on that the switch calendar
    leaves open) is judged on completion. Skipping weekends alone was not enough: on one day in 27 the day came on a
    public holiday or San Gennaro (today 2026-11-28: Easter Monday 2027), the declared slot was refused, and the test
    found no switch scheduled."""
    await console.onboarding_request(request_id, STRUCTURE, "Centro Vomero", kind="software-house-change")
    pdf = b"%PDF-1.7 switch"
    await console.onboarding_document(request_id, "richiesta.pdf", pdf, "formal-request-software-house-change",
                                      {"protocol": "2026/5", "letterhead": "yes", "software_house": "Medisoft",
                                       "credentials": "new-oauth2"})
    await console.onboarding_document(request_id, "b2.pdf", pdf, "endpoint-form-b2", {"filled": "yes", "annex": "B2"})
    far = declared or open_day_from(date.today() + timedelta(days=120))
    await console.onboarding_document(request_id, "data.pdf", pdf, "switch-date-request",
                                      {"switch_date": far.isoformat(), "switch_window": "09:00-10:00"})


def open_day_from(day: date) -> date:
    """The first day from `day` on when a switch can be done at the console's structures (Napoli): no weekend, no
    public holiday, not San Gennaro (the onboarding service's own calendar)."""
    calendar = SwitchCalendar(load_patron_days())
    while calendar.closed_because(day, NAPOLI):
        day += timedelta(days=1)
    return day


def _san_gennaro() -> date:
    """The next 19 September on a weekday, beyond the notice: refused for Napoli's patron saint only. Up to 3 years
    away: 19 September falls on a weekend two years running (2026 and 2027, then 2037 and 2038)."""
    return next(d for d in (date.today() + timedelta(days=n) for n in range(60, 1200))
                if (d.month, d.day) == (9, 19) and d.weekday() < 5)


async def test_a_switch_asked_on_a_broken_rule_is_refused_with_the_earliest_valid_slot_then_taken(
        console: RunningConsole) -> None:
    rid = "ONB-SWITCH"
    await _complete_switch_request(console, rid)
    async with console.client("structure") as client:
        page = await client.get(f"{console.url}/onboarding/{rid}")
        assert page.status_code == 200 and 'id="switch"' in page.text  # complete: the form is offered
        csrf = csrf_of(page.text)
        url = f"{console.url}/onboarding/{rid}/switch"

        # Errors next to the fields they name; nothing is recorded.
        version = await console.store.stream_version(f"onboarding-{rid}")
        bad = await client.post(url, data={"csrf": csrf, "data": "19/09", "dalle": "09:00", "alle": "9"})
        assert bad.status_code == 422
        assert 'id="switch-data-errore"' in bad.text and "attesa AAAA-MM-GG" in bad.text
        assert 'id="switch-alle-errore"' in bad.text
        assert await console.store.stream_version(f"onboarding-{rid}") == version

        # San Gennaro, and a window that ends after the office closes: refused, the earliest valid slot proposed.
        day = _san_gennaro()
        refused = await client.post(url, data={"csrf": csrf, "data": day.isoformat(), "dalle": "16:00",
                                               "alle": "18:00"})
        assert refused.status_code == 200, refused.text
        message = html.unescape(refused.text.split('id="esito">', 1)[1].split("</div>", 1)[0])
        assert "non è possibile" in message and "Prima data valida:" in message
        assert f"{day:%d/%m/%Y} è la festa del santo patrono di Napoli (San Gennaro)" in message
        assert "la fascia oraria 16:00-18:00 non è compresa tra le ore 08:30 e le ore 17:00" in message
        events = await console.store.read_stream(f"onboarding-{rid}")
        refusal = events[-1]
        assert refusal.type == "onboarding.switch-refused" and refusal.actor == "st.1"
        proposed = date.fromisoformat(refusal.data["proposed_date"])
        assert proposed > day and (refusal.data["proposed_window_start"], refusal.data["proposed_window_end"]) == \
            ("08:30", "10:30")
        assert f"{proposed:%d/%m/%Y}, 08:30-10:30" in message
        # The page offers the proposal as one button: its form carries the proposed slot.
        proposal_form = refused.text.split('id="switch-proposto"', 1)[1].split("</form>", 1)[0]
        assert f'name="data" value="{proposed.isoformat()}"' in proposal_form
        assert 'name="dalle" value="08:30"' in proposal_form and 'name="alle" value="10:30"' in proposal_form
        # The dashboard keeps the refusal as the event has it; the request page and the dashboard page write it.
        row = await console.pool.fetchrow("SELECT * FROM onboarding_dashboard WHERE request_id = $1", rid)
        # (the slot declared on completion stays scheduled: a refused new slot does not cancel it)
        assert (row["status"], row["switch_note"], row["switch_refused_reasons"], row["proposed_date"],
                row["proposed_window"]) == ("switch-scheduled", None, refusal.data["reasons"], proposed, "08:30-10:30")
        slot = f"{WEEKDAYS_IT[proposed.weekday()]} {proposed:%d/%m/%Y}, 08:30-10:30"
        listed = html.unescape((await client.get(f"{console.url}/onboarding")).text)
        assert f"prima data valida {slot}" in listed.split(f">{rid}</a>", 1)[1].split("</tr>", 1)[0]

        taken = await client.post(url, data={"csrf": csrf, "data": proposed.isoformat(), "dalle": "08:30",
                                             "alle": "10:30", "credenziali": ""})
        assert taken.status_code == 200 and "Switch pianificato per" in html.unescape(taken.text)
        last = (await console.store.read_stream(f"onboarding-{rid}"))[-1]
        assert last.type == "onboarding.switch-scheduled" and last.actor == "st.1"
        assert last.data["switch_date"] == proposed.isoformat() and last.data["credentials"] == "new-oauth2"
        row = await console.pool.fetchrow("SELECT * FROM onboarding_dashboard WHERE request_id = $1", rid)
        assert (row["switch_date"], row["switch_window"], row["switch_refused_reasons"], row["proposed_date"],
                row["proposed_window"]) == (proposed, "08:30-10:30", None, None, None)

        # A new slot refused does not cancel the switch already scheduled: the request's history keeps it, so do the
        # dashboard's row and both pages, the refusal beside it (dates as Italians write them).
        again = await client.post(url, data={"csrf": csrf, "data": day.isoformat(), "dalle": "09:00", "alle": "10:00"})
        assert again.status_code == 200 and "non è possibile" in html.unescape(again.text)
        refusal = (await console.store.read_stream(f"onboarding-{rid}"))[-1]
        assert refusal.type == "onboarding.switch-refused"
        row = await console.pool.fetchrow("SELECT * FROM onboarding_dashboard WHERE request_id = $1", rid)
        assert (row["status"], row["switch_date"], row["switch_window"], row["switch_refused_reasons"]) == (
            "switch-scheduled", proposed, "08:30-10:30", refusal.data["reasons"])
        scheduled = f"{WEEKDAYS_IT[proposed.weekday()]} {proposed:%d/%m/%Y}, 08:30-10:30"
        shown = html.unescape((await client.get(f"{console.url}/onboarding/{rid}")).text)
        assert shown.split('id="switch-pianificato">', 1)[1].split("</dd>", 1)[0] == scheduled
        assert "Nuova data di switch rifiutata" in shown and "switch pianificato" in shown.split("Stato", 1)[1]
        listed = html.unescape((await client.get(f"{console.url}/onboarding")).text)
        cells = listed.split(f">{rid}</a>", 1)[1].split("</tr>", 1)[0]
        assert scheduled in cells and "nuova data rifiutata" in cells and "switch pianificato" in cells
        facts = shown.split('<dl class="row">', 1)[1].split("</dl>", 1)[0]
        assert not re.search(r"\d{4}-\d{2}-\d{2}", facts + cells), "a date written as ISO, not dd/mm/yyyy"

        # Without the session's CSRF token, nothing is asked.
        assert (await client.post(url, data={"data": proposed.isoformat(), "dalle": "08:30", "alle": "10:30"})
                ).status_code == 403
    for role in ("operator", "ops", "auditor"):  # may not ask (404), and see no form
        async with console.client(role) as client:
            assert (await client.post(f"{console.url}/onboarding/{rid}/switch", data={})).status_code == 404, role


async def test_a_request_complete_for_months_takes_a_switch_only_with_its_notice_from_today(
        console: RunningConsole) -> None:
    """Seed 003: "preavviso minimo di 4/6 settimane" for new OAuth2.0 credentials. A request complete 120 days ago:
    a switch asked today for tomorrow, or for a day already past, is refused, the page naming the earliest day the
    notice allows (4 weeks from today in Italy); that day is taken."""
    from services.console.onboarding_pages import _onboarding_deps
    from services.console.web import Console
    from services.onboarding import handlers

    rid, today = "ONB-PREAVVISO", italian_today()
    long_ago = datetime.now(UTC) - timedelta(days=120)
    await console.onboarding_request(rid, STRUCTURE, "Centro Vomero", kind="software-house-change")
    unused: Any = None  # the console's broker and access watch: adding documents needs neither
    deps = _onboarding_deps(Console(console.settings, console.pool, console.store, console.files, unused, unused))
    deps.clock = lambda: long_ago  # the documents were received (and the request completed) 120 days ago
    pdf = b"%PDF-1.7 switch"
    for name, doc_type, meta in (
            ("richiesta.pdf", "formal-request-software-house-change",
             {"protocol": "2026/5", "letterhead": "yes", "software_house": "Medisoft", "credentials": "new-oauth2"}),
            ("b2.pdf", "endpoint-form-b2", {"filled": "yes", "annex": "B2"}),
            ("data.pdf", "switch-date-request", {"switch_date": open_day_from(long_ago.date() + timedelta(weeks=6))
                                                 .isoformat(), "switch_window": "09:00-10:00"})):
        await handlers.add_document(deps, rid, name, pdf + name.encode(), doc_type, meta, "desk.1")
    assert (await console.pool.fetchval("SELECT completed_on FROM onboarding_dashboard WHERE request_id = $1",
                                        rid)) == italian_today(long_ago)
    earliest = today + timedelta(weeks=4)
    first = open_day_from(earliest)  # the earliest day, or the first open one after it
    async with console.client("structure") as client:
        page = await client.get(f"{console.url}/onboarding/{rid}")
        url, csrf = f"{console.url}/onboarding/{rid}/switch", csrf_of(page.text)
        for day in (today + timedelta(days=1), today - timedelta(days=1)):
            refused = await client.post(url, data={"csrf": csrf, "data": day.isoformat(), "dalle": "09:00",
                                                   "alle": "10:00"})
            message = html.unescape(refused.text.split('id="esito">', 1)[1].split("</div>", 1)[0])
            assert refused.status_code == 200 and "non è possibile" in message, message
            assert f"non prima di {day_text(earliest)}" in message, message
            last = (await console.store.read_stream(f"onboarding-{rid}"))[-1]
            assert last.type == "onboarding.switch-refused" and last.data["switch_date"] == day.isoformat()
            assert date.fromisoformat(last.data["proposed_date"]) == first
        taken = await client.post(url, data={"csrf": csrf, "data": first.isoformat(), "dalle": "09:00",
                                             "alle": "10:00"})
        assert "Switch pianificato per" in html.unescape(taken.text)
    last = (await console.store.read_stream(f"onboarding-{rid}"))[-1]
    assert last.type == "onboarding.switch-scheduled" and last.data["switch_date"] == first.isoformat()


async def test_the_switch_form_keeps_the_credentials_the_formal_request_declares(console: RunningConsole) -> None:
    """The formal request declares new OAuth2.0 credentials (4 weeks of notice): the form says so and offers no other
    option; a switch posted with Basic credentials (3 weeks) is refused naming both, and nothing is recorded."""
    rid = "ONB-CREDENZIALI"
    await _complete_switch_request(console, rid)
    async with console.client("structure") as client:
        page = html.unescape((await client.get(f"{console.url}/onboarding/{rid}")).text)
        declared = page.split('id="switch-credenziali-dichiarate"', 1)[1].split("</p>", 1)[0].split(">", 1)[1]
        assert declared == "nuove credenziali OAuth2.0, come dichiarato nella richiesta formale", declared
        assert 'name="credenziali"' not in page.split('id="switch"', 1)[1].split("</form>", 1)[0]
        version = await console.store.stream_version(f"onboarding-{rid}")
        day = open_day_from(italian_today() + timedelta(weeks=8))
        refused = await client.post(f"{console.url}/onboarding/{rid}/switch", data={
            "csrf": csrf_of(page), "data": day.isoformat(), "dalle": "09:00", "alle": "10:00", "credenziali": "basic"})
        message = html.unescape(refused.text.split('id="esito">', 1)[1].split("</div>", 1)[0])
        assert refused.status_code == 409, message
        assert ("«Richiesta formale di cambio Software House» dichiara nuove credenziali OAuth2.0 (new-oauth2), lo "
                "switch è chiesto con l'aggiornamento delle sole credenziali Basic (basic); vale l'opzione "
                "dichiarata") in message, message
        assert await console.store.stream_version(f"onboarding-{rid}") == version


async def test_a_refused_switch_is_written_in_italian_from_the_dashboards_data(console: RunningConsole) -> None:
    """The slot declared on completion is San Gennaro: refused. The request page and the dashboard page write the
    refusal from the dashboard's row (its reasons as the event has them, the proposed day and window); the row has
    no note of its own."""
    rid = "ONB-RIFIUTO"
    await _complete_switch_request(console, rid, _san_gennaro())
    refusal = (await console.store.read_stream(f"onboarding-{rid}"))[-1]
    assert refusal.type == "onboarding.switch-refused"
    proposed = date.fromisoformat(refusal.data["proposed_date"])
    row = await console.pool.fetchrow("SELECT * FROM onboarding_dashboard WHERE request_id = $1", rid)
    assert (row["switch_note"], row["switch_refused_reasons"], row["proposed_date"], row["proposed_window"]) == (
        None, refusal.data["reasons"], proposed, "09:00-10:00")
    slot = f"{WEEKDAYS_IT[proposed.weekday()]} {proposed:%d/%m/%Y}, 09:00-10:00"
    async with console.client("desk") as client:
        page = html.unescape((await client.get(f"{console.url}/onboarding/{rid}")).text)
        shown = page.split('id="switch-rifiutato">', 1)[1].split("</dd>", 1)[0]
        assert shown == "; ".join(refusal.data["reasons"]) + f"; prima data valida {slot}"
        assert "è la festa del santo patrono di Napoli (San Gennaro)" in shown
        listed = html.unescape((await client.get(f"{console.url}/onboarding")).text)
        assert f"prima data valida {slot}" in listed.split(f">{rid}</a>", 1)[1].split("</tr>", 1)[0]


async def test_a_document_uploaded_on_a_full_disk_is_refused_at_once_in_italian_and_nothing_is_kept(
        fresh_db, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The file store full (a 256 KB tmpfs, a 600 KB document): 507 and a page naming the document, saying the disk
    is full and to try again; no file, no temporary file, no space held, nothing in the request's history. The same
    for the console's own temporary folder, where an upload over 1 MB is spooled while it arrives (a 512 KB tmpfs,
    a 2 MB document). Space freed: the same uploads are received, whole."""
    small, large = b"%PDF-1.4\n" + os.urandom(600 * 1024), b"%PDF-1.4\n" + os.urandom(2 * 1024 * 1024)
    with small_disk(tmp_path / "files", size_kb=256) as disk, small_disk(tmp_path / "spool", size_kb=512) as spool:
        monkeypatch.setattr(tempfile, "tempdir", str(spool.path))  # where this process spools uploads (as TMPDIR)
        async with running_console(fresh_db, KAFKA, disk.path) as console:
            await console.add_users()
            own = await console.onboarding_request("ONB-PIENO", STRUCTURE)
            url = f"{console.url}/onboarding/{own}"

            async def history() -> list[str]:
                rows = await console.pool.fetch("SELECT type FROM events WHERE stream_id = $1 ORDER BY version",
                                                f"onboarding-{own}")
                return [r["type"] for r in rows]

            before, free, spool_free = await history(), disk.free_bytes(), spool.free_bytes()
            async with console.client("structure") as client:
                async def upload(name: str, content: bytes) -> httpx.Response:
                    csrf = csrf_of((await client.get(url)).text)
                    return await client.post(f"{url}/documenti", data={"csrf": csrf, "tipo": "suap-authorisation"},
                                             files={"documento": (name, content, "application/pdf")})

                refused = await upload("autorizzazione SUAP.pdf", small)
                text = html.unescape(refused.text)
                assert refused.status_code == 507, text[-2000:]
                assert "Documento autorizzazione SUAP.pdf non salvato: spazio su disco esaurito" in text, text[-2000:]
                assert "riprovi più tardi" in text
                assert disk.files() == [] and disk.free_bytes() == free, disk.files()
                assert await history() == before

                spooled = await upload("planimetria.pdf", large)
                text = html.unescape(spooled.text)
                assert spooled.status_code == 507, text[-2000:]
                assert "Documento non ricevuto: spazio su disco esaurito" in text and "riprovi più tardi" in text
                assert spool.files() == [] and spool.free_bytes() == spool_free, "the spooled upload holds space"
                assert disk.files() == [] and await history() == before

                disk.grow(16 * 1024)  # the operators free space
                spool.grow(16 * 1024)
                received = [await upload("autorizzazione SUAP.pdf", small), await upload("planimetria.pdf", large)]
            assert [r.status_code for r in received] == [200, 200], html.unescape(received[-1].text)[-2000:]
            # no fact declared: the desk judges it, and the page does not say it was judged
            said = html.unescape(received[-1].text)
            assert "Documento planimetria.pdf ricevuto: lo valuterà lo sportello di onboarding." in said
            stored = {p.read_bytes() for p in disk.files("sha256")}
            assert stored == {small, large} and disk.files("tmp") == []
            for path in disk.files("sha256"):
                assert hashlib.sha256(path.read_bytes()).hexdigest() == path.parent.name + path.name
            assert (await history()).count("onboarding.document-received") == 2


async def test_the_dashboard_counts_requests_by_kind_and_state_and_names_the_documents_to_fix(
        console: RunningConsole) -> None:
    """The desk's dashboard (issue 12: "requests by kind and state, missing and non-compliant documents, dates"):
    a table of the requests counted by kind and state, and on each request's row which documents are missing,
    awaiting a verdict or non-compliant, written by the onboarding service's own rule (its completeness summary)."""
    waiting = await console.onboarding_request("ONB-CONTA-1", STRUCTURE)
    started = await console.onboarding_request("ONB-CONTA-2", "150321", "Centro Vomero")
    await console.onboarding_document(started, "autorizzazione SUAP.pdf", PDF)
    summary = await console.pool.fetchval("SELECT summary FROM onboarding_dashboard WHERE request_id = $1", started)
    assert "presenti" in summary and "manca" in summary, summary  # the service's words: "1 di N presenti, mancano: …"
    async with console.client("desk") as client:
        listed = html.unescape((await client.get(f"{console.url}/onboarding")).text)
    counts = listed.split('id="conteggi"', 1)[1].split("</table>", 1)[0]
    assert "Richieste per tipo e stato" in counts
    header = re.findall(r'<th scope="col">([^<]*)</th>', counts)
    row = re.search(r'<th scope="row">([^<]*)</th>(.*?)</tr>', counts, re.S)
    assert row is not None, counts
    cells = dict(zip(header[1:], re.findall(r"<td>(\d+)</td>", row.group(2)), strict=True))
    rows = await console.pool.fetch("SELECT kind, status FROM onboarding_dashboard")
    assert row.group(1) == "Nuova aggregazione (laboratorio)" and {r["kind"] for r in rows} == {"new-aggregation"}
    by_state = Counter(ONBOARDING_STATUS_LABELS[r["status"]] for r in rows)
    assert cells == {**{k: str(v) for k, v in by_state.items()}, "Totale": str(len(rows))}, (cells, by_state)
    assert html.unescape(summary) in listed.split(f">{started}</a>", 1)[1].split("</tr>", 1)[0]
    none_yet = await console.pool.fetchval("SELECT summary FROM onboarding_dashboard WHERE request_id = $1", waiting)
    assert none_yet.startswith("0 di ") and "mancano" in none_yet, none_yet  # every document still missing
    assert html.unescape(none_yet) in listed.split(f">{waiting}</a>", 1)[1].split("</tr>", 1)[0]


async def test_a_spoke_s_closure_act_is_uploaded_for_its_spoke_and_the_request_completes_on_the_console(
        console: RunningConsole) -> None:
    """Seed 003: a SPOKE already on the CUP sends the act of its closure as an independent entity or of its cessation
    as SPOKE of another HUB. The console's document select offers that act once per such SPOKE, the upload files it
    under that SPOKE, and with the desk's verdicts the request is complete and taken in charge, every step over HTTP.
    The select offered the bare type, which the service refused for naming no SPOKE: the request never completed."""
    rid = await console.onboarding_request("ONB-CHIUSURA", STRUCTURE)  # SPOKE 150456 on the CUP, 150789 not
    url = f"{console.url}/onboarding/{rid}"
    uploads = [("tracciati", "allegato-A1.xlsx", workbook(aggregation_rows())),
               ("accreditation-resolution", "delibera.pdf", b"%PDF-1.7 delibera"),
               ("suap-authorisation", "suap.pdf", PDF),
               ("spoke-reconfiguration-act", "riconfigurazione.pdf", b"%PDF-1.7 riconfigurazione"),
               ("spoke-closure-act:150456", "chiusura-partenope.pdf", b"%PDF-1.7 chiusura Lab Partenope"),
               ("formal-request-aggregation", "richiesta.pdf", b"%PDF-1.7 richiesta")]
    async with console.client("structure") as client:
        page = html.unescape((await client.get(url)).text)
        select = page.split('id="tipo-doc"', 1)[1].split("</select>", 1)[0]
        assert ('<option value="spoke-closure-act:150456">Atto di chiusura come ente indipendente o di cessazione '
                'come SPOKE di altro HUB (SPOKE 150456)</option>') in select, select
        assert 'value="spoke-closure-act"' not in select and "150789" not in select  # not on the CUP: no act
        assert "scelga la voce dello SPOKE a cui si riferisce" in page
        for tipo, name, content in uploads:
            csrf = csrf_of((await client.get(url)).text)
            sent = await client.post(f"{url}/documenti", data={"csrf": csrf, "tipo": tipo},
                                     files={"documento": (name, content, "application/octet-stream")})
            assert sent.status_code == 200, (tipo, html.unescape(sent.text)[-2000:])
    received = [e.data for e in await console.store.read_stream(f"onboarding-{rid}")
                if e.type == "onboarding.document-received" and e.data["document_type"] == "spoke-closure-act"]
    assert [(d["filename"], d["metadata"]) for d in received] == [("chiusura-partenope.pdf", {"spoke_sts11": "150456"})]
    row = await console.pool.fetchrow("SELECT * FROM onboarding_dashboard WHERE request_id = $1", rid)
    # no fact declared on the console: the acts wait for the desk, the closure act among them, under its SPOKE
    assert row["missing"] == [] and "spoke-closure-act:150456" in row["pending"] and len(row["pending"]) == 5, row

    async with console.client("desk") as client:
        page = (await client.get(url)).text
        waiting = [re.search(r'name="documento" value="([^"]+)"', tr).group(1)  # type: ignore[union-attr]
                   for tr in page.split("<tr>") if "<td>da valutare</td>" in tr]
        assert len(waiting) == 5, waiting
        # non-compliant without a reason: the request's page again, naming the document; nothing recorded
        refused = await client.post(f"{url}/verdetto", data={"csrf": csrf_of(page), "documento": waiting[0],
                                                             "esito": "non-conforme", "motivo": " "})
        said = html.unescape(refused.text)
        assert refused.status_code == 422 and 'id="esito">Esito non registrato per «' in said, said[-2000:]
        assert ": indichi l'esito e, se il documento non è conforme, il motivo." in said and 'id="tipo-doc"' in said
        for document in waiting:
            done = await client.post(f"{url}/verdetto", data={"csrf": csrf_of(page), "documento": document,
                                                              "esito": "conforme", "motivo": ""})
            assert done.status_code == 303, done.text
    row = await console.pool.fetchrow("SELECT * FROM onboarding_dashboard WHERE request_id = $1", rid)
    assert (row["status"], row["summary"]) == ("taken-in-charge", "13 di 13 presenti, tutti conformi"), dict(row)
    async with console.client("structure") as client:  # the day the handling time runs from, said on the page
        shown = html.unescape((await client.get(url)).text).split('id="completa">', 1)[1].split("</dd>", 1)[0]
    assert shown == f"ricevuta completa e conforme il {row['completed_on']:%d/%m/%Y}: da questo giorno decorrono i " \
                    "tempi di gestione e il preavviso per lo switch"


async def test_the_upload_offers_only_the_documents_the_request_requires(console: RunningConsole) -> None:
    """A software house change requires three documents, none a tracciato: its upload list offered every document
    type of every kind (then refused by the service) and the workbook of tracciati. An aggregation's offers its
    tracciati, the workbook among them."""
    await console.onboarding_request("ONB-SOLO-TRE", STRUCTURE, "Centro Vomero", kind="software-house-change")
    await console.onboarding_request("ONB-AGGREGA", STRUCTURE)
    async with console.client("structure") as client:
        pages = {rid: html.unescape((await client.get(f"{console.url}/onboarding/{rid}")).text)
                 for rid in ("ONB-SOLO-TRE", "ONB-AGGREGA")}
    offered = {rid: re.findall(r'<option value="([^"]+)"', page.split('id="tipo-doc"', 1)[1].split("</select>")[0])
               for rid, page in pages.items()}
    assert offered["ONB-SOLO-TRE"] == ["endpoint-form-b2", "formal-request-software-house-change",
                                       "switch-date-request"], offered
    assert offered["ONB-AGGREGA"][0] == "tracciati" and "tracciato-prestazioni" in offered["ONB-AGGREGA"]
    assert "endpoint-form-b2" not in offered["ONB-AGGREGA"], offered
    # the help on workbooks and CSV files of tracciati only where a tracciato is asked for
    assert "Per i tracciati" in pages["ONB-AGGREGA"] and 'aria-describedby="tipo-doc-aiuto"' in pages["ONB-AGGREGA"]
    assert "Per i tracciati" not in pages["ONB-SOLO-TRE"] and "tipo-doc-aiuto" not in pages["ONB-SOLO-TRE"]
