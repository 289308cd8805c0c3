"""The instance list page reads its session and its rows in one statement (services/console/instance_pages.py,
`_LIST_PAGE_WITH_SESSION_SQL`): on the real app and PostgreSQL, the session is still checked on every
request (a user disabled in the table, a logged-out or expired session stop at once), the rows are only
the principal's enti, a role without the list gets 404, and the page shows Rome's time and escaped text.
The page is served by ConsoleApp's direct path (services/console/web.py, DIRECT_PAGES): its answer has the headers of
every page, and what it does not answer (no login, a refused role, an error) the ordinary path answers."""

from __future__ import annotations

import asyncio
import functools
import html
import itertools
import re
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from contracts.deadlines import ITALY
from services.console.web import DIRECT_PAGES, ConsoleApp
from services.loader.catalogue import known_enti
from tests.console_support import RunningConsole, csrf_of
from tests.pg_outage import postgres_down

pytestmark = pytest.mark.integration


def _listed(body: str) -> set[int]:
    return {int(n) for n in re.findall(r'<a href="/istanze/(\d+)">', body)}


async def test_the_list_shows_only_the_principals_enti_and_ends_with_the_session(console: RunningConsole) -> None:
    own, other = await console.instance("201"), await console.instance("202")
    async with httpx.AsyncClient(follow_redirects=False) as op, httpx.AsyncClient(follow_redirects=False) as ops:
        await console.login(op, "op.201")
        await console.login(ops, "ops.1")
        assert _listed((await op.get(console.url + "/istanze")).text) == {own}
        assert _listed((await op.get(console.url + "/istanze", params={"ente": "202"})).text) == set()
        assert _listed((await ops.get(console.url + "/istanze")).text) == {own, other}
        # The Ente filter offers what each may see: an operator its own enti, ops every ente the platform knows.
        offered = re.compile(r'<select id="f-ente"[^>]*>(.*?)</select>', re.S)
        op_enti = re.findall(r'<option value="(\w+)"', offered.findall(
            (await op.get(console.url + "/istanze", params={"ente": "201"})).text)[0])
        assert op_enti == ["201"]
        assert '<option value="201" selected>' in (await op.get(console.url + "/istanze", params={"ente": "201"})).text
        ops_page = (await ops.get(console.url + "/istanze")).text
        ops_enti = re.findall(r'<option value="(\w+)"', offered.findall(ops_page)[0])
        assert ops_enti == sorted(known_enti()) and "202" in ops_enti
        # Disabled in the table alone (its sessions left in place): the very next page is refused.
        await console.pool.execute("UPDATE console_user SET disabled = true WHERE name = 'ops.1'")
        refused = await ops.get(console.url + "/istanze")
        assert refused.status_code == 303 and refused.headers["location"].startswith("/login")
        # A logout ends the session at once too.
        page = await op.get(console.url + "/istanze")
        assert (await op.post(console.url + "/logout", data={"csrf": csrf_of(page.text)})).status_code == 303
        op.cookies.set("flows_session", str(page.request.headers["cookie"]).split("flows_session=")[1].split(";")[0])
        assert (await op.get(console.url + "/istanze")).status_code == 303
        # A cookie that is no session at all.
        op.cookies.set("flows_session", "not-a-session")
        assert (await op.get(console.url + "/istanze")).status_code == 303


async def test_roles_without_the_list_get_404_not_rows(console: RunningConsole) -> None:
    await console.instance("201")
    for user in ("desk.1", "st.1", "adm.1"):
        async with httpx.AsyncClient(follow_redirects=False) as client:
            await console.login(client, user)
            response = await client.get(console.url + "/istanze")
            assert response.status_code == 404 and not _listed(response.text), user


