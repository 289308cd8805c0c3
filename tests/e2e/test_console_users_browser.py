"""The admin's users page in real Chromium: the admin lands on it, adds an operator of two enti (listed
at once, and by `flows users list`: the same table, the same code), sees a refused user's error next to
its field, disables a user whose open session then ends, enables it again, and gives it a new password (its
session ends again, the old password no longer opens one); the auditor reads who did each change. The admin
issues an API key for a regional system (refused next to its field first), sees it once (a refresh of the page
issues no other), the key works on /api, the admin revokes it and /api answers 401. axe-core on the pages."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from axe_playwright_python.async_playwright import Axe
from typer.testing import CliRunner

from contracts.deadlines import ITALY
from services.cli.main import app as flows_app
from services.console import auth
from tests.console_support import PASSWORD, browser_of, csrf_of, italian_context, running_console
from tests.e2e.test_console_browser import _axe_clean, _log_in
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.e2e


async def test_the_admin_adds_and_disables_users_from_the_page(fresh_db, tmp_path, monkeypatch, chromium) -> None:  # type: ignore[no-untyped-def]
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, browser_of(chromium) as browser:
        await console.add_users()
        try:
            page = await (await italian_context(browser)).new_page()
            await _log_in(page, console.url, "adm.1")
            assert page.url.endswith("/utenti")
            assert await page.locator("tr.utente").count() == 6  # the six role users of console_support
            assert await page.locator("tr[data-utente='adm.1'] button").count() == 0  # not oneself
            await _axe_clean(page, Axe(), "40-utenti")

            # An operator without an ente: refused, the error next to the field, nothing stored.
            await page.fill("#u-name", "op.bianchi")
            await page.select_option("#u-role", "operator")
            await page.fill("#u-password", PASSWORD)
            async with page.expect_navigation():
                await page.click("#nuovo-utente button[type=submit]")
            assert await page.inner_text("#err-enti") == "Un operatore deve avere almeno un ente."
            assert await page.get_attribute("#u-enti", "aria-describedby") == "err-enti"
            assert await page.input_value("#u-password") == ""  # the password is never sent back
            await _axe_clean(page, Axe(), "41-utenti-errore")
            assert await console.pool.fetchval("SELECT count(*) FROM console_user WHERE name = 'op.bianchi'") == 0

            await page.fill("#u-enti", "201, 202")
            await page.fill("#u-password", PASSWORD)
            async with page.expect_navigation():
                await page.click("#nuovo-utente button[type=submit]")
            assert "Utente op.bianchi aggiunto (operatore)" in await page.inner_text("#esito")
            cells = await page.locator("tr[data-utente='op.bianchi'] td").all_inner_texts()
            assert cells[:5] == ["op.bianchi", "operatore", "201, 202", "", "attivo"], cells
            monkeypatch.setenv("DATABASE_URL", fresh_db)
            monkeypatch.setenv("COLUMNS", "220")
            # the CLI runs its own event loop: in a thread, beside the test's
            listed = await asyncio.to_thread(CliRunner().invoke, flows_app, ["users", "list"])
            assert listed.exit_code == 0 and "op.bianchi" in listed.output and "201, 202" in listed.output

            # The new operator logs in; the admin disables it; its open session ends at once.
            operator = await (await italian_context(browser)).new_page()
            await _log_in(operator, console.url, "op.bianchi")
            assert operator.url.endswith("/istanze")
            async with page.expect_navigation():
                await page.click("tr[data-utente='op.bianchi'] button")
            assert "Utente op.bianchi disattivato" in await page.inner_text("#esito")
            assert (await page.locator("tr[data-utente='op.bianchi'] td").all_inner_texts())[4] == "disattivato"
            await operator.goto(console.url + "/istanze")
            assert "/login" in operator.url

            # Disabled by mistake: enabled again, it logs in with its own password.
            async with page.expect_navigation():
                await page.click("tr[data-utente='op.bianchi'] button")  # now "Riattiva"
            assert "Utente op.bianchi riattivato" in await page.inner_text("#esito")
            assert (await page.locator("tr[data-utente='op.bianchi'] td").all_inner_texts())[4] == "attivo"
            await _log_in(operator, console.url, "op.bianchi")
            assert operator.url.endswith("/istanze")

            # A forgotten password: the admin sets a new one. Too short first: refused next to the field.
            await page.select_option("#r-name", "op.bianchi")
            await page.fill("#r-password", "corta")
            async with page.expect_navigation():
                await page.click("#reimposta-password button[type=submit]")
            assert await page.inner_text("#err-r-password") == "La password deve avere almeno 12 caratteri."
            assert await page.input_value("#r-name") == "op.bianchi" and await page.input_value("#r-password") == ""
            await _axe_clean(page, Axe(), "42-utenti-password-errore")
            new_password = "una nuova password 2026"
            await page.fill("#r-password", new_password)
            async with page.expect_navigation():
                await page.click("#reimposta-password button[type=submit]")
            assert "Nuova password impostata per op.bianchi" in await page.inner_text("#esito")
            await operator.goto(console.url + "/istanze")
            assert "/login" in operator.url  # its session ended with the old password
            async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
                form = await client.get(console.url + "/login")
                old = await client.post(console.url + "/login", data={
                    "utente": "op.bianchi", "password": PASSWORD, "csrf": csrf_of(form.text)})
                assert old.status_code == 401
                new = await client.post(console.url + "/login", data={
                    "utente": "op.bianchi", "password": new_password, "csrf": csrf_of(form.text)})
                assert new.status_code == 303
            stored = await console.pool.fetchval("SELECT password_hash FROM console_user WHERE name = 'op.bianchi'")
            assert stored.startswith("$argon2id$") and new_password not in stored

            # The auditor reads who did each of these, and when, on the access log's page; the refused tries
            # (an operator without an ente, a short password) changed nothing and are not there.
            auditor = await (await italian_context(browser)).new_page()
            await _log_in(auditor, console.url, "aud.1")
            await auditor.goto(console.url + "/accessi?utente=op.bianchi")
            rows = [[cell.strip() for cell in row] for row in await auditor.locator(
                "#gestione-utenti tbody tr").evaluate_all("rows => rows.map(r => [...r.cells].map(c => c.innerText))")]
            assert [r[1:] for r in rows] == [
                ["op.bianchi", "nuova password", "", "adm.1"], ["op.bianchi", "riattivato", "", "adm.1"],
                ["op.bianchi", "disattivato", "", "adm.1"],
                ["op.bianchi", "aggiunto", "operatore: enti 201, 202", "adm.1"],
            ], rows
            assert new_password not in await auditor.content()
            await _axe_clean(auditor, Axe(), "43-accessi-gestione-utenti")

            # An admin cannot disable itself (no button, and the route refuses it too).
            async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
                assert (await console.login(client, "adm.1")).status_code == 303
                csrf = csrf_of((await client.get(console.url + "/utenti")).text)
                own = await client.post(console.url + "/utenti/adm.1/disabilita", data={"csrf": csrf})
                assert own.status_code == 409 and "suo stesso utente" in own.text
            assert await console.pool.fetchval("SELECT disabled FROM console_user WHERE name = 'adm.1'") is False
        finally:
            await browser.close()


async def test_the_admin_issues_an_api_key_sees_it_once_and_revokes_it_from_the_page(  # type: ignore[no-untyped-def]
        fresh_db, tmp_path, chromium) -> None:
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, browser_of(chromium) as browser:
        await console.add_users()
        own = await console.instance("201")
        await console.instance("202")
        try:
            page = await (await italian_context(browser)).new_page()
            visited: list[str] = []
            page.on("request", lambda r: visited.append(r.url))
            await _log_in(page, console.url, "adm.1")
            assert page.url.endswith("/utenti")
            assert await page.inner_text("#chiavi tbody") == "Nessuna chiave API emessa."
            await _axe_clean(page, Axe(), "44-utenti-chiavi")

            # Refused next to its field, in Italian, what was typed kept: no label, then an ente nobody knows.
            await page.fill("#k-enti", "201 999")
            async with page.expect_navigation():
                await page.click("#nuova-chiave button[type=submit]")
            assert await page.inner_text("#err-k-label") == ("Etichetta: da 1 a 100 caratteri stampabili, per esempio "
                                                             "il nome del sistema che userà la chiave.")
            assert await page.get_attribute("#k-label", "aria-describedby") == "err-k-label"
            await page.fill("#k-label", "Sistema ASL Avellino")
            async with page.expect_navigation():
                await page.click("#nuova-chiave button[type=submit]")
            assert (await page.inner_text("#err-k-enti")).startswith("Ente 999 sconosciuto: gli enti della "
                                                                      "piattaforma sono 201, 202")
            assert await page.input_value("#k-label") == "Sistema ASL Avellino"
            await _axe_clean(page, Axe(), "45-utenti-chiave-errore")
            assert await console.pool.fetchval("SELECT count(*) FROM console_api_key") == 0

            await page.fill("#k-enti", "201")
            async with page.expect_navigation():
                await page.click("#nuova-chiave button[type=submit]")
            key = await page.input_value("#chiave-segreta")
            assert re.fullmatch(r"fk_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}", key), key
            key_id, secret = key.removeprefix("fk_").split(".")
            assert "non sarà mostrata di nuovo" in await page.inner_text("#chiave-emessa")
            assert f"Chiave API {key_id} emessa per Sistema ASL Avellino (enti 201)." in await page.inner_text("#esito")
            await _axe_clean(page, Axe(), "46-utenti-chiave-emessa")

            # The browser's refresh sends the same form again (Chromium re-posts it): no second key, no secret; the
            # page names the key and says its secret was shown once.
            again = await page.reload()
            assert again is not None and (again.request.method, again.status) == ("POST", 409)
            assert await page.locator("#chiave-segreta").count() == 0 and secret not in await page.content()
            assert (await page.inner_text("#chiave-gia-emessa")).startswith(
                f"Questo modulo ha già emesso la chiave API {key_id} per Sistema ASL Avellino il ")
            assert [r["key_id"] for r in await auth.list_api_keys(console.pool)] == [key_id]
            await _axe_clean(page, Axe(), "46b-utenti-chiave-gia-emessa")

            # The key works on /api as an operator of 201.
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=20) as api:
                listed = await api.get(console.url + "/api/istanze")
                assert listed.status_code == 200 and [i["instance"] for i in listed.json()["items"]] == [own]

                # Shown once: the page again lists the key, never its secret.
                await page.goto(console.url + "/utenti")
                assert secret not in await page.content() and await page.locator("#chiave-segreta").count() == 0
                cells = await page.locator(f"tr[data-chiave='{key_id}'] td").all_inner_texts()
                created = (await auth.list_api_keys(console.pool))[0]["created_at"].astimezone(ITALY)
                assert cells[:5] == [key_id, "Sistema ASL Avellino", "201", f"{created:%d/%m/%Y %H:%M}",
                                     "attiva"], cells

                async with page.expect_navigation():
                    await page.click(f"tr[data-chiave='{key_id}'] button")  # Revoca
                assert f"Chiave API {key_id} revocata" in await page.inner_text("#esito")
                revoked = (await auth.list_api_keys(console.pool))[0]["revoked_at"].astimezone(ITALY)
                cells = await page.locator(f"tr[data-chiave='{key_id}'] td").all_inner_texts()
                assert cells[4] == f"revocata il {revoked:%d/%m/%Y %H:%M}", cells
                assert await page.locator(f"tr[data-chiave='{key_id}'] button").count() == 0
                await _axe_clean(page, Axe(), "47-utenti-chiave-revocata")
                assert (await api.get(console.url + "/api/istanze")).status_code == 401
            assert not any(secret in url for url in visited), visited  # never in a URL the browser asked for

            # The auditor reads who issued and revoked it, under the key's name.
            auditor = await (await italian_context(browser)).new_page()
            await _log_in(auditor, console.url, "aud.1")
            await auditor.goto(console.url + f"/accessi?utente=api:{key_id}")
            rows = [[cell.strip() for cell in row] for row in await auditor.locator(
                "#gestione-utenti tbody tr").evaluate_all("rows => rows.map(r => [...r.cells].map(c => c.innerText))")]
            assert [r[1:] for r in rows] == [
                [f"api:{key_id}", "chiave API revocata", "", "adm.1"],
                [f"api:{key_id}", "chiave API emessa", "Sistema ASL Avellino: enti 201", "adm.1"]], rows
            assert secret not in await auditor.content()
        finally:
            await browser.close()
