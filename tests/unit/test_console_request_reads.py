"""The list page reads its session cookie and its search without Starlette's Request properties (for speed:
services/console/web.py `request_cookie`, services/console/instance_pages.py `query_values`); each must read what
`request.cookies` and `request.query_params` read, for every shape of header and query string."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from services.console.instance_pages import query_values
from services.console.web import request_cookie

COOKIE_HEADERS = [
    [],
    [(b"cookie", b"flows_session=abc")],
    [(b"cookie", b"other=1; flows_session=abc; last=2")],
    [(b"cookie", b"flows_session=first; flows_session=second")],  # the last of a name
    [(b"cookie", b"flows_session=one"), (b"cookie", b"flows_session=two")],  # two headers: the later one
    [(b"cookie", b"flows_session=one"), (b"cookie", b"other=x")],  # a later header without it keeps the earlier
    [(b"cookie", b'flows_session="quoted\\"value"')],
    [(b"cookie", b"  flows_session = spaced ;x")],
    [(b"cookie", b"flows_session")],  # no '=': a cookie of empty name
    [(b"cookie", b"flows_session=")],
    [(b"cookie", "flows_session=caf\u00e9".encode("latin-1"))],
    [(b"x-cookie", b"flows_session=not-this"), (b"host", b"h")],
]


@pytest.mark.parametrize("headers", COOKIE_HEADERS)
def test_request_cookie_reads_what_request_cookies_reads(headers: list[tuple[bytes, bytes]]) -> None:
    for name in ("flows_session", "__Host-flows_session", "other", ""):
        request = Request({"type": "http", "headers": headers})
        assert request_cookie(request, name) == request.cookies.get(name), (headers, name)


QUERIES = [b"", b"stato=Checked", b"stato=Checked&stato=Failed+loading", b"ente=%20201%20&tipo=", b"prima=123&prima=",
           b"dal=2026-01-01&al=2026-01-31&ente=caf%C3%A9", b"a=1&&b=2;c=3", b"=x&y", b"ente=%zz", b"stato=Checked#frag",
           "ente=caf\u00e9".encode("latin-1")]


@pytest.mark.parametrize("query", QUERIES)
def test_query_values_read_what_query_params_read(query: bytes) -> None:
    params = Request({"type": "http", "query_string": query}).query_params
    values = query_values(query)
    assert values == dict(params)
    for name in ("stato", "ente", "tipo", "prima", "dal", "al", "a", "b", "c", "y", ""):
        assert values.get(name) == params.get(name), (query, name)