async def test_rows_show_rome_time_and_escaped_text_and_page_by_keyset(console: RunningConsole) -> None:
    numbers = [await console.instance("201") for _ in range(52)]
    hostile = numbers[-1]
    await console.pool.execute(
        "UPDATE instance_list SET flow_type = $2, state = $3, created_at = '2026-07-01 22:30+00', "
        "period_start = '2026-06-01', period_end = '2026-06-30' WHERE instance = $1",
        hostile, '<script>alert("x")</script>&', "Strano <i>")
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        first = (await client.get(console.url + "/istanze")).text
        assert "<script>" not in first and "<i>" not in first
        assert "<td>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;</td>" in first
        assert 'data-state="Strano &lt;i&gt;">Strano &lt;i&gt;</span>' in first
        assert "<td>02/07/2026 00:30</td><td>01/06/2026</td><td>30/06/2026</td>" in first  # UTC+2 in summer
        assert _listed(first) == set(numbers[-50:]) and "(50 in questa pagina)" in first
        following = re.search(r'href="(/istanze\?prima=(\d+))"', first)
        assert following and int(following.group(2)) == numbers[-50]
        second = (await client.get(console.url + following.group(1))).text
        assert _listed(second) == set(numbers[:2]) and "Pagina successiva" not in second


async def test_the_direct_answer_has_the_headers_of_every_page(console: RunningConsole) -> None:
    assert "/istanze" in DIRECT_PAGES  # served by ConsoleApp's direct path, not the router
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        listed = await client.get(console.url + "/istanze")
        routed = await client.get(console.url + "/istanze/nuova")  # a page through the middleware and the router
        assert listed.status_code == routed.status_code == 200
        for name in ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy",
                     "cache-control"):
            assert listed.headers[name] == routed.headers[name], name
        assert listed.headers["cache-control"] == "no-store"
        assert listed.headers["content-type"] == "text/html; charset=utf-8"


