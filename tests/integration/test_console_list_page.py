"""The instance list page reads its session and its rows in one statement (services/console/instance_pages.py,
`_LIST_PAGE_WITH_SESSION_SQL`): on the real app and PostgreSQL, the session is still checked on every
request (a user disabled in the table, a logged-out or expired session stop at once), the rows are only
the principal's enti, a role without the list gets 404, and the page shows Rome's time and escaped text.
The page is served by ConsoleApp's direct path (services/console/web.py, DIRECT_PAGES): its answer has the headers of
every page, and what it does not answer (no login, a refused role, an error) the ordinary path answers."""

from __future__ import annotations

import asyncio
import functools
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
