"""The admin's API keys on the users page (/utenti), on the real app and PostgreSQL: the routes refuse a form
without its CSRF token and every role but admin; an issued key is shown once and only in that answer (never in a
URL, a log, the record, a later page), works on /api, and is refused there (401) once revoked from the page; bad
input is refused next to its field, in Italian, with nothing stored or recorded."""

from __future__ import annotations

import asyncio
import html
import re

import httpx
import pytest

from contracts.deadlines import ITALY
from services.console import auth
from tests.console_support import ROLE_USERS, RunningConsole, csrf_of
from tests.log_capture import service_log_lines

pytestmark = pytest.mark.integration

ISSUE, REVOKE = "/utenti/chiavi", "/utenti/chiavi/revoca"


async def _signed_in(console: RunningConsole, client: httpx.AsyncClient, user: str) -> str:
    """Logs `user` in; the session's CSRF token (from the logout form every page carries)."""
    assert (await console.login(client, user)).status_code == 303
    return csrf_of((await client.get(console.url + "/", follow_redirects=True)).text)


async def _keys(console: RunningConsole) -> list[tuple[str, bool]]:
    return [(r["key_id"], r["revoked"]) for r in await auth.list_api_keys(console.pool)]


async def _key_records(console: RunningConsole) -> list[tuple[str, str, dict[str, object]]]:
    rows = await console.pool.fetch("SELECT type, actor, data FROM events WHERE stream_id = $1 AND type LIKE "
                                    "'console.api-key-%' ORDER BY version", auth.USERS_STREAM)
    return [(r["type"], r["actor"], r["data"]) for r in rows]


def _field_error(page: str, field: str) -> str:
    found = re.search(rf'id="err-{field}">(.*?)</div>', page, re.S)
    assert found, f"no error for {field} on the page"
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip()


def _key_form(page: str) -> dict[str, str]:
    """The hidden fields of the page's "Emetti una chiave API" form, as a browser sends them with the typed ones."""
    form = re.search(r'<form [^>]*id="nuova-chiave".*?</form>', page, re.S)
    assert form, "no key form on the page"
    hidden = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.group(0))
    return {name: html.unescape(value) for name, value in hidden}


def _issued_key(page: str) -> str | None:
    found = re.search(r'id="chiave-segreta"[^>]*value="(fk_[0-9a-f]{12}\.[A-Za-z0-9_-]+)"', page)
    return found.group(1) if found else None


async def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(console: RunningConsole) -> None:
    key = await auth.add_api_key(console.pool, "sistema-regionale", ["201"], by="cli:tester")
    key_id = key.partition(".")[0].removeprefix("fk_")
    async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
        await _signed_in(console, client, "adm.1")
        for data in ({}, {"csrf": "wrong"}):
            issued = await client.post(console.url + ISSUE, data={**data, "label": "cruscotto", "enti": "201"})
            revoked = await client.post(console.url + REVOKE, data={**data, "key": key_id})
            for response in (issued, revoked):
                assert response.status_code == 403, response.text
                assert "Modulo scaduto o non valido" in response.text
    assert await _keys(console) == [(key_id, False)]
    assert [t for t, _, _ in await _key_records(console)] == ["console.api-key-added"]


async def test_every_role_but_admin_is_refused_with_a_404_and_changes_nothing(console: RunningConsole) -> None:
    """With its own valid session and CSRF token, and a real key's id: the role alone refuses (the matrix of
    test_console_authz.py posts empty forms; here the forms would succeed for an admin)."""
    key = await auth.add_api_key(console.pool, "sistema-regionale", ["201"], by="cli:tester")
    key_id = key.partition(".")[0].removeprefix("fk_")
    for role, (user, _) in ROLE_USERS.items():
        if role == "admin":
            continue
        async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
            csrf = await _signed_in(console, client, user)
            issued = await client.post(console.url + ISSUE, data={"csrf": csrf, "label": "intruso", "enti": "201"})
            revoked = await client.post(console.url + REVOKE, data={"csrf": csrf, "key": key_id})
            page = await client.get(console.url + "/utenti")
            assert (issued.status_code, revoked.status_code, page.status_code) == (404, 404, 404), role
            assert key_id not in issued.text + revoked.text + page.text, role
    assert await _keys(console) == [(key_id, False)]
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
        assert (await client.get(console.url + "/api/istanze")).status_code == 200  # still works


