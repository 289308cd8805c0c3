"""The console's security behaviours on the real app and PostgreSQL: nothing without login, no
session fixation, CSRF on forms, expired sessions, throttled logins, file names that are never
paths, names with HTML shown escaped, and the access log of personal data."""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import re
from datetime import timedelta
from typing import Any

import httpx
import pytest

from contracts.deadlines import italian_today
from services.console import auth
from services.console.access import ROUTE_TABLE
from services.runtime.eventstore import EventStore, NewEvent
from tests.console_support import PASSWORD, RunningConsole, csrf_of, running_console
from tests.log_capture import service_log_lines
from tests.pg_outage import postgres_down
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

HOSTILE = '<script>alert("x")</script><b>Casa di cura</b>'


@pytest.fixture
def console_settings() -> dict[str, Any]:
    """The shared `console` (tests/integration/conftest.py) with a login throttle of 3 failures."""
    return {"console_login_max_failures": 3}


async def test_no_page_or_api_route_without_login(console: RunningConsole) -> None:
    instance = await console.instance("201")
    async with httpx.AsyncClient(follow_redirects=False) as client:
        for route in ROUTE_TABLE.values():
            url = console.url + route.path.replace("{instance}", str(instance)).replace("{name}", "x.txt")
            response = await client.request(route.method, url, data={"csrf": "x"} if route.method == "POST" else None)
            if route.path.startswith("/api/"):
                assert response.status_code == 401, route
            else:
                assert response.status_code == 303 and response.headers["location"].startswith("/login"), route
        # A forged cookie is no session either.
        client.cookies.set("flows_session", "forged")
        assert (await client.get(console.url + f"/istanze/{instance}")).status_code == 303


async def test_session_fixation_a_cookie_set_before_login_is_never_promoted(console: RunningConsole) -> None:
    async with httpx.AsyncClient(follow_redirects=False) as client:
        client.cookies.set("flows_session", "chosen-by-the-attacker")
        response = await console.login(client, "op.201")
        assert response.status_code == 303
        issued = response.cookies["flows_session"]
        assert issued != "chosen-by-the-attacker"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    async with httpx.AsyncClient(follow_redirects=False, cookies={"flows_session": "chosen-by-the-attacker"}) as c:
        assert (await c.get(console.url + "/istanze")).status_code == 303
    # The table holds only the hash of the token: its session is keyed by sha256(token), and no row holds the
    # token itself, as text or as the bytes PostgreSQL prints in hex (a bytea column's text is hex: the token
    # could never appear LIKE itself in token_sha256::text, whatever was stored there).
    rows = await console.pool.fetchval("SELECT string_agg(s::text, ' ') FROM console_session s")
    assert issued not in rows and issued.encode().hex() not in rows
    assert await console.pool.fetchval("SELECT count(*) FROM console_session WHERE token_sha256 = $1",
                                       hashlib.sha256(issued.encode()).digest()) == 1


