"""The list page keeps its template's HTML around the rows by everything the template reads (services/console/
instance_pages.py `_list_page`): each page must be, byte for byte, what the template renders for the same principal,
search, errors and rows, the first time (rendered with marks) and every time after (put together from the kept
pieces), for every principal, search, error, first, middle and last page; and a change of anything the template
shows (the user's enti, the session's CSRF token, the search) must show at once."""

from __future__ import annotations

import urllib.parse
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from services.console import instance_pages
from services.console.assets import StaticAssets
from services.console.auth import Principal
from services.console.instance_pages import _LIST_PAGE_TYPES, _instances_html, _list_page, _list_rows, parse_search
from services.console.web import STATIC, Ctx, PageAssets

ASSETS = PageAssets.of(StaticAssets(STATIC))
OTHER_ASSETS = PageAssets.of(StaticAssets(STATIC, "/altri"))  # another app's links


def ctx(principal: Principal, assets: PageAssets = ASSETS) -> Ctx:
    app = SimpleNamespace(state=SimpleNamespace(assets=assets))
    return Ctx(principal, Request({"type": "http", "app": app, "headers": []}))


def rows(first: int, n: int, ente: str = "201") -> list[Any]:
    """Rows as the page's statement gives them: the principal's five columns (NULL), then the page's ten (their
    states, flow types and files vary: the Azioni column shows each of its items on some rows)."""
    made = []
    for instance in range(first, first - n, -1):
        row = {"instance": instance, "flow_type": ("FLUSSO_C", "FLUSSO_730")[instance % 2], "ente": ente,
               "source_instance": None if instance % 2 else instance - 7, "created_text": "02/07/2026 00:30",
               "start_text": "01/06/2026", "end_text": "30/06/2026",
               "state": ("Checked", "Failed loading", "Running", "Formatted", "Deleted")[instance % 5],
               "has_esiti": instance % 4 in (1, 3), "has_files": instance % 4 >= 2}
        made.append((None, None, None, None, None, *(row[name] for name, _ in _LIST_PAGE_TYPES)))
    return made


OPERATOR = Principal("op.uno", "operator", frozenset({"201", "202"}), csrf_token="csrf-1")
PRINCIPALS = [OPERATOR, Principal("ops.uno", "ops", csrf_token="csrf-2"),
              Principal("aud.uno", "auditor", csrf_token="csrf-3"),
              # marks in what the page shows: rendered by the template, nothing kept
              Principal("op\ue001\ue000", "operator", frozenset({"201"}), csrf_token="\ue002")]
SEARCHES = [{}, {"stato": "Checked"}, {"prima": "500"}, {"prima": "0"}, {"ente": "202", "tipo": "FLUSSO_C"},
            {"dal": "2026-01-01", "al": "2026-02-01", "stato": "Running", "prima": "77"},
            {"stato": "Nessuno", "dal": "ieri", "ente": "<b>\ue001"}, {"ente": " 201 "}]


def expected(c: Ctx, params: dict[str, str], page_rows: list[Any], more: bool) -> bytes:
    q, errors = parse_search(params)
    kept = {k: v for k, v in vars(q).items() if v is not None and k != "prima"}
    first_url = "/istanze?" + urllib.parse.urlencode(kept)
    next_url = f"{first_url}{'&' if kept else ''}prima={page_rows[-1][-len(_LIST_PAGE_TYPES)]}" if more else None
    return bytes(_instances_html(c, q, errors, _list_rows(c.principal, page_rows), len(page_rows), next_url,
                                 first_url).body)


def served(c: Ctx, params: dict[str, str], page_rows: list[Any], more: bool) -> bytes:
    q, errors = parse_search(params)
    kept = {k: v for k, v in vars(q).items() if v is not None and k != "prima"}
    first_url = "/istanze?" + urllib.parse.urlencode(kept)
    return bytes(_list_page(c, q, errors, page_rows, more, first_url, f"{first_url}{'&' if kept else ''}prima=").body)


@pytest.mark.parametrize("principal", PRINCIPALS, ids=lambda p: p.role)
@pytest.mark.parametrize("params", SEARCHES, ids=str)
def test_every_page_is_what_the_template_renders(principal: Principal, params: dict[str, str]) -> None:
    instance_pages._PIECES.clear()
    c = ctx(principal)
    for page_rows, more in ((rows(1000, 50), True), (rows(950, 50, "202"), True), (rows(900, 3), False),
                            (rows(897, 1), False), (rows(896, 50), True)):
        assert served(c, params, page_rows, more) == expected(c, params, page_rows, more)
        assert served(c, params, page_rows, more) == expected(c, params, page_rows, more)  # from the kept pieces


def test_what_the_template_shows_changes_at_once() -> None:
    instance_pages._PIECES.clear()
    page_rows = rows(1000, 50)
    first = served(ctx(OPERATOR), {}, page_rows, True)
    for changed in (Principal("op.uno", "operator", frozenset({"201"}), csrf_token="csrf-1"),  # an ente taken away
                    Principal("op.uno", "operator", frozenset({"201", "202"}), csrf_token="csrf-9"),  # a new session
                    Principal("op.due", "operator", frozenset({"201", "202"}), csrf_token="csrf-1"),
                    Principal("op.uno", "auditor", csrf_token="csrf-1")):
        page = served(ctx(changed), {}, page_rows, True)
        assert page != first and page == expected(ctx(changed), {}, page_rows, True)
    other = served(ctx(OPERATOR, OTHER_ASSETS), {}, page_rows, True)
    assert other != first and b"/altri/" in other
    assert other == expected(ctx(OPERATOR, OTHER_ASSETS), {}, page_rows, True)
    assert served(ctx(OPERATOR), {}, page_rows, True) == first
    for params in ({"prima": "500"}, {"prima": "0"}, {"prima": "500"}):  # the "Prima pagina" link shows for 500
        assert served(ctx(OPERATOR), params, page_rows, True) == expected(ctx(OPERATOR), params, page_rows, True)


def test_the_kept_pieces_stay_bounded() -> None:
    instance_pages._PIECES.clear()
    c = ctx(OPERATOR)
    for n in range(instance_pages._PIECES_MAX + 10):
        params = {"ente": f"X{n}"}  # free text: a new key each
        assert served(c, params, rows(1000, 2), False) == expected(c, params, rows(1000, 2), False)
        assert len(instance_pages._PIECES) <= instance_pages._PIECES_MAX