async def test_the_admin_issues_a_key_seen_once_that_works_then_revokes_it_and_the_api_refuses_it(
        console: RunningConsole) -> None:
    own = await console.instance("201")
    await console.instance("202")
    async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
        csrf = await _signed_in(console, client, "adm.1")
        users = (await client.get(console.url + "/utenti")).text
        assert "Nessuna chiave API emessa" in users
        with service_log_lines() as logs:
            answer = await client.post(console.url + ISSUE, data={**_key_form(users), "label": "Sistema ASL Avellino",
                                                                  "enti": "201 , 203"})
        assert answer.status_code == 200, answer.text  # the answer itself: no redirect, no URL carries the key
        assert str(answer.url) == console.url + ISSUE and answer.headers["cache-control"] == "no-store"
        key = _issued_key(answer.text)
        assert key, answer.text
        key_id, secret = key.removeprefix("fk_").split(".")
        assert "non sarà mostrata di nuovo" in answer.text
        assert f"Chiave API {key_id} emessa per Sistema ASL Avellino (enti 201, 203)." in answer.text
        # Never again: the page shows its id and state, never the key.
        later = (await client.get(console.url + "/utenti")).text
        assert secret not in later and 'id="chiave-segreta"' not in later
        row = re.search(rf'<tr class="chiave" data-chiave="{key_id}">(.*?)</tr>', later, re.S)
        assert row, later
        cells = [re.sub(r"<[^>]+>|\s+", " ", c).strip() for c in re.findall(r"<td>(.*?)</td>", row.group(1), re.S)]
        created = (await auth.list_api_keys(console.pool))[0]["created_at"]
        assert cells[:5] == [key_id, "Sistema ASL Avellino", "201, 203", f"{created.astimezone(ITALY):%d/%m/%Y %H:%M}",
                             "attiva"], cells
        assert "Revoca" in cells[5]

        # The key works on /api, as an operator of its enti.
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as api:
            listed = await api.get(console.url + "/api/istanze")
            assert listed.status_code == 200 and [i["instance"] for i in listed.json()["items"]] == [own]

            revoked = await client.post(console.url + REVOKE, data={"csrf": csrf, "key": key_id})
            assert revoked.status_code == 200, revoked.text
            assert f"Chiave API {key_id} revocata" in revoked.text
            assert (await api.get(console.url + "/api/istanze")).status_code == 401  # the very next request
        stamp = (await auth.list_api_keys(console.pool))[0]["revoked_at"].astimezone(ITALY)
        row = re.search(rf'<tr class="chiave" data-chiave="{key_id}">(.*?)</tr>', revoked.text, re.S)
        assert row and f"revocata il {stamp:%d/%m/%Y %H:%M}" in row.group(1) and "Revoca" not in row.group(1)

        # A second revocation (a stale page, another admin): what was asked already holds; said as information in
        # Italian, no field in error, nothing recorded.
        again = await client.post(console.url + REVOKE, data={"csrf": csrf, "key": key_id})
        assert again.status_code == 200
        assert f"La chiave API {key_id} era già revocata dal {stamp:%d/%m/%Y %H:%M}: nulla è cambiato." in again.text
        assert "alert-info" in again.text and 'aria-invalid="true"' not in again.text

    # The record: issued and revoked by the admin, with id, label and enti; never the secret nor its hash.
    stored_hash = await console.pool.fetchval("SELECT secret_hash FROM console_api_key WHERE key_id = $1", key_id)
    records = await _key_records(console)
    assert [(t, a) for t, a, _ in records] == [("console.api-key-added", "adm.1"), ("console.api-key-revoked", "adm.1")]
    assert [d for _, _, d in records] == [{"key": key_id, "label": "Sistema ASL Avellino", "enti": ["201", "203"]},
                                          {"key": key_id}]
    every_event = "".join(r["data"] for r in await console.pool.fetch("SELECT data::text AS data FROM events"))
    assert secret not in every_event and stored_hash not in every_event
    assert secret not in logs.getvalue()