async def test_secure_cookie_by_default(fresh_db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with running_console(fresh_db, KAFKA, tmp_path / "f", console_secure_cookies=True) as c:
        await c.add_users()
        async with httpx.AsyncClient(follow_redirects=False) as client:
            form = await client.get(c.url + "/login")
            assert "Secure" in form.headers["set-cookie"]
            # Over plain http a client keeps Secure cookies to itself: this test hands it back by hand.
            response = await client.post(c.url + "/login", data={"utente": "op.201", "password": PASSWORD,
                                                                  "csrf": csrf_of(form.text)},
                                         headers={"cookie": f"flows_login_csrf={form.cookies['flows_login_csrf']}"})
            assert response.status_code == 303
            assert "__Host-flows_session=" in response.headers["set-cookie"]
            assert "Secure" in response.headers["set-cookie"]


async def test_a_form_without_its_csrf_token_is_refused(console: RunningConsole) -> None:
    instance = await console.instance("201", [("flows.load-checked", {"source_instance": 1, "counts": {}})])
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        for data in ({}, {"csrf": "wrong"}):
            response = await client.post(console.url + f"/istanze/{instance}/cancella", data={"motivo": "x", **data})
            assert response.status_code == 403
        assert await console.pool.fetchval("SELECT state FROM instance_list WHERE instance = $1", instance) == "Checked"
        # The login form has its own token too.
        response = await client.post(console.url + "/login", data={"utente": "op.201", "password": PASSWORD})
        assert response.status_code == 403
        # With the token, the same deletion goes through, and the history names the user.
        page = await client.get(console.url + f"/istanze/{instance}")
        response = await client.post(console.url + f"/istanze/{instance}/cancella",
                                     data={"motivo": "doppione", "csrf": csrf_of(page.text)})
        assert response.status_code == 303
        # The same page's form sent again: the instance's state no longer allows it, said by its label and with
        # where to look now.
        response = await client.post(console.url + f"/istanze/{instance}/cancella",
                                     data={"motivo": "doppione", "csrf": csrf_of(page.text)})
        said = html.unescape(response.text)
        assert response.status_code == 409 and f"L'istanza {instance} è nello stato «Cancellata (Deleted)»: non si " \
            "può cancellare. Ricarichi la pagina dell'istanza" in said, said
    assert await console.pool.fetchval("SELECT state FROM instance_list WHERE instance = $1", instance) == "Deleted"
    assert await console.pool.fetchval("SELECT actor FROM events WHERE stream_id = $1 AND type = "
                                       "'flows.instance-deleted'", f"instance-{instance}") == "op.201"


async def test_an_expired_session_is_no_session(console: RunningConsole) -> None:
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        assert (await client.get(console.url + "/istanze")).status_code == 200
        await console.pool.execute("UPDATE console_session SET expires_at = now() - interval '1 second'")
        assert (await client.get(console.url + "/istanze")).status_code == 303
        assert (await client.get(console.url + "/api/istanze")).status_code == 401


async def test_a_disabled_user_loses_its_sessions(console: RunningConsole) -> None:
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        await auth.disable_user(console.pool, "op.201", by="test")
        assert (await client.get(console.url + "/istanze")).status_code == 303
        assert (await console.login(client, "op.201")).status_code == 401


async def test_brute_force_logins_are_throttled(console: RunningConsole) -> None:
    async with httpx.AsyncClient(follow_redirects=False) as client:
        for _ in range(3):
            assert (await console.login(client, "op.201", "wrong password!")).status_code == 401
        # The limit is reached: even the right password is not checked now.
        response = await console.login(client, "op.201", PASSWORD)
        assert response.status_code == 429 and "Troppi tentativi" in response.text
        # Another user from the same address is not locked out by this one's failures.
        assert (await console.login(client, "ops.1")).status_code == 303


async def test_file_names_are_keys_never_paths(console: RunningConsole) -> None:
    secret = console.files.put_bytes(b"not a file of this instance")[0]
    ref = console.file_ref("C1.txt", "ts-errors", b"a;b\n1;2\n", 1, "text/csv")
    instance = await console.instance("201", [
        ("flows.load-checked", {"source_instance": 1, "counts": {}}), ("flows.formatting-started", {}),
        ("flows.formatted", {"files": [ref]})])
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        base = console.url + f"/istanze/{instance}/file/"
        assert (await client.get(base + "C1.txt/scarica")).content == b"a;b\n1;2\n"
        for name in ("..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "C1.txt%00", "%2E%2E",
                     "C1.txt%2F..%2F..%2Fsecret", f"..%2F..%2Fsha256%2F{secret[:2]}%2F{secret[2:]}"):
            for suffix in ("", "/scarica"):
                response = await client.get(base + name + suffix)
                assert response.status_code == 404, name
                assert b"not a file of this instance" not in response.content


async def test_a_file_that_is_no_table_is_said_so_in_italian_with_its_download(console: RunningConsole) -> None:
    receipt = console.file_ref("ricevuta.pdf", "ts-receipt", b"%PDF-1.4 receipt", 1, "application/pdf")
    empty = console.file_ref("C1.txt", "C1", b"", 0)
    instance = await console.instance("201", [
        ("flows.load-checked", {"source_instance": 1, "counts": {}}), ("flows.formatting-started", {}),
        ("flows.formatted", {"files": [receipt, empty]})])
    async with console.client("operator") as client:
        base = console.url + f"/istanze/{instance}/file/"
        shown = await client.get(base + "ricevuta.pdf")
        said = html.unescape(shown.text)
        assert shown.status_code == 409 and "Il file ricevuta.pdf è la ricevuta PDF di Sistema TS" in said, said
        assert f'href="/istanze/{instance}/file/ricevuta.pdf/scarica"' in shown.text and "receipt" not in said
        shown = await client.get(base + "C1.txt")
        said = html.unescape(shown.text)
        assert shown.status_code == 409 and "Il file C1.txt non si può mostrare come tabella" in said, said
        assert "no records" not in said


async def test_html_in_names_and_feedback_is_shown_escaped(console: RunningConsole) -> None:
    feedback = console.file_ref(f"{HOSTILE}.csv", "feedback",
                                f"record_key;field;code;severity;message\nS1;name;X;error;{HOSTILE}\n".encode(), 1,
                                "text/csv")
    instance = await console.instance("201", [("flows.load-failed", {"errors": 1, "summary": HOSTILE,
                                                                     "feedback": feedback})])
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        for path in (f"/istanze/{instance}", f"/istanze/{instance}/feedback", f"/istanze/{instance}/stato"):
            body = (await client.get(console.url + path)).text
            assert "<script>alert" not in body and "<b>Casa di cura</b>" not in body, path
            assert "&lt;script&gt;alert(" in body, path
        download = await client.get(console.url + f"/istanze/{instance}/feedback.csv")
        assert download.headers["content-disposition"].startswith('attachment; filename="')
        assert "<" not in download.headers["content-disposition"]
        assert download.headers["x-content-type-options"] == "nosniff"


async def test_the_history_names_the_services_in_italian_and_people_by_their_user_name(
        console: RunningConsole) -> None:
    instance = await console.instance("201", [("flows.load-checked", {"source_instance": 1, "counts": {}})])
    await console.store.append(f"instance-{instance}", [NewEvent("flows.format-requested", {"instance": instance},
                                                                 actor="op.201")],
                               expected_version=2, key=str(instance), publish=False)
    async with console.client("operator") as client:
        body = (await client.get(console.url + f"/istanze/{instance}")).text
    assert '<p id="piattaforma">Destinazione: SINFONIA: l&#39;ente vi carica i file scaricati dalla console.</p>' \
        in body  # a Flusso C: where its files go (the Flow Manager's Tabella 1)
    history = body[body.index("<caption>Eventi dell"):]
    authors = re.findall(r"<td>([^<]*)</td></tr>", history)
    assert authors == ["caricatore (servizio)", "caricatore (servizio)", "op.201"], authors


async def test_every_view_or_download_of_personal_data_is_in_the_access_log(console: RunningConsole) -> None:
    feedback = console.file_ref("esito.csv", "feedback", b"record_key;field;code;severity;message\nS1;cf;X;error;m\n",
                                1, "text/csv")
    instance = await console.instance("201", [("flows.load-failed", {"errors": 1, "summary": "1 error",
                                                                     "feedback": feedback})])
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        for path in ("/feedback", "/feedback.csv", "/file/esito.csv", "/file/esito.csv/scarica", "/file.zip"):
            assert (await client.get(console.url + f"/istanze/{instance}{path}")).status_code == 200, path
        # Pages without personal data leave no record.
        await client.get(console.url + f"/istanze/{instance}")
    rows = await console.pool.fetch("SELECT stream_id, actor, data FROM events WHERE stream_id LIKE 'access-%' "
                                    "ORDER BY stream_id, version")
    assert [r["data"]["what"] for r in rows] == ["feedback-view", "feedback-download", "file-view", "file-download",
                                                 "files-zip"]
    assert {(r["actor"], r["data"]["instance"], r["data"]["address"]) for r in rows} == {("op.201", instance,
                                                                                         "127.0.0.1")}
    store = EventStore(console.pool, source="/test")
    assert await store.verify_stream(rows[0]["stream_id"]) == []  # hash-chained like every stream
    # The auditor reads it in the console; the operator may not.
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "aud.1")
        page = await client.get(console.url + f"/accessi?istanza={instance}")
        assert page.status_code == 200 and page.text.count("op.201") >= 5
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        assert (await client.get(console.url + "/accessi")).status_code == 404