async def test_the_direct_answer_is_the_ordinary_paths_byte_for_byte(console: RunningConsole) -> None:
    """ConsoleApp sends a direct page's answer itself (web.py `_send_direct`), reading the cookie and the search
    without Starlette's Request properties: for the same request, the same ASGI messages as the ordinary path (the
    middleware and the router) sends, to the byte: the status, every header in the same order, the body."""
    await console.instance("201")
    app = _app(console)
    name = app.state.console.cookie_name
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        cookie = f"other=1; {name}={client.cookies.get(name)}".encode()

    async def answer(call: Any, query: bytes) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        await call({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                    "scheme": "http", "path": "/istanze", "raw_path": b"/istanze", "root_path": "",
                    "query_string": query, "headers": [(b"host", b"127.0.0.1"), (b"cookie", cookie)],
                    "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 80), "state": {}}, receive, send)
        return messages

    for query in (b"", b"stato=Checked", b"ente=201&stato=&stato=Running", b"tipo=nessuno"):
        direct = await answer(app, query)
        ordinary = await answer(functools.partial(FastAPI.__call__, app), query)  # not ConsoleApp's shortcut
        assert [m["type"] for m in direct] == ["http.response.start", "http.response.body"], query
        assert direct[0]["status"] == 200 and b"<table" in direct[1]["body"], query
        assert direct == ordinary, query


# A hang guard, no speed target: a connection not back by then was never given back.
RELEASE_GUARD_S = 30.0


def _app(console: RunningConsole) -> ConsoleApp:
    assert console.app is not None
    return console.app


async def _all_given_back(console: RunningConsole) -> bool:
    """Whether every connection of the console's pool is back in it but the one ConsoleApp keeps for the list page,
    and that one is free (a release ends a loop turn or two after the page is sent). Waited for: how soon is no
    concern of these tests (a loaded machine stretches a loop turn), only that it comes back; RELEASE_GUARD_S stops
    the wait for a connection that never does."""
    app = _app(console)
    pool: asyncpg.Pool = app.state.console.pool
    async with asyncio.timeout(RELEASE_GUARD_S):
        while app.kept_busy or pool.get_idle_size() != pool.get_size() - (app.kept is not None):
            await asyncio.sleep(0.01)
    return True


async def test_the_list_page_keeps_one_connection_and_gives_back_every_other(console: RunningConsole) -> None:
    """ConsoleApp runs the list page on one pool connection it keeps between pages (web.py, PageLease): the same
    one page after page; pages at the same time take others from the pool, given back once their page is sent; a
    refused page keeps it; a page that failed on it (PostgreSQL stopped: the next test) gives it back."""
    await console.instance("201")
    app = _app(console)
    pool: asyncpg.Pool = app.state.console.pool
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        assert (await client.get(console.url + "/istanze")).status_code == 200
        kept = app.kept
        assert kept is not None and await _all_given_back(console)
        for _ in range(12):  # more pages than the pool has connections
            assert (await client.get(console.url + "/istanze")).status_code == 200
            assert (await client.head(console.url + "/istanze")).status_code == 200  # the ordinary path: its own
        assert app.kept is kept and await _all_given_back(console)
        at_once = await asyncio.gather(*(client.get(console.url + "/istanze") for _ in range(8)))
        assert {page.status_code for page in at_once} == {200}
        assert app.kept is kept and await _all_given_back(console)
        assert pool.get_size() > 1  # the pages at the same time did take others
    # Refused (no session, one that is not, a role without the list; the ordinary path answers): it stays kept.
    for user, cookie in ((None, None), (None, "not-a-session"), ("desk.1", None)):
        async with httpx.AsyncClient(follow_redirects=False) as client:
            if user:
                await console.login(client, user)
            if cookie:
                client.cookies.set("flows_session", cookie)
            for _ in range(3):
                assert (await client.get(console.url + "/istanze")).status_code == (404 if user else 303)
                assert app.kept is kept and await _all_given_back(console)


async def test_the_page_is_sent_while_its_connection_is_still_out(console: RunningConsole) -> None:
    """A page that took one of the pool's connections (the kept one busy) gives it back after the page is sent: when
    its body goes out, the connection is still out of the pool."""
    await console.instance("201")
    app = _app(console)
    pool: asyncpg.Pool = app.state.console.pool
    async with httpx.AsyncClient(follow_redirects=False) as client:
        await console.login(client, "op.201")
        cookie = f"flows_session={client.cookies['flows_session']}".encode()
        assert (await client.get(console.url + "/istanze")).status_code == 200
    assert await _all_given_back(console)
    idle_when_sent: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            idle_when_sent.append(pool.get_idle_size())

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/istanze", "raw_path": b"/istanze", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"cookie", cookie)], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2)}
    app.kept_busy = True  # as when another page runs on it
    try:
        idle = pool.get_idle_size()
        await app(scope, receive, send)
        assert idle_when_sent == [idle - 1] or (idle == 0 and idle_when_sent == [0])  # its own, still out
        async with asyncio.timeout(RELEASE_GUARD_S):  # ... and back once the page is sent
            while pool.get_idle_size() < max(idle, 1):
                await asyncio.sleep(0.01)
    finally:
        app.kept_busy = False
    assert await _all_given_back(console) and "flows.page_lease" not in scope


async def test_with_postgresql_stopped_the_page_fails_like_any_route_and_recovers(console: RunningConsole) -> None:
    own = await console.instance("201")
    async with httpx.AsyncClient(follow_redirects=False, timeout=30) as client:
        await console.login(client, "op.201")
        async with postgres_down():
            # The direct path's error goes to the ordinary path, whose error handler answers 503, the database
            # unreachable (no hang, no dropped connection, no page without its session check; the page's words:
            # test_console_security.py)
            down = await client.get(console.url + "/istanze")
            assert down.status_code == 503 and not _listed(down.text)
        async with asyncio.timeout(60):
            while (page := await client.get(console.url + "/istanze")).status_code != 200:
                await asyncio.sleep(0.2)
        assert _listed(page.text) == {own}
    assert await _all_given_back(console)  # the failed pages' connections too, the kept one free


async def test_every_combination_of_filters_lists_what_it_asks_for(console: RunningConsole) -> None:
    """Each set of filters is its own statement (app.py `_filters`): all 64 combinations, on the page and the API,
    for an operator (its enti only) and ops (every ente), against the table filtered here. The dates are Italian
    days, as the page shows the times."""
    numbers = []
    for i in range(12):
        ente, flow_type = ("201", "202", "203")[i % 3], ("FLUSSO_C", "FLUSSO_MEF")[i % 2]
        numbers.append(await console.instance(ente, flow_type=flow_type))
    for i, number in enumerate(numbers):
        await console.pool.execute("UPDATE instance_list SET state = $2, created_at = $3 WHERE instance = $1",
                                   number, ("Checked", "Running")[i % 2 == 0 and i % 4 != 0],
                                   # every third at 23:30 UTC: 00:30 of the next day in Rome, the day it is found by
                                   datetime(2026, 3, 1 + i, 23 if i % 3 == 1 else 12, 30, tzinfo=UTC))
    table = [dict(r) for r in await console.pool.fetch("SELECT instance, flow_type, ente, state, created_at "
                                                       "FROM instance_list")]
    asked = {"tipo": "FLUSSO_C", "ente": "201", "dal": "2026-03-03", "al": "2026-03-09", "stato": "Checked",
             "prima": str(numbers[9])}

    def expected(params: dict[str, str], enti: set[str] | None) -> set[int]:
        day = {r["instance"]: r["created_at"].astimezone(ITALY).date() for r in table}
        return {r["instance"] for r in table
                if (enti is None or r["ente"] in enti)
                and ("tipo" not in params or r["flow_type"] == params["tipo"])
                and ("ente" not in params or r["ente"] == params["ente"])
                and ("dal" not in params or day[r["instance"]] >= date.fromisoformat(params["dal"]))
                and ("al" not in params or day[r["instance"]] <= date.fromisoformat(params["al"]))
                and ("stato" not in params or r["state"] == params["stato"])
                and ("prima" not in params or r["instance"] < int(params["prima"]))}

    async with httpx.AsyncClient(follow_redirects=False) as op, httpx.AsyncClient(follow_redirects=False) as ops:
        await console.login(op, "op.201")
        await console.login(ops, "ops.1")
        seen_any = 0
        for chosen in itertools.product((False, True), repeat=len(asked)):
            params = {k: v for (k, v), on in zip(asked.items(), chosen, strict=True) if on}
            for client, enti in ((op, {"201"}), (ops, None)):
                want = expected(params, enti)
                seen_any += bool(want)
                assert _listed((await client.get(console.url + "/istanze", params=params)).text) == want, params
                items = (await client.get(console.url + "/api/istanze", params=params)).json()["items"]
                assert {item["instance"] for item in items} == want, params
        assert seen_any > 64  # the filters leave rows to compare in most combinations, not empty pages only


async def test_an_ente_typed_in_the_address_is_no_key_of_the_options_cache(console: RunningConsole) -> None:
    """The Ente filter comes from the query string as typed: an ente that is not one of the user's choices finds
    nothing and marks no option, and it is not kept by the cache of the rendered options (instance_pages._options),
    which would otherwise grow by one entry at every new `?ente=` a signed-in user sends."""
    from services.console.instance_pages import _options

    own = await console.instance("201")
    async with httpx.AsyncClient(follow_redirects=False) as op:
        await console.login(op, "op.201")
        assert _listed((await op.get(console.url + "/istanze")).text) == {own}  # the options of no choice, cached
        before = _options.cache_info().currsize
        for n in range(40):
            page = await op.get(console.url + "/istanze", params={"ente": f"X{n}<b>"})
            assert page.status_code == 200 and _listed(page.text) == set()
            assert " selected>" not in page.text.split('id="f-ente"')[1].split("</select>")[0]
            assert f"X{n}<b>" not in page.text  # nowhere unescaped
        assert _options.cache_info().currsize == before
        chosen = await op.get(console.url + "/istanze", params={"ente": "201"})
        assert '<option value="201" selected>' in chosen.text and _listed(chosen.text) == {own}


FEEDBACK_CSV = b"record_key;field;code;severity;message\nS1@P1/01;patient_cf;CF_CHECK_CHAR;error;RSSMRA80A01H501U\n"


def _row_of(body: str, instance: int) -> str:
    found = re.search(rf'<tr><td>(?:(?!</tr>).)*?<a href="/istanze/{instance}">{instance}</a>.*?</tr>', body, re.S)
    assert found, f"no row of {instance}"
    return found.group(0)


def _azioni(body: str, instance: int) -> dict[str, str]:
    """The Azioni cell of `instance`'s row on the list: each item's visible text -> its href or formaction."""
    cell = _row_of(body, instance).split('<td class="azioni">')[1].split("</td>")[0]
    items = re.findall(r'<(a|button)[^>]*?(?:href|formaction)="([^"]+)"[^>]*>(.*?)</\1>', cell)
    return {html.unescape(re.sub(r'<span class="visually-hidden">.*?</span>', "", inner)): target
            for _, target, inner in items}


def _names(body: str, instance: int) -> list[str]:
    cell = _row_of(body, instance).split('<td class="azioni">')[1].split("</td>")[0]
    return [html.unescape(re.sub(r"<[^>]+>", "", inner))
            for _, inner in re.findall(r"<(a|button)\b[^>]*>(.*?)</\1>", cell)]


# What the list's Azioni and the instance page's Azioni call each action.
LIST_ACTION = {"format": "Formatta", "send": "Invia a Sistema TS", "delete": "Cancella…"}


def _page_actions(body: str, instance: int) -> set[str]:
    """The actions the instance page's Azioni section offers."""
    section = body.split('<h2 class="h4">Azioni</h2>')[1].split('<h2 class="h4">File</h2>')[0] \
        if '<h2 class="h4">Azioni</h2>' in body else ""
    return {action for action, there in (("format", f'action="/istanze/{instance}/formatta"'),
                                         ("send", f'href="/istanze/{instance}/invia-ts"'),
                                         ("delete", f'action="/istanze/{instance}/cancella"')) if there in section}


async def test_each_rows_actions_are_its_instance_pages_and_each_link_leads_there(console: RunningConsole) -> None:
    """The list's Azioni column (the last of nine) offers, for each row, the actions its instance page offers the same
    user (one decision: instance_pages.instance_actions), and the downloads of its files: the feedback of a failed
    or warned load, the zip of a formatted one. An operator may act, ops and the auditor only read. Every item names
    its instance for a screen reader. Each link answers what it says: the esito's CSV, the zip, the instance page's
    delete form (#cancella, where the reason is asked); Formatta posts the page's CSRF token and lands on the
    instance page."""
    feedback = console.file_ref("feedback_1.csv", "feedback", FEEDBACK_CSV, 1, "text/csv")
    c1 = console.file_ref("C1_201.txt", "C1", b"C1 record\n", 1)
    c2 = console.file_ref("C2_201.txt", "C2", b"C2 record\n", 1)
    checked: list[tuple[str, dict[str, Any]]] = [("flows.load-checked", {"source_instance": 1,
                                                                          "counts": {"services": 1}})]
    formatted = [*checked, ("flows.formatting-started", {}), ("flows.formatted", {"files": [c1, c2]})]
    instances = {
        "checked": await console.instance("201", checked),
        "warned": await console.instance("201", [("flows.load-checked", {
            "source_instance": 1, "counts": {"services": 1}, "warnings": 1, "feedback": feedback})]),
        "failed": await console.instance("201", [("flows.load-failed", {"errors": 1, "summary": "1 errore",
                                                                         "feedback": feedback})]),
        "crashed": await console.instance("201", [("flows.load-failed", {"errors": 1, "summary": "interrotto"})]),
        "running": await console.instance("201"),
        "formatted": await console.instance("201", formatted),
        "formatted-730": await console.instance("201", formatted, flow_type="FLUSSO_730"),
        "deleted": await console.instance("201", [*formatted, ("flows.instance-deleted", {"deleted_by": "op.201",
                                                                                            "reason": "doppia"})]),
    }
    expected_operator = {
        "checked": {"Formatta", "Cancella…"},
        "warned": {"Formatta", "Scarica l'esito (FeedBack)", "Cancella…"},
        "failed": {"Scarica l'esito (FeedBack)", "Cancella…"},
        "crashed": {"Cancella…"},  # no feedback was written
        "running": set(),
        "formatted": {"Scarica i file (zip)", "Cancella…"},
        "formatted-730": {"Invia a Sistema TS", "Scarica i file (zip)", "Cancella…"},
        "deleted": {"Scarica i file (zip)"},
    }
    for role in ("operator", "ops", "auditor"):
        async with console.client(role) as client:
            listed = await client.get(console.url + "/istanze")
            assert listed.status_code == 200
            body = listed.text
            head = body.split("<thead>")[1].split("</thead>")[0]
            assert re.findall(r'<th scope="col">([^<]+)</th>', head)[-1] == "Azioni" and head.count("<th") == 9
            for what, n in instances.items():
                assert _row_of(body, n).count("<td") == 9, what
                shown = _azioni(body, n)
                page = await client.get(console.url + f"/istanze/{n}")
                on_page = {LIST_ACTION[a] for a in _page_actions(page.text, n)}
                assert set(shown) & set(LIST_ACTION.values()) == on_page, (role, what, shown, on_page)
                downloads = set(shown) - set(LIST_ACTION.values())
                want = expected_operator[what]
                assert set(shown) == (want if role == "operator" else want - set(LIST_ACTION.values())), (role, what)
                assert downloads == want - set(LIST_ACTION.values()), (role, what)
                # Each item names its instance for a screen reader (the only thing that tells fifty apart).
                assert all(name.endswith(f"istanza {n}") for name in _names(body, n)), _names(body, n)
                for text, target in shown.items():
                    assert target.startswith(f"/istanze/{n}"), target
                    if text == "Cancella…":
                        assert target == f"/istanze/{n}#cancella" and 'id="cancella"' in page.text
                        assert f'action="/istanze/{n}/cancella" id="cancella"' in page.text
                    elif text == "Scarica l'esito (FeedBack)":
                        got = await client.get(console.url + target)
                        assert got.status_code == 200 and got.content == FEEDBACK_CSV, what
                        assert got.headers["content-disposition"].startswith("attachment")
                    elif text == "Scarica i file (zip)":
                        got = await client.get(console.url + target)
                        assert got.status_code == 200 and got.content[:2] == b"PK", what
            if role != "operator":
                assert "formaction=" not in body and "#cancella" not in body
                # nor may it post one: the route's own rule (404, as for every route a role may not use)
                posted = await client.post(console.url + f"/istanze/{instances['checked']}/formatta",
                                           data={"csrf": csrf_of(body)})
                assert posted.status_code == 404
                continue
            # Formatta: a button of the page's one form, whose CSRF token is the session's; it lands on the instance.
            form = re.search(r'<form id="azioni" method="post"><input type="hidden" name="csrf" value="([^"]+)">'
                             r"</form>", body)
            assert form and form.group(1) == csrf_of(body)
            button = re.search(rf'<button type="submit" form="azioni" formaction="(/istanze/{instances["checked"]}'
                               r'/formatta)"', body)
            assert button
            posted = await client.post(console.url + button.group(1), data={"csrf": form.group(1)})
            assert posted.status_code == 303 and posted.headers["location"] == f"/istanze/{instances['checked']}"
            # Without the token it is refused, as every form of the console
            refused = await client.post(console.url + button.group(1), data={})
            assert refused.status_code == 403
    views = await console.pool.fetch("SELECT data->>'what' AS what, actor FROM events WHERE stream_id LIKE 'access-%' "
                                     "AND (data->>'instance')::bigint = $1", instances["failed"])
    assert {("feedback-download", user) for user in ("op.201", "ops.1", "aud.1")} <= {(v["what"], v["actor"])
                                                                                      for v in views}


async def test_an_empty_list_spans_every_column(console: RunningConsole) -> None:
    async with console.client("operator") as client:
        body = (await client.get(console.url + "/istanze")).text
    assert '<tr><td colspan="9">Nessuna istanza corrisponde alla ricerca.</td></tr>' in body


async def test_a_state_no_code_knows_is_shown_with_no_action(console: RunningConsole) -> None:
    """A read model row edited by hand into a state the console does not know: the list and the instance page show it
    (escaped, as it is) and offer no action on it, since the state machine allows none (instance_actions); the
    instance page no longer fails on it."""
    instance = await console.instance("201", [("flows.load-checked", {"source_instance": 1, "counts": {}})])
    await console.pool.execute("UPDATE instance_list SET state = 'Stato <ignoto>' WHERE instance = $1", instance)
    async with console.client("operator") as client:
        listed = (await client.get(console.url + "/istanze")).text
        page = await client.get(console.url + f"/istanze/{instance}")
    assert _azioni(listed, instance) == {} and "Stato &lt;ignoto&gt;" in _row_of(listed, instance)
    assert page.status_code == 200 and _page_actions(page.text, instance) == set()
    assert "Stato &lt;ignoto&gt;" in page.text and "<ignoto>" not in page.text
