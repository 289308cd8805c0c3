"""The desk declares a document's facts on the console's upload, over HTTP on the real app, PostgreSQL and Kafka: the
document is assessed at once with the same events and findings as `onboarding add-document --meta` (the CLI's
parsing, the same use case, on a twin request); a value of the wrong shape comes back on the page naming its field
with nothing recorded or stored; a structure's user gets no facts form, and facts it sends anyway are refused.

The form is posted as a browser without JavaScript sends it: every document type's facts, those of the other types
empty (the page has a fieldset each; services/console/onboarding_facts.py)."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest

from services.cli.onboarding_cli import _parse_meta
from services.console.onboarding_pages import _onboarding_deps
from services.console.web import Console
from services.onboarding import handlers
from tests.console_support import STRUCTURE, RunningConsole, csrf_of

pytestmark = pytest.mark.integration

RESOLUTION = ("delibera.pdf", b"%PDF-1.7 delibera di accreditamento n. 77")
RECONFIGURATION = ("riconfigurazione.pdf", b"%PDF-1.7 atto di riconfigurazione come SPOKE, non firmato")
# when (received_at, assessed_at ...) and which request differ between the twins; everything else must not
VARYING = re.compile(r"(_at|request_id)$")


def fact_fields(page: str) -> list[str]:
    """The facts form's fields as the page offers them (a radio group's name once)."""
    return list(dict.fromkeys(re.findall(r'name="(dato:[^"]+)"', page)))


async def upload(client: httpx.AsyncClient, url: str, tipo: str, document: tuple[str, bytes],
                 facts: dict[str, str]) -> httpx.Response:
    """The upload form as a browser without JavaScript sends it: every offered fact field, `facts` filled in."""
    page = (await client.get(url)).text
    data = {"csrf": csrf_of(page), "tipo": tipo, **{name: "" for name in fact_fields(page)}}
    data.update({f"dato:{tipo}:{key}": value for key, value in facts.items()})
    return await client.post(f"{url}/documenti", data=data,
                             files={"documento": (document[0], document[1], "application/pdf")})


def comparable(events: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, {k: v for k, v in e.data.items() if not VARYING.search(k)}) for e in events]


async def test_the_desk_declares_facts_and_the_document_is_assessed_at_once_as_the_cli_would(
        console: RunningConsole) -> None:
    console_rid = await console.onboarding_request("ONB-DATI-CONSOLE", STRUCTURE)
    cli_rid = await console.onboarding_request("ONB-DATI-CLI", STRUCTURE)
    url = f"{console.url}/onboarding/{console_rid}"
    async with console.client("desk") as client:
        page = (await client.get(url)).text
        # a fieldset per document whose rules ask for facts, the SPOKE's closure act under its slot; none for the
        # tracciati, read cell by cell
        assert 'data-tipo="accreditation-resolution"' in page and 'data-tipo="spoke-closure-act:150456"' in page
        assert "dato:tracciati" not in page and "dato:tracciato-" not in page
        assert "dato:spoke-closure-act:150456:spoke_sts11" not in page  # the slot says which SPOKE
        passed = await upload(client, url, "accreditation-resolution", RESOLUTION,
                              {"protocol": "2026/77", "date": "2026-03-12"})
        failed = await upload(client, url, "spoke-reconfiguration-act", RECONFIGURATION,
                              {"protocol": "2026/78", "signed": "no"})
        recorded = await console.pool.fetchval("SELECT count(*) FROM events")
        # the same file for the same document again, now "signed": the service's no-op, and the page says so
        again = await upload(client, url, "spoke-reconfiguration-act", RECONFIGURATION,
                             {"protocol": "2026/78", "signed": "yes"})
        assert again.status_code == 200 and (
            "Documento riconfigurazione.pdf già ricevuto: non è stato registrato di nuovo, né valutato con i dati "
            "indicati ora.") in html.unescape(again.text)
        assert await console.pool.fetchval("SELECT count(*) FROM events") == recorded
    for sent in (passed, failed):
        assert sent.status_code == 200, html.unescape(sent.text)[-2000:]
        assert "ricevuto e valutato: l'esito è nella tabella dei documenti." in html.unescape(sent.text)
    shown = html.unescape(failed.text)
    assert ("Dati dichiarati da desk.1: Numero di protocollo «2026/78», Firmato «no»") in shown
    assert "Dati dichiarati da desk.1: Numero di protocollo «2026/77», Data del documento «2026-03-12»" in shown
    assert "il dato dichiarato signed è 'no', deve essere sì" in shown

    # the CLI: `onboarding add-document REQ FILE --type T --meta key=value ...`, the same use case
    deps = _onboarding_deps(Console(console.settings, console.pool, console.store, console.files,
                                    None, None))  # type: ignore[arg-type]
    for type_id, (name, content), meta in (
            ("accreditation-resolution", RESOLUTION, ["protocol=2026/77", "date=2026-03-12"]),
            ("spoke-reconfiguration-act", RECONFIGURATION, ["protocol=2026/78", "signed=no"])):
        await handlers.add_document(deps, cli_rid, name, content, type_id, _parse_meta(meta), "desk.1")

    on_console = (await console.store.read_stream(f"onboarding-{console_rid}"))[1:]
    on_cli = (await console.store.read_stream(f"onboarding-{cli_rid}"))[1:]
    assert comparable(on_console) == comparable(on_cli)
    assert [e.actor for e in on_console] == [e.actor for e in on_cli]
    assessed = [e.data for e in on_console if e.type == "onboarding.document-assessed"]
    assert [(a["document_type"], a["compliant"], a["assessed_by"], [p["message"] for p in a["problems"]])
            for a in assessed] == [
        ("accreditation-resolution", True, "automatic", []),
        ("spoke-reconfiguration-act", False, "automatic", ["il dato dichiarato signed è 'no', deve essere sì"])]
    received = [e for e in on_console if e.type == "onboarding.document-received"]
    assert [(e.actor, e.data["received_by"], e.data["metadata"]) for e in received] == [
        ("desk.1", "desk.1", {"protocol": "2026/77", "date": "2026-03-12"}),
        ("desk.1", "desk.1", {"protocol": "2026/78", "signed": "no"})]


async def test_a_malformed_fact_comes_back_naming_its_field_and_nothing_is_recorded(
        console: RunningConsole) -> None:
    rid = await console.onboarding_request("ONB-DATI-SWITCH", STRUCTURE, "Centro Vomero",
                                           kind="interoperability-change")
    url = f"{console.url}/onboarding/{rid}"
    tipo = "formal-request-interoperability-change"
    facts = {"protocol": "2026/90", "letterhead": "yes", "software_house_changes": "no", "credentials": "basic",
             "switch_date": "2026-02-30", "switch_window": "25:00-26:00"}
    before = await console.pool.fetchval("SELECT count(*) FROM events")
    async with console.client("desk") as client:
        refused = await upload(client, url, tipo, ("richiesta.pdf", b"%PDF-1.7 richiesta"), facts)
    shown = html.unescape(refused.text)
    assert refused.status_code == 422, shown[-2000:]
    window = "Fascia oraria desiderata per lo switch: è '25:00-26:00', non una fascia oraria: le ore vanno da 00 a 23."
    day = "Giorno desiderato per lo switch: è '2026-02-30', non una data AAAA-MM-GG."
    assert "Documento non caricato, non è stato registrato nulla: corregga i dati indicati." in shown
    assert window in shown.split('id="esito"', 1)[1].split("</div>", 1)[0] and day in shown
    # each error beside its field, tied to it; what was typed is still there, the type still chosen
    field = f"dato-{tipo}-switch-window"
    assert re.search(rf'<input id="{field}"[^>]*value="25:00-26:00"[^>]*aria-describedby="{field}-aiuto '
                     rf'{field}-errore"[^>]*aria-invalid="true"', shown), shown.split('id="carica"')[1][:6000]
    assert f'<div id="{field}-errore" class="invalid-feedback d-block">{window}</div>' in shown
    assert f'<option value="{tipo}" selected>' in shown
    assert await console.pool.fetchval("SELECT count(*) FROM events") == before
    assert [p for p in console.files.root.rglob("*") if p.is_file()] == []  # nor stored

    async with console.client("desk") as client:  # corrected, it is received and assessed at once
        fixed = await upload(client, url, tipo, ("richiesta.pdf", b"%PDF-1.7 richiesta"),
                             {**facts, "switch_date": "2026-11-10", "switch_window": "09:00-11:00"})
    assert fixed.status_code == 200 and "ricevuto e valutato" in html.unescape(fixed.text)
    (assessed,) = [e for e in await console.store.read_stream(f"onboarding-{rid}")
                   if e.type == "onboarding.document-assessed"]
    assert assessed.data["compliant"] is True, assessed.data


async def test_a_structure_gets_no_facts_form_and_facts_it_sends_are_refused(console: RunningConsole) -> None:
    rid = await console.onboarding_request("ONB-DATI-STRUTTURA", STRUCTURE)
    url = f"{console.url}/onboarding/{rid}"
    async with console.client("structure") as client:
        page = (await client.get(url)).text
        assert 'id="tipo-doc"' in page and 'id="dati-documento"' not in page and fact_fields(page) == []
        before = await console.pool.fetchval("SELECT count(*) FROM events")
        forged = await client.post(f"{url}/documenti", data={
            "csrf": csrf_of(page), "tipo": "spoke-reconfiguration-act",
            "dato:spoke-reconfiguration-act:protocol": "2026/5", "dato:spoke-reconfiguration-act:signed": "yes"},
            files={"documento": RECONFIGURATION})
        assert forged.status_code == 422
        assert "i dati del documento (protocollo, firma...) li dichiara lo sportello di onboarding" in \
            html.unescape(forged.text)
        assert await console.pool.fetchval("SELECT count(*) FROM events") == before
        plain = await upload(client, url, "spoke-reconfiguration-act", RECONFIGURATION, {})
    assert plain.status_code == 200
    assert "ricevuto: lo valuterà lo sportello di onboarding." in html.unescape(plain.text)
    documents = [e for e in await console.store.read_stream(f"onboarding-{rid}")
                 if e.type.startswith("onboarding.document-")]
    assert [(e.type, e.actor, e.data["metadata"]) for e in documents] == [
        ("onboarding.document-received", "st.1", {})]