async def test_deadlines_show_the_operators_enti_only_with_their_coverage(console: RunningConsole) -> None:
    ref = console.file_ref("C1.txt", "C1", b"x\n", 1)
    covering = await console.instance("201", [
        ("flows.load-checked", {"source_instance": 1, "counts": {}}), ("flows.formatting-started", {}),
        ("flows.formatted", {"files": [ref]})])
    await console.instance("202")
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        body = (await client.get(console.url + "/scadenze?mese=2026-10")).text
    assert "<td>201</td>" in body and "<td>202</td>" not in body
    assert f'href="/istanze/{covering}"' in body  # FLUSSO_C 2026-10 of 201 is covered by it
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "ops.1")
        body = (await client.get(console.url + "/scadenze?mese=2026-10")).text
    assert "<td>201</td>" in body and "<td>202</td>" in body
    # An entity of the catalogue that has loaded nothing yet is listed too: its deadlines are the ones most likely
    # missed (they were left out whenever another entity had data).
    assert "<td>205</td>" in body
    # An operator of two enti, one without any data yet, sees the deadlines of both (not only of the one with data).
    await auth.add_user(console.pool, "op.201.203", "operator", ["201", "203"], None, PASSWORD, by="test")
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201.203")
        body = (await client.get(console.url + "/scadenze?mese=2026-10")).text
    assert "<td>201</td>" in body and "<td>203</td>" in body and "<td>202</td>" not in body