async def test_bad_input_is_refused_next_to_its_field_in_italian_and_nothing_is_stored(
        console: RunningConsole) -> None:
    cases = [
        ({"label": "  ", "enti": "201"}, "k-label", "Etichetta: da 1 a 100 caratteri stampabili"),
        ({"label": "x" * 101, "enti": "201"}, "k-label", "Etichetta: da 1 a 100 caratteri stampabili"),
        ({"label": "cruscotto", "enti": ""}, "k-enti", "Una chiave API deve avere almeno un ente."),
        ({"label": "cruscotto", "enti": "201 999"}, "k-enti", "Ente 999 sconosciuto: gli enti della piattaforma sono "
                                                              "201, 202, 203"),
        ({"label": "cruscotto", "enti": "2011"}, "k-enti", "Ente '2011': un codice di tre cifre o maiuscole"),
    ]
    async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
        csrf = await _signed_in(console, client, "adm.1")
        form = _key_form((await client.get(console.url + "/utenti")).text)
        for data, field, message in cases:
            answer = await client.post(console.url + ISSUE, data={**form, **data})
            form = _key_form(answer.text)  # the answer's form, as the admin would correct it
            assert answer.status_code == 422, (data, answer.status_code)
            assert message in _field_error(answer.text, field), (data, answer.text)
            assert f'aria-describedby="err-{field}"' in answer.text
            assert "La chiave non è stata emessa" in answer.text and 'id="chiave-segreta"' not in answer.text
            assert f'value="{data["enti"]}"' in answer.text  # what was typed is kept, to be corrected
        for given, message in [("000000000000", "Non esiste la chiave API '000000000000'."),
                               ("", "12 cifre esadecimali"), ("zz", "Identificativo di chiave 'zz'")]:
            answer = await client.post(console.url + REVOKE, data={"csrf": csrf, "key": given})
            assert answer.status_code == 422 and message in _field_error(answer.text, "k-key"), (given, answer.text)
        # A whole key given to the revocation (a client's key pasted): refused without being repeated.
        whole = f"fk_{'a' * 12}.{'S' * 43}"
        answer = await client.post(console.url + REVOKE, data={"csrf": csrf, "key": whole})
        assert answer.status_code == 422 and "non la chiave intera" in _field_error(answer.text, "k-key")
        assert "S" * 43 not in answer.text
        # A key form without its one-time id (a page of an older version), or with one the console never makes:
        # refused above the form, what was typed kept, and the answer's form has a new id to send it again.
        for request in ({}, {"request": "corto"}):
            answer = await client.post(console.url + ISSUE, data={"csrf": csrf, "label": "cruscotto", "enti": "201",
                                                                  **request})
            assert answer.status_code == 422, (request, answer.text)
            assert "Il modulo non ha il suo identificativo" in _field_error(answer.text, "k-request"), answer.text
            assert 'value="cruscotto"' in answer.text and 'id="chiave-segreta"' not in answer.text
            assert re.fullmatch(r"[A-Za-z0-9_-]{22}", _key_form(answer.text)["request"])
    assert await _keys(console) == []
    assert await _key_records(console) == []


async def test_a_form_sent_again_by_a_refresh_issues_no_second_key_and_says_the_first_was_shown_once(
        console: RunningConsole) -> None:
    """A browser's refresh of the answer (or back and submit again) sends the very same form again: it issues
    nothing, and the answer names the key that form issued, says its secret was shown once, and shows no secret."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
        await _signed_in(console, client, "adm.1")
        sent = {**_key_form((await client.get(console.url + "/utenti")).text), "label": "Cruscotto ASL", "enti": "201"}
        first = await client.post(console.url + ISSUE, data=sent)
        assert first.status_code == 200, first.text
        key = _issued_key(first.text)
        assert key, first.text
        key_id, secret = key.removeprefix("fk_").split(".")
        with service_log_lines() as logs:
            again = await client.post(console.url + ISSUE, data=sent)
        assert await _keys(console) == [(key_id, False)], again.text  # one form, one key
        assert [t for t, _, _ in await _key_records(console)] == ["console.api-key-added"]
        assert again.status_code == 409, again.text
        assert _issued_key(again.text) is None and 'id="chiave-segreta"' not in again.text
        assert secret not in again.text and secret not in logs.getvalue()
        said = re.search(r'id="chiave-gia-emessa"[^>]*>(.*?)</div>', again.text, re.S)
        assert said, again.text
        text = html.unescape(re.sub(r"<[^>]+>|\s+", " ", said.group(1))).strip()
        created = (await auth.list_api_keys(console.pool))[0]["created_at"].astimezone(ITALY)
        assert text.startswith(f"Questo modulo ha già emesso la chiave API {key_id} per Cruscotto ASL il "
                               f"{created:%d/%m/%Y %H:%M}: nessuna nuova chiave è stata emessa."), text
        assert "è stata mostrata una sola volta" in text, text

        # The answer's own form is a new one: it issues another key, once.
        other = {**_key_form(again.text), "label": "Cruscotto ASL", "enti": "201"}
        assert other.get("request") != sent.get("request")
        issued = await client.post(console.url + ISSUE, data=other)
        assert issued.status_code == 200 and _issued_key(issued.text) not in (None, key), issued.text
        assert (await client.post(console.url + ISSUE, data=other)).status_code == 409
    assert len(await _keys(console)) == 2
    # Nowhere in clear: the table keeps the secret's SHA-256 and the form's id, never the secret.
    rows = await console.pool.fetch("SELECT * FROM console_api_key")
    assert all(secret not in str(dict(r)) for r in rows)


async def test_a_double_click_sends_the_form_twice_at_once_and_issues_one_key(console: RunningConsole) -> None:
    """Two posts of one form at the same time: the second waits for the first's transaction, then finds its key."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
        await _signed_in(console, client, "adm.1")
        sent = {**_key_form((await client.get(console.url + "/utenti")).text), "label": "Cruscotto ASL", "enti": "201"}
        answers = await asyncio.gather(*(client.post(console.url + ISSUE, data=sent) for _ in range(2)))
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    assert len(await _keys(console)) == 1
    assert [t for t, _, _ in await _key_records(console)] == ["console.api-key-added"]