async def test_deadlines_of_a_year_without_data_are_said_missing_in_italian(console: RunningConsole) -> None:
    # contracts/data/deadlines.toml has no 2099: the page names the year and the flows, and whom to tell, without
    # the data file's English (which is the operators', in the log).
    async with console.client("operator") as client:
        body = html.unescape((await client.get(console.url + "/scadenze?mese=2099-03")).text)
    assert "Scadenze non disponibili: mancano le date di scadenza del 2099 per " in body, body
    assert "FLUSSO MEF SOGEI" in body and "FLUSSO_MEF" not in body  # the flows by their labels
    assert "avvisi l'esercizio" in body and "deadline data" not in body
    assert "Nessuna scadenza per questo mese." in body


async def test_the_deadlines_a_year_has_are_shown_beside_the_flows_it_lacks(console: RunningConsole) -> None:
    """2024 has the 730 (its last semiannual year) and none of the monthly flows: the page named the missing ones
    and showed nothing, not even the 730 due on 31 January 2025."""
    async with console.client("operator") as client:
        body = html.unescape((await client.get(console.url + "/scadenze?mese=2024-12")).text)
    assert "<td>FLUSSO 730</td>" in body and "<td>01/07/2024 – 31/12/2024</td>" in body, body
    assert "<td>31/01/2025</td>" in body
    assert "<td>Sistema TS: lo invia la console (Invia a Sistema TS)</td>" in body  # where it goes (Tabella 1)
    assert ("Scadenze non disponibili: mancano le date di scadenza del 2024 per FLUSSO C, FLUSSO C PACC, FLUSSO MEF "
            "SOGEI, FLUSSO ALPI TA.") in body
    assert "Le scadenze degli altri flussi sono nella tabella." in body and "Nessuna scadenza" not in body


async def test_api_keys_are_stored_hashed_and_bound_to_their_enti(console: RunningConsole) -> None:
    own = await console.instance("201")
    other = await console.instance("202")
    key = await auth.add_api_key(console.pool, "sistema-regionale", ["201"], by="cli:tester")
    secret = key.split(".", 1)[1]
    assert await console.pool.fetchval("SELECT count(*) FROM console_api_key WHERE secret_hash LIKE $1",
                                       f"%{secret}%") == 0
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
        listed = (await client.get(console.url + "/api/istanze")).json()["items"]
        assert [i["instance"] for i in listed] == [own]
        assert (await client.get(console.url + f"/api/istanze/{own}")).json()["ente"] == "201"
        assert (await client.get(console.url + f"/api/istanze/{other}")).status_code == 404
        refused = await client.post(console.url + "/api/caricamenti", json={
            "flow_type": "FLUSSO_C", "ente": "202", "period_start": "2026-10-01", "period_end": "2026-10-31"})
        assert refused.status_code == 422 and "ente" in refused.json()["detail"]
        # The key gives no access to the pages, and a wrong secret no access at all.
        assert (await client.get(console.url + "/istanze", follow_redirects=False)).status_code == 303
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}x"}) as client:
        assert (await client.get(console.url + "/api/istanze")).status_code == 401
    async with httpx.AsyncClient() as client:
        schema = (await client.get(console.url + "/openapi.json")).json()
    assert {"/api/istanze", "/api/istanze/{instance}", "/api/caricamenti", "/api/istanze/{instance}/feedback",
            "/api/istanze/{instance}/file/{name}"} <= set(schema["paths"])
    assert not any(p.startswith("/istanze") for p in schema["paths"])  # the pages are not the API


async def test_a_revoked_api_key_is_refused_at_once_like_an_unknown_one_and_the_auditor_sees_who_did_it(
        console: RunningConsole) -> None:
    """A leaked key revoked (`flows users api-key-revoke`, auth.revoke_api_key): the very next request with it is
    401, the same answer as a key that never existed, while another key goes on working. Its issue and its
    revocation, by whom, are on the auditor's page next to what the key read, under the key's one name there:
    api:<key id>."""
    feedback = console.file_ref("esito.csv", "feedback", b"record_key;field;code;severity;message\nS1;cf;X;error;m\n",
                                1, "text/csv")
    instance = await console.instance("201", [("flows.load-failed", {"errors": 1, "summary": "1 error",
                                                                     "feedback": feedback})])
    leaked = await auth.add_api_key(console.pool, "sistema-regionale", ["201"], by="cli:tester")
    other = await auth.add_api_key(console.pool, "cruscotto", ["201"], by="cli:tester")
    key_id = leaked.partition(".")[0].removeprefix("fk_")
    unknown = f"fk_{'0' * 12}.{leaked.partition('.')[2]}"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {leaked}"}) as client:
        assert (await client.get(console.url + "/api/istanze")).status_code == 200
        assert (await client.get(console.url + f"/api/istanze/{instance}/feedback")).status_code == 200  # logged
        await auth.revoke_api_key(console.pool, key_id, by="cli:tester")
        refused = await client.get(console.url + "/api/istanze")
        assert refused.status_code == 401, refused.text
        assert (await client.get(console.url + f"/api/istanze/{instance}/feedback")).status_code == 401
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {unknown}"}) as client:
        never = await client.get(console.url + "/api/istanze")
    assert (refused.status_code, refused.content) == (never.status_code, never.content)  # nothing tells them apart
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {other}"}) as client:
        assert (await client.get(console.url + "/api/istanze")).status_code == 200
    again = await auth.revoke_api_key(console.pool, key_id, by="cli:tester")  # a no-op: the record shows one
    assert not again.done and again.revoked_at is not None

    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "aud.1")
        page = (await client.get(console.url + f"/accessi?utente=api:{key_id}")).text
    administration = page[page.index('id="gestione-utenti"'):]
    rows = re.findall(r"<tr><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>",
                      administration)
    assert rows == [(f"api:{key_id}", "chiave API revocata", "", "cli:tester"),
                    (f"api:{key_id}", "chiave API emessa", "sistema-regionale: enti 201", "cli:tester")], rows
    accesses = page[:page.index('id="gestione-utenti"')]
    assert f"api:{key_id}" in accesses and "scaricamento dell&#39;esito" in accesses  # what it read, as the key
    assert "tramite API" in accesses
    assert leaked.partition(".")[2] not in page and "cruscotto" not in page  # no secret; not the other key


async def test_a_transmission_date_in_the_past_is_refused_and_nothing_is_sent(console: RunningConsole) -> None:
    """The CLI's rule (`flows send-730`): today in Italy or a later day. Before, the form took a past date and the
    gateway sent the 730 at once, as if for today."""
    zipped = console.file_ref("730_201.zip", "730-zip", b"PK zip", 1, "application/zip")
    instance = await console.instance("201", [("flows.load-checked", {"source_instance": 1, "counts": {}}),
                                              ("flows.formatting-started", {}),
                                              ("flows.formatted", {"files": [zipped]})], flow_type="FLUSSO_730")
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        csrf = csrf_of((await client.get(console.url + f"/istanze/{instance}")).text)
        yesterday = italian_today() - timedelta(days=1)
        response = await client.post(console.url + f"/istanze/{instance}/invia-ts",
                                     data={"csrf": csrf, "sigillo": "not read", "data": yesterday.isoformat()})
    assert response.status_code == 422, response.text
    assert f"{yesterday:%d/%m/%Y} è nel passato" in response.text
    # titled as what it is, and a way back to the instance the form belongs to (the home page was the only link)
    assert "<title>Dati non validi" in response.text, response.text[:500]
    assert f'<a href="/istanze/{instance}">Torna all&#39;istanza {instance}</a>' in response.text
    assert await console.pool.fetchval("SELECT state FROM instance_list WHERE instance = $1", instance) == "Formatted"
    assert await console.pool.fetchval("SELECT count(*) FROM events WHERE stream_id = $1 AND type LIKE 'flows.ts-%'",
                                       f"instance-{instance}") == 0


async def test_an_instance_of_a_flow_that_never_goes_to_ts_is_refused_for_its_flow_not_its_state(
        console: RunningConsole) -> None:
    """A Formatted Flusso C reached at /invia-ts by URL: it was told its state did not allow the send."""
    instance = await console.instance("201", [("flows.load-checked", {"source_instance": 1, "counts": {}}),
                                              ("flows.formatting-started", {}), ("flows.formatted", {"files": []})])
    async with console.client("operator") as client:
        response = await client.get(console.url + f"/istanze/{instance}/invia-ts")
    assert response.status_code == 409
    assert (f"Solo le istanze FLUSSO 730 si inviano a Sistema TS: l&#39;istanza {instance} è FLUSSO C."
            in response.text), response.text
    assert "nello stato" not in response.text


async def test_every_page_gives_the_help_desk_the_flow_manager_gave(console: RunningConsole) -> None:
    """The manual's help desk (seeds/000, section 6: "Numero Verde: 800-036-700 ... tasto "1" per il CUP Regionale",
    "hdcup@soresa.it", shown from the main screen): on every page, signed in or not, the error pages too, whose
    messages ask to tell the help desk a reference."""
    async with httpx.AsyncClient(follow_redirects=False) as anonymous:
        pages = [(await anonymous.get(console.url + "/login")).text]
    async with console.client("operator") as client:
        pages += [(await client.get(console.url + path)).text for path in ("/istanze", "/pagina-che-non-esiste")]
    for body in pages:
        assert 'href="tel:800036700">800-036-700</a>, tasto 1 per il CUP Regionale' in body, body[-800:]
        assert 'href="mailto:hdcup@soresa.it"' in body


async def test_the_load_form_names_the_period_as_the_flow_manager_did(console: RunningConsole) -> None:
    """The manual's load form: "Inizio periodo di riferimento", "Fine periodo di riferimento", its "Schedulazione"."""
    async with console.client("operator") as client:
        body = (await client.get(console.url + "/istanze/nuova")).text
        bad = await client.post(console.url + "/istanze/nuova", data={
            "csrf": csrf_of(body), "tipo": "FLUSSO_C", "ente": "201", "dal": "x", "al": "2026-10-31"})
    assert '<label for="dal" class="form-label">Inizio periodo di riferimento</label>' in body
    assert '<label for="al" class="form-label">Fine periodo di riferimento</label>' in body
    assert "la schedulazione" in body
    assert "Inizio periodo di riferimento: data non valida (&#39;x&#39;)" in bad.text, bad.text[-1500:]


async def test_a_path_or_method_no_route_has_gets_the_italian_error_page(console: RunningConsole) -> None:
    """The router's own 404 and 405 (no route runs, so no guard raises them) answer like a route's 404: the
    console's Italian page in its layout, or the API's Italian detail, never Starlette's English JSON."""
    async with httpx.AsyncClient(follow_redirects=False) as client:
        for who in (None, "op.201"):  # before and after login: an unknown path says nothing more to either
            if who is not None:
                await console.login(client, who)
            for path in ("/pagina-che-non-esiste", "/istanze/1/nulla", "/static/nessun-file.css"):
                response = await client.get(console.url + path)
                assert response.status_code == 404, (who, path)
                assert response.headers["content-type"].startswith("text/html"), (who, path, response.text[:200])
                assert "<h1" in response.text and "Pagina non trovata" in response.text, (who, path)
                assert 'lang="it"' in response.text and "Not Found" not in response.text, (who, path)
                # signed in, the page keeps the user's header and menu; signed out, it shows neither
                assert ("op.201" in response.text and 'href="/istanze"' in response.text) == (who is not None), path
            response = await client.get(console.url + "/api/nulla")
            assert response.status_code == 404 and response.json() == {"detail": "non trovato"}, who
            response = await client.delete(console.url + "/login")  # a path that exists, a method it does not take
            assert response.status_code == 405 and "Richiesta non valida" in response.text, who
            assert response.headers["allow"], who  # the methods it does take, as HTTP asks of a 405
            assert "Method Not Allowed" not in response.text, who


async def test_postgres_down_answers_an_italian_page_with_a_reference_and_the_console_comes_back(
        console: RunningConsole) -> None:
    """PostgreSQL stopped for real (pg_ctl stop) under a signed-in user: every page and API call answers 503 with
    an Italian message that says what happened and what to do, a reference that the console's log line also
    carries, Retry-After, and a "Riprova" link to the same page; never Starlette's English "Internal Server
    Error". The server back, the same session works again."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=30) as client:
        await console.login(client, "op.201")
        assert (await client.get(console.url + "/istanze")).status_code == 200
        with service_log_lines() as logs:
            async with postgres_down():
                down = await client.get(console.url + "/istanze")
                api = await client.get(console.url + "/api/istanze")
            lines = [json.loads(line) for line in logs.getvalue().splitlines() if "console.request_failed" in line]
        async with asyncio.timeout(60):  # the pool reconnects: a hang guard, no speed target
            while (back := await client.get(console.url + "/istanze")).status_code != 200:
                assert back.status_code == 503, back.text[:300]
                await asyncio.sleep(0.2)

    assert down.status_code == 503 and down.headers["retry-after"] == "30", down.status_code
    assert down.headers["content-type"].startswith("text/html") and 'lang="it"' in down.text
    assert "Servizio temporaneamente non disponibile" in down.text and "Internal Server Error" not in down.text
    assert 'href="/istanze" class="btn btn-primary">Riprova' in down.text
    reference = re.search(r"Riferimento per l&#39;assistenza: ([0-9A-F]{8})|Riferimento per l'assistenza: "
                          r"([0-9A-F]{8})", down.text)
    assert reference is not None, down.text
    assert api.status_code == 503 and api.json()["riferimento"] != (reference[1] or reference[2])
    assert "database" in api.json()["detail"]
    logged = {line["reference"]: line for line in lines}
    assert logged[reference[1] or reference[2]]["path"] == "/istanze" and logged[reference[1] or reference[2]][
        "transient"] is True
    assert logged[api.json()["riferimento"]]["path"] == "/api/istanze"


async def test_an_unexpected_error_answers_an_italian_500_with_the_reference_of_its_log_line(
        console: RunningConsole) -> None:
    """A fault the console does not expect (here a read model row edited by hand into counts no code writes, a list
    where the instance page reads a mapping, so its template raises; a state no code knows no longer does: the page
    shows it and offers no action, test_console_list_page.py): 500 with an Italian page that asks to report its
    reference, the same reference on the log line with the error; nothing internal on the page, no "Riprova" (trying
    again will not help), and the other pages still work."""
    instance = await console.instance("201")
    await console.pool.execute("""UPDATE instance_list SET counts = '["Conteggio ignoto"]' WHERE instance = $1""",
                               instance)
    async with httpx.AsyncClient(follow_redirects=False, timeout=30) as client:
        await console.login(client, "op.201")
        with service_log_lines() as logs:
            broken = await client.get(console.url + f"/istanze/{instance}")
        lines = [json.loads(line) for line in logs.getvalue().splitlines() if "console.request_failed" in line]
        still = await client.get(console.url + "/istanze")

    assert broken.status_code == 500 and broken.headers["content-type"].startswith("text/html")
    assert "Errore interno" in broken.text and "Internal Server Error" not in broken.text
    assert "list object" not in broken.text and "UndefinedError" not in broken.text and "Riprova" not in broken.text
    reference = re.search(r"riferimento ([0-9A-F]{8})", broken.text)
    assert reference is not None, broken.text
    assert [(line["reference"], line["transient"]) for line in lines] == [(reference[1], False)], lines
    assert "UndefinedError" in lines[0]["error"] and "'list object' has no attribute 'items'" in lines[0]["error"]
    assert still.status_code == 200


async def test_a_login_asked_by_a_page_brings_the_user_back_to_it_and_never_to_another_site(
        console: RunningConsole) -> None:
    """A link to an instance opened without a session goes to the login with `next`; the login form carries it
    (through a failed try too) and the login lands on that page. Before, the form lost it and every login landed
    on the list. `next` is only ever a path of this console: another site's address lands on the list."""
    instance = await console.instance("201")
    async with httpx.AsyncClient(follow_redirects=False) as client:
        asked = await client.get(f"{console.url}/istanze/{instance}")
        assert asked.status_code == 303 and asked.headers["location"] == f"/login?next=%2Fistanze%2F{instance}"
        form = await client.get(console.url + asked.headers["location"])
        assert f'name="next" value="/istanze/{instance}"' in form.text
        wrong = await client.post(console.url + "/login", data={
            "utente": "op.201", "password": "not it", "csrf": csrf_of(form.text), "next": f"/istanze/{instance}"})
        assert wrong.status_code == 401 and f'name="next" value="/istanze/{instance}"' in wrong.text
        right = await client.post(console.url + "/login", data={
            "utente": "op.201", "password": PASSWORD, "csrf": csrf_of(form.text), "next": f"/istanze/{instance}"})
        assert right.status_code == 303 and right.headers["location"] == f"/istanze/{instance}"
        assert (await client.get(console.url + right.headers["location"])).status_code == 200

    for elsewhere in ("https://evil.example/x", "//evil.example/x", "/\\evil.example", "istanze"):
        async with httpx.AsyncClient(follow_redirects=False) as client:
            form = await client.get(f"{console.url}/login", params={"next": elsewhere})
            assert 'name="next" value="/"' in form.text, elsewhere
            landed = await client.post(console.url + "/login", data={
                "utente": "op.201", "password": PASSWORD, "csrf": csrf_of(form.text), "next": elsewhere})
            assert landed.status_code == 303 and landed.headers["location"] == "/", (elsewhere, landed.headers)
