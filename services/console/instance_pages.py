"""The instance pages: the list (keyset search), a new load, an instance (history, feedback, files, actions,
its live stream), the deadlines, the flow types and their layouts, and the 730's send to Sistema TS with credentials
sealed in the browser."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import json
import re
import tempfile
import time
import urllib.parse
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pydantic
import structlog
from fastapi import HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, StreamingResponse
from markupsafe import Markup
from starlette.background import BackgroundTask

from contracts import flows
from contracts.deadlines import (
    DeadlineDataInvalid,
    DeadlineDataMissing,
    deadlines_for_month,
    default_month,
    italian_day_start_sql,
    italian_today,
    known_deadlines_for_month,
)
from contracts.deadlines import rules as deadline_rules
from contracts.deadlines import status as deadline_status
from contracts.flows import FlowType
from contracts.italian import italian_date, italian_number
from contracts.states import SENDABLE_FLOW_TYPES, IllegalTransition, InstanceState, target_of
from services.cli.common import UserError
from services.cli.fileview import file_rows
from services.cli.instances import append_deletion, load_request, send_format_request, send_load_request
from services.cli.ts import send_sealed_730
from services.console import auth
from services.console.access import (
    ACT_ON_INSTANCE,
    LIST_INSTANCES,
    READ_INSTANCE,
    REQUEST_LOAD,
    may,
    record_access,
)
from services.console.labels import (
    BADGE_HTML,
    FIELD_TYPE_LABELS,
    FILE_CONTENTS,
    FILE_KIND_LABELS,
    FILES_WITHOUT_LAYOUT,
    FLOW_TYPE_CHOICES,
    FLOW_TYPE_DESCRIPTIONS,
    FLOW_TYPE_LABEL_VALUES,
    FLOW_TYPE_LABELS,
    FLOW_TYPE_VALUES,
    ROME,
    STATE_LABEL_VALUES,
    STATE_LABELS,
    STATE_VALUES,
    badge,
    chain_break_text,
    upload_platform,
)
from services.console.live import next_change
from services.console.web import (
    FILE_PAGE,
    PAGE_SIZE,
    Console,
    Ctx,
    console_of,
    page,
    pages,
    request_principal,
    route,
    templates,
)
from services.formatter.layouts import Layout, LayoutError, LayoutRegistry, version_in_force, versions_without_layout
from services.loader.catalogue import known_enti
from services.loader.load_rules import period_not_over
from services.runtime.coverage import coverage
from services.runtime.esiti import esiti, esiti_csv, esiti_csv_name
from services.runtime.read_models import instance_stream
from services.ts_gateway import payment_year
from services.ts_gateway.overlap import sent_already, warning_it
from services.ts_gateway.sealing import PUBLIC_KEY_FILE, SealError, key_id, sealed_key_id

log = structlog.get_logger("console")


# ---------------------------------------------------------------- an instance's actions
# What an operator may ask of an instance, each by the event that the state machine (contracts/states.py) must allow
# in the instance's state: Formatta (the formatter's start), Invia a Sistema TS (only a flow type Sistema TS takes),
# Cancella. The instance page's Azioni and the list's Azioni column both show `instance_actions`.
_ACTION_EVENTS = (("format", flows.TYPE_OF[flows.FormattingStarted]),
                  ("send", flows.TYPE_OF[flows.TsSubmissionRequested]),
                  ("delete", flows.TYPE_OF[flows.InstanceDeleted]))


@functools.lru_cache(maxsize=1024)
def _state_actions(flow_type: str, state: str) -> tuple[str, ...]:
    """The actions the state machine allows on an instance of `flow_type` in `state` ("format", "send", "delete"),
    whoever asks; none in a state this console does not know. Cached: a list page asks it for each row's shape."""
    try:
        current = InstanceState(state)
    except ValueError:
        return ()
    allowed = []
    for action, event in _ACTION_EVENTS:
        if action == "send" and flow_type not in SENDABLE_FLOW_TYPES:
            continue
        with contextlib.suppress(IllegalTransition):
            target_of(event, {}, current)
            allowed.append(action)
    return tuple(allowed)


def instance_actions(principal: auth.Principal, ente: str, flow_type: str, state: str) -> tuple[str, ...]:
    """The actions `principal` may take on an instance of `ente`, `flow_type`, in `state`: the one decision the
    instance page and the list's Azioni column show. Only who may act on the ente (ACT_ON_INSTANCE: an operator of
    it) has any, then those its state allows (`_state_actions`); the routes check the same again when asked."""
    if not may(principal, ACT_ON_INSTANCE, ente):
        return ()
    return _state_actions(flow_type, state)


# ---------------------------------------------------------------- instances
@dataclass
class Search:
    tipo: str | None = None
    ente: str | None = None
    dal: str | None = None
    al: str | None = None
    stato: str | None = None
    prima: int | None = None


def parse_search(params: Any) -> tuple[Search, list[str]]:
    q, errors = Search(), []
    q.tipo = params.get("tipo") or None
    if q.tipo and q.tipo not in FlowType.__members__.values():
        errors.append(f"Tipo di flusso {q.tipo!r} sconosciuto.")
        q.tipo = None
    q.ente = (params.get("ente") or "").strip().upper() or None
    for name, label in (("dal", "Creata dal"), ("al", "Creata al")):
        value = params.get(name) or None
        if value:
            try:
                date.fromisoformat(value)
            except ValueError:
                errors.append(f"{label}: data non valida ({value!r}), attesa AAAA-MM-GG.")
                value = None
        setattr(q, name, value)
    q.stato = params.get("stato") or None
    if q.stato and q.stato not in STATE_LABELS:
        errors.append(f"Stato {q.stato!r} sconosciuto.")
        q.stato = None
    prima = params.get("prima")
    q.prima = int(prima) if prima and prima.isdigit() else None
    return q, errors


# The search's filters, in this order, each in the statement only when it is set (`_filters`).
_FILTERS = (("tipo", "flow_type = ${}"), ("ente", "ente = ${}"),
            ("dal", f"created_at >= {italian_day_start_sql('${}::date')}"),  # Italian days, as the page shows times
            ("al", f"created_at < {italian_day_start_sql('${}::date + 1')}"), ("stato", "state = ${}"),
            ("prima", "instance < ${}"))


def _filters(q: Search) -> tuple[tuple[str, ...], list[Any]]:
    """The names of the search's filters that are set, and their values ($1, $2, ... in `_FILTERS` order). Only
    what is asked goes into the statement, so each combination is its own prepared statement, for which PostgreSQL
    keeps one generic plan: no planning per execution (the statement with the session was planned anew each time,
    ~0.15 ms, about as long as it ran). With the former `($n IS NULL OR ...)` clauses a generic plan looked costlier
    than a custom one (and could not use the keyset `instance < $n` on the index), so every execution was planned."""
    names: list[str] = []
    values: list[Any] = []
    for name, _ in _FILTERS:
        value = getattr(q, name)
        if value is not None:
            names.append(name)
            values.append(date.fromisoformat(value) if name in ("dal", "al") else value)
    return tuple(names), values


def _list_sql(columns: str, names: tuple[str, ...], seen: str | None, limit: int) -> str:
    """A page of instances, newest first (keyset on instance): the filters `names` ($1, $2, ...), `seen` the clause
    that keeps the enti the principal sees (None: every ente); `limit` the page size (one more row than shown tells
    whether a next page exists)."""
    clauses = [clause.format(n + 1) for n, clause in enumerate(c for name, c in _FILTERS if name in names)]
    return (f"SELECT {columns} FROM instance_list WHERE {' AND '.join([*clauses, *([seen] if seen else [])]) or 'true'}"
            f" ORDER BY instance DESC LIMIT {int(limit)}")


def _enti_seen(principal: auth.Principal) -> list[str] | None:
    """The enti whose instances the principal sees; None for every ente (Principal.sees_ente in SQL)."""
    if principal.role in auth.EVERY_ENTE_ROLES:
        return None
    return sorted(principal.enti) if principal.role == "operator" else []


@functools.cache
def _list_for_principal_sql(columns: str, names: tuple[str, ...], every_ente: bool, limit: int) -> str:
    """The list for a principal already known: its enti the parameter after the filters' (none for every ente)."""
    return _list_sql(columns, names, None if every_ente else f"ente = ANY(${len(names) + 1}::text[])", limit)


# The list page shows these columns only (an instance's counts, summary, ... are the API's and the instance page's).
# Its three dates come as the page shows them, written by PostgreSQL: the creation time as Rome's wall-clock time
# (to_char of `AT TIME ZONE`), the period's days as dd/mm/yyyy. Three date objects a row decoded and formatted back
# to text in Python were most of the rows' Python time (bench/console.py).
# `has_esiti` and `has_files`: what the row's Azioni column offers to download (its esiti, its other files), kept
# on the row by the read model (services/runtime/read_models.py). Looked up in instance_files for each row, in the
# same statement (51 index probes), they made the list's statement half as slow again: p50 0.29 -> 0.43 ms alone on
# bench/console.py's 100,000 instances.
_LIST_PAGE_TYPES = [("instance", "bigint"), ("flow_type", "text"), ("ente", "text"), ("source_instance", "bigint"),
                    ("created_text", "text"), ("start_text", "text"), ("end_text", "text"), ("state", "text"),
                    ("has_esiti", "boolean"), ("has_files", "boolean")]
LIST_PAGE_COLUMNS = ("instance, flow_type, ente, source_instance, "
                     f"to_char(created_at AT TIME ZONE '{ROME.key}', 'DD/MM/YYYY HH24:MI') AS created_text, "
                     "to_char(period_start, 'DD/MM/YYYY') AS start_text, "
                     "to_char(period_end, 'DD/MM/YYYY') AS end_text, state, has_esiti, has_files")


@functools.cache
def _list_page_with_session_sql(names: tuple[str, ...]) -> str:
    """The page with the session lookup in one statement: the principal is read from the session (the parameter
    after the filters': the SHA-256 of its cookie) and the rows are filtered by what that principal sees
    (Principal.sees_ente). No row when the session is not live; else the principal's row (its page columns NULL),
    and one row per instance (its principal columns NULL: not decoded 51 times). What the principal sees is worked
    out once, with the session (`every_ente`, else the enti `seen`: an operator's own, none for other roles), not
    for each row the index walk reads (~260 for a page of an operator of 2 enti out of 10): the page's statement
    ~15 us faster (p50 274 -> 259 us, timed alone, alternated)."""
    every = ",".join(auth.EVERY_ENTE_ROLES)
    principal = ", ".join(column.split(".")[1] for column in auth.SESSION_COLUMNS)
    return f"""WITH who AS MATERIALIZED (SELECT *, role = ANY('{{{every}}}'::text[]) AS every_ente,
        CASE WHEN role = 'operator' THEN enti ELSE '{{}}'::text[] END AS seen
        FROM ({auth.session_sql(f"${len(names) + 1}")}) live)
    SELECT {principal}, {", ".join(f"NULL::{t} AS {c}" for c, t in _LIST_PAGE_TYPES)} FROM who
    UNION ALL
    SELECT {", ".join(["NULL"] * len(auth.SESSION_COLUMNS))}, page.* FROM who CROSS JOIN LATERAL ({_list_sql(
        LIST_PAGE_COLUMNS, names, "(who.every_ente OR ente = ANY(who.seen))", PAGE_SIZE + 1)}) page"""


async def _list_for_principal(pool: asyncpg.Pool, principal: auth.Principal, q: Search, columns: str,
                              limit: int) -> list[asyncpg.Record]:
    names, values = _filters(q)
    enti = _enti_seen(principal)
    sql = _list_for_principal_sql(columns, names, enti is None, limit)
    return await pool.fetch(sql, *values) if enti is None else await pool.fetch(sql, *values, enti)


async def search_instances(pool: asyncpg.Pool, principal: auth.Principal, q: Search,
                           limit: int = PAGE_SIZE) -> list[asyncpg.Record]:
    """A page of instances (every column), newest first, only of the enti the principal sees."""
    return await _list_for_principal(pool, principal, q, "*", limit)


async def list_page_rows(pool: asyncpg.Pool, principal: auth.Principal, q: Search) -> list[asyncpg.Record]:
    """The list page's rows for a principal already known: the page's SQL without the session (bench/console.py
    times it as the baseline of the page)."""
    return await _list_for_principal(pool, principal, q, LIST_PAGE_COLUMNS, PAGE_SIZE + 1)


def query_values(query_string: bytes) -> dict[str, str]:
    """The query string's values by name, as `request.query_params.get` reads them (Starlette's QueryParams: the
    string as latin-1, parse_qsl keeping blank values, the last value of a name kept), without the multidict and its
    two copies of every pair: the list page reads its search from it."""
    if not query_string:
        return {}
    return dict(urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))


async def _list_page_with_session(conn: asyncpg.Connection, token_sha256: bytes,
                                  request: Request) -> tuple[asyncpg.Record, Any] | None:
    q, errors = parse_search(query_values(request.scope["query_string"]))
    names, values = _filters(q)
    rows = await conn.fetch(_list_page_with_session_sql(names), *values, token_sha256)
    # By position, not by name (a lookup in the record's mapping per row).
    who = next((r for r in rows if r[_NAME_COLUMN] is not None), None)
    if who is None:
        return None
    return who, (q, errors, [r for r in rows if r[_INSTANCE_COLUMN] is not None])


_TEXT_HTML: dict[str, str] = {}  # a list's few distinct enti, escaped once (bounded below)
_FLOW_TYPE_HTML = {value: html.escape(label) for value, label in FLOW_TYPE_LABELS.items()}


def _escaped(text: str) -> str:
    found = _TEXT_HTML.get(text)
    if found is None:
        found = html.escape(text)
        if len(_TEXT_HTML) < 4096:
            _TEXT_HTML[text] = found
    return found


_PAGE_COLUMNS = -len(_LIST_PAGE_TYPES)  # a row of the page's statement ends with the page's columns
_INSTANCE_COLUMN = _PAGE_COLUMNS  # the first of them, the instance's number
_NAME_COLUMN = auth.SESSION_COLUMNS.index("u.name")  # the principal's name, first of the principal's columns


# The Azioni cell's items, in this order: what the row's state lets the principal do, then what it may download, then
# Cancella. `{n}` is where the row's instance number goes. Each names its instance in visually hidden text, as the
# instance page's file links name their file: a screen reader lists a page's links and buttons by their names, and
# fifty "Formatta" would be one. Formatta is a button of the page's one form `azioni` (instances.html: the session's
# CSRF token, once a page) posted to the button's own formaction, as the instance page's form posts: so a cell is the
# same for every principal, and the token is not repeated in every row. Cancella leads to the instance page's form
# (`#cancella`), which asks for the reason a deletion records. ASCII only (&hellip;, not the character): one character
# beyond Latin-1 makes Python hold the whole page as 2-byte text, slower to put together and to encode (the rows of a
# page, put in it and encoded: 105 us with "…" in them, 56 us without, warm).
_ACTION_ITEMS = {
    "format": ('<button type="submit" form="azioni" formaction="/istanze/{n}/formatta" class="btn btn-primary btn-xs">'
               "Formatta<span class=\"visually-hidden\"> l'istanza {n}</span></button>"),
    "send": ('<a class="btn btn-outline-primary btn-xs" href="/istanze/{n}/invia-ts">Invia a Sistema TS'
             "<span class=\"visually-hidden\"> l'istanza {n}</span></a>"),
    "files": ('<a href="/istanze/{n}/file.zip">Scarica i file (zip)'
              "<span class=\"visually-hidden\"> dell'istanza {n}</span></a>"),
    "esito": ("<a href=\"/istanze/{n}/feedback.csv\">Scarica l'esito (FeedBack)"
              "<span class=\"visually-hidden\"> dell'istanza {n}</span></a>"),
    "delete": ('<a href="/istanze/{n}#cancella">Cancella&hellip;'
               "<span class=\"visually-hidden\"> l'istanza {n}</span></a>"),
}


@functools.lru_cache(maxsize=256)
def _actions_cell(actions: tuple[str, ...], has_esiti: bool, has_files: bool) -> tuple[str, ...]:
    """The Azioni cell of a row on which the principal may take `actions` (`instance_actions`) and whose instance has
    esiti and other files or not (LIST_PAGE_COLUMNS), as the pieces the row's instance number joins (`str.join`: one
    call puts it in every place); empty when there is nothing to do nor to download. A few shapes, each made once."""
    wanted = [a for a in ("format", "send") if a in actions]
    wanted += [*(["files"] if has_files else []), *(["esito"] if has_esiti else []),
               *(["delete"] if "delete" in actions else [])]
    return tuple(f'<td class="azioni">{" ".join(_ACTION_ITEMS[a] for a in wanted)}</td>'.split("{n}"))


# Each principal's Azioni cells by the shape of a row (ente, flow type, state, has_esiti, has_files; `_list_rows`):
# `instance_actions` is a pure function of the principal and those, so they hold as long as the principal does, and a
# change of its role, enti or session is another key (what `_PIECES` does for the page around the rows). Without it,
# every page worked out its ~10 shapes again (the rows 53 -> 48 us, warm). Bounded: emptied when full (a shape holds
# a flow type and a state as the table has them).
_CELLS: dict[auth.Principal, dict[tuple[str, str, str, bool, bool], tuple[str, ...]]] = {}
_CELLS_MAX, _SHAPES_MAX = 512, 1024


def _list_rows(principal: auth.Principal, rows: list[asyncpg.Record]) -> Markup:
    """The list's table rows as one piece of HTML, every text cell escaped (html.escape: quotes too). Built
    here rather than in a Jinja loop: with 50 rows the loop's ~900 output pieces (and Jinja's attribute lookup
    on a Record, which fails over to an item lookup through an exception per cell) were most of the page's
    time (bench/console.py); markupsafe's escape and Markup formatting cost 3x html.escape and plain str.
    The few distinct flow types and enti are escaped once; the dates come as text from PostgreSQL
    (LIST_PAGE_COLUMNS), made of digits and '/', ':' and ' ' only. A row's page columns are its last ten
    (`_LIST_PAGE_TYPES`), sliced off and unpacked at once: a third less than a lookup by name per cell, and a
    fifth less than a starred unpacking (which builds a list of the principal's five columns for every row).
    The Azioni cell is decided once per shape of row (ente, flow type, state, files: a handful in 50 rows) for the
    principal (`_CELLS`) by `instance_actions`, the instance page's own decision, and is then the shape's pieces
    joined by the row's number (`_actions_cell`)."""
    out = []
    cells = _CELLS.get(principal)
    if cells is None or len(cells) >= _SHAPES_MAX:
        if len(_CELLS) >= _CELLS_MAX:
            _CELLS.clear()
        cells = _CELLS[principal] = {}
    badges, texts, flow_types = BADGE_HTML, _TEXT_HTML, _FLOW_TYPE_HTML
    for row in rows:
        n, flow_type, ente, source, created, start, end, state, has_esiti, has_files = row[_PAGE_COLUMNS:]
        number = str(n)
        cell = cells.get(shape := (ente, flow_type, state, has_esiti, has_files))
        if cell is None:
            cell = cells[shape] = _actions_cell(instance_actions(principal, ente, flow_type, state), has_esiti,
                                                has_files)
        out.append(f'<tr><td>{flow_types.get(flow_type) or _escaped(flow_type)}</td>'
                   f'<td>{texts.get(ente) or _escaped(ente)}'
                   f'</td><td><a href="/istanze/{number}">{number}</a></td><td>{"" if source is None else source}</td>'
                   f"<td>{created}</td><td>{start}</td><td>{end}</td>"
                   f"<td>{badges.get(state) or badge(state)}</td>{number.join(cell)}</tr>\n")
    return Markup("".join(out))


def _enti_choices(principal: auth.Principal) -> tuple[str, ...]:
    """The list's Ente filter: an operator's own enti; every ente the platform knows for the roles that see all."""
    return tuple(sorted(principal.enti if principal.role == "operator" else known_enti()))


@functools.cache
def _options(values: tuple[str, ...], labels: tuple[str, ...], selected: str | None) -> Markup:
    """A select's options, `selected` marked: once per select and choice (`selected` is one of `values` or None, never
    a value as a user typed it: the cache stays as small as the lists); a Jinja loop over them was half the template."""
    return Markup("".join(f'<option value="{html.escape(v)}"{" selected" if v == selected else ""}>{html.escape(label)}'
                          "</option>" for v, label in zip(values, labels, strict=True)))


def _ente_options(choices: tuple[str, ...], asked: str | None) -> Markup:
    """The Ente filter's options. The asked ente is free text from the query string (the statement filters by it as
    typed: one not among the choices finds nothing); it marks an option only when it is one of them, and only then is
    it part of _options' cache key: any other value shows the same options as no value, and a cache keyed by it would
    grow by one entry at every new `?ente=` a signed-in user sends."""
    return _options(choices, choices, asked if asked in choices else None)


def _instances_html(ctx: Ctx, q: Search, errors: list[str], rows: Markup | str, count: int | str,
                    next_url: str | None, first_url: str) -> HTMLResponse:
    """The list page rendered by its template (base.html, instances.html)."""
    return page(ctx, "instances.html", "Istanze di flusso", active="/istanze", rows=rows, count=count, q=q,
                errors=errors, next_url=next_url, first_url=first_url,
                tipo_options=_options(FLOW_TYPE_VALUES, FLOW_TYPE_LABEL_VALUES, q.tipo),
                ente_options=_ente_options(_enti_choices(ctx.principal), q.ente),
                stato_options=_options(STATE_VALUES, STATE_LABEL_VALUES, q.stato))


# The list page's HTML around what changes from page to page of the same search (its count, rows and next page's
# `prima`), by everything else the template reads: the principal as read from its session at this request (name,
# role, enti, CSRF token), the search, its errors, whether a next page exists, the assets' links. The template ran
# at every page (~40-50 us of the console's CPU a page on the bench's machine, its context and ~20 expressions, for
# the same text around the rows). A pure function of its key: nothing in it can outlive a change of the session, the
# user, the search or the assets (each is part of the key, read afresh at every request); no row is kept. Bounded:
# emptied when full (a key holds the search as typed).
_PIECES: dict[tuple[Any, ...], tuple[str, ...]] = {}
_PIECES_MAX = 512
_COUNT_MARK, _ROWS_MARK, _NEXT_MARK = "\ue000", "\ue001", "\ue002"  # private-use characters: no page has them
_MARKS = re.compile("([\ue000-\ue002])")


def _list_page(ctx: Ctx, q: Search, errors: list[str], rows: list[asyncpg.Record], more: bool,
               first_url: str, next_prefix: str) -> HTMLResponse:
    """The list page: `rows` (at least one) placed in the template's HTML for this principal and search, rendered
    once with marks where the count, the rows and the next page's `prima` go (`_PIECES`)."""
    principal = ctx.principal
    key = (principal.name, principal.role, principal.enti, principal.csrf_token, q.tipo, q.ente, q.dal, q.al, q.stato,
           bool(q.prima), tuple(errors), first_url, more, ctx.request.app.state.assets.head)
    pieces = _PIECES.get(key)
    if pieces is None:
        marked = bytes(_instances_html(ctx, q, errors, Markup(_ROWS_MARK), _COUNT_MARK,
                                       f"{next_prefix}{_NEXT_MARK}" if more else None, first_url).body).decode()
        split = _MARKS.split(marked)
        if split[1::2] != [_COUNT_MARK, _ROWS_MARK, *([_NEXT_MARK] if more else [])]:  # a mark from elsewhere
            next_url = f"{next_prefix}{int(rows[-1][_INSTANCE_COLUMN])}" if more else None
            return _instances_html(ctx, q, errors, _list_rows(ctx.principal, rows), len(rows), next_url, first_url)
        if len(_PIECES) >= _PIECES_MAX:
            _PIECES.clear()
        pieces = _PIECES[key] = tuple(split[0::2])
    if more:
        before, caption, table, after = pieces
        body = (f"{before}{len(rows)}{caption}{_list_rows(principal, rows)}{table}{int(rows[-1][_INSTANCE_COLUMN])}"
                f"{after}")
    else:
        before, caption, after = pieces
        body = f"{before}{len(rows)}{caption}{_list_rows(principal, rows)}{after}"
    return HTMLResponse(body)


@route(pages, "GET", "/istanze", LIST_INSTANCES, "page", with_session=_list_page_with_session)
async def instances_page(ctx: Ctx) -> Response:
    q, errors, rows = ctx.found
    more, rows = len(rows) > PAGE_SIZE, rows[:PAGE_SIZE]
    params = {k: v for k, v in vars(q).items() if v is not None and k != "prima"}
    first_url = "/istanze?" + urllib.parse.urlencode(params)
    next_prefix = f"{first_url}{'&' if params else ''}prima="
    if rows:
        return _list_page(ctx, q, errors, rows, more, first_url, next_prefix)
    return _instances_html(ctx, q, errors, Markup(""), 0, None, first_url)


def _default_period() -> tuple[str, str]:
    today = italian_today()
    last = today.replace(day=1).toordinal() - 1
    end = date.fromordinal(last)
    return end.replace(day=1).isoformat(), end.isoformat()


@route(pages, "GET", "/istanze/nuova", REQUEST_LOAD, "page")
async def new_load_form(ctx: Ctx) -> Response:
    start, end = _default_period()
    # `richiesta`: the load's request_id, drawn with the form, so the same form sent twice (a double click, the
    # browser's resubmission on F5) is one request, and the loader's idempotency makes one instance of it.
    form = {"tipo": "FLUSSO_C", "ente": min(ctx.principal.enti), "dal": start, "al": end, "pianificata": "",
            "richiesta": str(uuid.uuid4())}
    return page(ctx, "new_load.html", "Nuovo caricamento", active="/istanze/nuova", form=form, errors={},
                flow_types=FLOW_TYPE_CHOICES)


def _load_errors(principal: auth.Principal, form: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    if form["tipo"] not in FlowType.__members__.values():
        errors["tipo"] = f"Tipo di flusso {form['tipo']!r} sconosciuto."
    if form["ente"] not in principal.enti:
        own = ", ".join(sorted(principal.enti))
        errors["ente"] = f"Ente {form['ente']!r}: può scegliere solo tra i suoi enti ({own})."
    for name, label in (("dal", "Inizio periodo di riferimento"), ("al", "Fine periodo di riferimento")):
        try:
            values[name] = date.fromisoformat(form[name])
        except ValueError:
            errors[name] = f"{label}: data non valida ({form[name]!r}), attesa AAAA-MM-GG."
    if "dal" in values and "al" in values and values["al"] < values["dal"]:
        errors["al"] = "La fine del periodo viene prima del suo inizio."
    values["pianificata"] = None
    if form["pianificata"]:
        try:
            values["pianificata"] = datetime.fromisoformat(form["pianificata"]).replace(tzinfo=ROME)
        except ValueError:
            errors["pianificata"] = (f"Avvio pianificato non valido ({form['pianificata']!r}), atteso "
                                     "AAAA-MM-GG OO:MM.")
    # The loader's own rule (it refuses such a load too): a period not over when the load would start, now or at
    # its Avvio pianificato. Said beside Fine periodo di riferimento; the same month scheduled after its end is sent.
    if not errors and (not_over := period_not_over(values["al"], values["pianificata"])) is not None:
        errors["al"] = not_over.italian()
    return errors, values


_FIELD_OF = {"flow_type": "tipo", "ente": "ente", "period": "al", "start": "dal", "end": "al",
             "scheduled_at": "pianificata"}


def form_request_id(form_id: uuid.UUID, command: flows.LoadRequested) -> uuid.UUID:
    """The request_id of a load asked by the Nuovo caricamento form whose page drew `form_id`: the same form sent
    again with the same load (a double click, F5 on the answer) is the same request, which the loader makes one
    instance of; the same form sent again for another load (Back, another month or ente, sent) is another request.
    The form's id alone would make the second load a duplicate of the first, and the operator would be led to the
    first instance with no word that the month asked for was never loaded."""
    load = command.model_dump_json(exclude={"request_id"})
    return uuid.uuid5(form_id, load)

@route(pages, "POST", "/istanze/nuova", REQUEST_LOAD, "action")
async def new_load(ctx: Ctx) -> Response:
    request = ctx.request
    console = console_of(request)
    raw = await request.form()
    form = {k: str(raw.get(k) or "").strip() for k in ("tipo", "ente", "dal", "al", "pianificata", "richiesta")}
    try:
        same_request: uuid.UUID | None = uuid.UUID(form["richiesta"])
    except ValueError:  # a form of an older page (none): a request of its own, as before
        same_request = None
    form["richiesta"] = str(same_request or uuid.uuid4())  # kept when the form comes back with errors
    errors, values = _load_errors(ctx.principal, form)
    request_id = None
    if not errors:
        try:
            command = load_request(form["tipo"], form["ente"], values["dal"], values["al"],
                                   version_in_force(form["tipo"], values["dal"]),
                                   values["pianificata"], ctx.principal.name)
            if same_request is not None:
                command = command.model_copy(update={"request_id": form_request_id(same_request, command)})
        except pydantic.ValidationError as exc:
            for problem in exc.errors():
                field = next((_FIELD_OF[str(p)] for p in reversed(problem["loc"]) if str(p) in _FIELD_OF), "tipo")
                errors[field] = problem["msg"]
        else:
            await send_load_request(console.settings.kafka_bootstrap, command)
            request_id = command.request_id
    if errors:
        return page(ctx, "new_load.html", "Nuovo caricamento", status=422, active="/istanze/nuova", form=form,
                    errors=errors, flow_types=FLOW_TYPE_CHOICES)
    deadline = time.monotonic() + console.settings.console_load_wait_s
    while time.monotonic() < deadline:
        instance = await console.pool.fetchval("SELECT instance FROM instance_list WHERE request_id = $1", request_id)
        if instance is not None:
            return RedirectResponse(f"/istanze/{instance}", status_code=303)
        await asyncio.sleep(0.1)
    return page(ctx, "message.html", "Richiesta inviata", status=202, level="info", back="/istanze",
                back_label="Vai all'elenco delle istanze",
                message=f"La richiesta {request_id} è stata inviata; il caricatore non l'ha ancora presa in carico. "
                        "L'istanza comparirà nell'elenco non appena sarà creata: aggiorni l'elenco tra qualche "
                        "istante.")


async def _instance_view(ctx: Ctx) -> dict[str, Any]:
    console = console_of(ctx.request)
    assert ctx.row is not None
    instance = int(ctx.row["instance"])
    history = await console.store.read_stream(instance_stream(instance))
    breaks = await console.store.verify_stream(instance_stream(instance))
    files = await console.pool.fetch(
        "SELECT * FROM instance_files WHERE instance = $1 ORDER BY kind = 'feedback', name", instance)
    actions = instance_actions(ctx.principal, ctx.row["ente"], ctx.row["flow_type"], ctx.row["state"])
    chain_breaks = [chain_break_text(b.link, b.version, b.expected, b.found) for b in breaks]
    return {"row": ctx.row, "history": history, "chain_breaks": chain_breaks, "files": files, "actions": actions}


@route(pages, "GET", "/istanze/{instance}", READ_INSTANCE, "page")
async def instance_page(ctx: Ctx) -> Response:
    assert ctx.row is not None
    return page(ctx, "instance.html", f"Istanza {ctx.row['instance']}", active="/istanze", **await _instance_view(ctx))


@route(pages, "GET", "/istanze/{instance}/stato", READ_INSTANCE, "page")
async def instance_fragment(ctx: Ctx) -> Response:
    request = ctx.request
    return templates.TemplateResponse(request, "_instance_body.html",
                                      {"principal": ctx.principal, **await _instance_view(ctx)})


# An open event stream's keep-alive period, and how often it checks again that its session still may read the
# instance (the tests shorten it, or make it an hour to show that a notice, not this check, ended a stream). A
# logout, a disable, a new password or a lost ente wakes the stream's check at once (access_watch.py): this period
# is the safety net for a notice that never came.
STREAM_CHECK_S = 15.0
STREAM_ENDED = "event: ended\ndata: {}\n\n"


async def _stream_still_allowed(console: Console, request: Request, ente: str, why: str) -> bool:
    """Whether the session of an open event stream still reads the instance of `ente`: not logged out, expired or
    disabled, and still bound to the ente. Every other request checks its session in the database; a stream lives
    for hours, so it does so at each keep-alive, and at once when access_watch.py announces that its session or
    user changed (`why`: "keep-alive" or "woken", for the log). When the check cannot be made (PostgreSQL down)
    the stream ends too: the page reconnects through the guard, which answers 503 until the database is back
    (console.js then tries again, backed off)."""
    try:
        principal = await request_principal(console, request)
    except Exception as exc:
        log.info("console.stream_ended", path=request.url.path, checked_on=why,
                 reason=f"session not checked: {type(exc).__name__}")
        return False
    if principal is None or not may(principal, READ_INSTANCE, ente):
        log.info("console.stream_ended", path=request.url.path, checked_on=why,
                 reason="session no longer valid for this instance")
        return False
    return True


@route(pages, "GET", "/istanze/{instance}/eventi", READ_INSTANCE, "stream")
async def instance_events(ctx: Ctx) -> Response:
    """The instance's changes as server-sent events: `ready` once subscribed, `change` per event (its type only),
    `ended` before the server ends a stream whose session no longer reads the instance (console.js then asks why,
    without waiting for the browser's own reconnection, and says so)."""
    request = ctx.request
    assert ctx.row is not None
    instance, ente = int(ctx.row["instance"]), str(ctx.row["ente"])
    console = console_of(request)
    feed = console.feed
    token = request.cookies.get(console.cookie_name, "")  # the guard read the session from it

    async def stream() -> AsyncIterator[str]:
        queue = feed.watch(instance)
        watched = console.access.watch(auth.token_sha256(token), ctx.principal.name)
        watched.recheck.set()  # a logout between the guard's check and this watch was announced to nobody
        try:
            # `ready`: the page refetches once, covering a change between its render and this subscription.
            yield "event: ready\ndata: {}\n\n"
            while not await request.is_disconnected():
                event_type = await next_change(queue, watched.recheck, STREAM_CHECK_S)
                if event_type is None:  # the keep-alive, or a notice that the session or its user changed
                    why = "woken" if watched.recheck.is_set() else "keep-alive"
                    watched.recheck.clear()  # before the check: a notice during it asks for another one
                    if not await _stream_still_allowed(console, request, ente, why):
                        yield STREAM_ENDED
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: change\ndata: {json.dumps({'event': event_type})}\n\n"
        finally:
            console.access.unwatch(watched)
            feed.unwatch(instance, queue)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def instance_file(ctx: Ctx, name: str) -> asyncpg.Record:
    assert ctx.row is not None
    if "\x00" in name:  # PostgreSQL text cannot hold it, so no file has it
        raise HTTPException(404)
    row = await console_of(ctx.request).pool.fetchrow(
        "SELECT * FROM instance_files WHERE instance = $1 AND name = $2", ctx.row["instance"], name)
    if row is None:  # the name is only ever a key of this table, never a path
        raise HTTPException(404)
    return row


def attachment_headers(name: str) -> dict[str, str]:
    ascii_name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "file"
    return {"Content-Disposition": f"attachment; filename=\"{ascii_name}\"; "
                                   f"filename*=UTF-8''{urllib.parse.quote(name, safe='')}"}


@route(pages, "GET", "/istanze/{instance}/file/{name}", READ_INSTANCE, "page")
async def file_view(ctx: Ctx, name: str, da: int = 0) -> Response:
    request = ctx.request
    assert ctx.row is not None
    console = console_of(request)
    f = await instance_file(ctx, name)
    offset = max(da, 0)
    path, kind = console.files.path(f["sha256"]), f["kind"]
    flow_type, version = ctx.row["flow_type"], ctx.row["version"]
    base = f"/istanze/{ctx.row['instance']}/file/{urllib.parse.quote(name, safe='')}"
    try:
        caption, columns, rows = file_rows(path, kind, flow_type, version, FILE_PAGE, offset)
    except UserError as exc:
        if offset and _has_records_from(path, kind, flow_type, version, 0):
            return _past_the_end(ctx, name, name, offset, base)
        # file_rows' English is the CLI's: the page says it in Italian and offers the file to download.
        log.info("console.file_not_a_table", file=name, kind=kind, reason=str(exc))
        why = ("è la ricevuta PDF di Sistema TS, non una tabella" if kind == "ts-receipt"
               else "non si può mostrare come tabella: è vuoto, o il suo tipo non ha un tracciato noto alla console")
        return page(ctx, "message.html", name, status=409, active="/istanze", level="warning",
                    message=f"Il file {name} {why}. Lo scarichi per leggerlo.", back=base + "/scarica",
                    back_label="Scarica il file")
    if not rows and offset:  # a 730 zip or Sistema TS's CSV past its end: no error of file_rows, an empty page
        return _past_the_end(ctx, name, name, offset, base)
    await record_access(console.store, ctx.principal, "file-view", int(ctx.row["instance"]), ctx.address,
                        {"file": name, "from": offset, "records": len(rows)})
    more = len(rows) == FILE_PAGE and _has_records_from(path, kind, flow_type, version, offset + FILE_PAGE)
    return page(ctx, "table_view.html", f"{name}", active="/istanze", instance=ctx.row["instance"], caption=caption,
                columns=columns, rows=rows, download=base + "/scarica",
                prev_url=f"{base}?da={max(offset - FILE_PAGE, 0)}" if offset else None,
                next_url=f"{base}?da={offset + FILE_PAGE}" if more else None)


def _has_records_from(path: Path, kind: str, flow_type: str, version: str, offset: int) -> bool:
    """Whether the file has a record at `offset` (0: its first): a page offers "Record successivi" only then."""
    try:
        return bool(file_rows(path, kind, flow_type, version, 1, offset)[2])
    except UserError:
        return False


def _past_the_end(ctx: Ctx, title: str, name: str, offset: int, first_page: str) -> Response:
    """A page of a file asked from beyond its last record (an old link, a changed ?da=): say so, and lead back to
    its first records."""
    return page(ctx, "message.html", title, status=404, active="/istanze", level="warning", back=first_page,
                back_label="Torna ai primi record",
                message=f"Il file {name} non ha record dalla posizione {italian_number(offset + 1)}: è più corto.")


@route(pages, "GET", "/istanze/{instance}/file/{name}/scarica", READ_INSTANCE, "download")
async def file_download(ctx: Ctx, name: str) -> Response:
    request = ctx.request
    assert ctx.row is not None
    console = console_of(request)
    f = await instance_file(ctx, name)
    await record_access(console.store, ctx.principal, "file-download", int(ctx.row["instance"]), ctx.address,
                        {"file": name})
    return FileResponse(console.files.path(f["sha256"]), media_type=f["media_type"], headers=attachment_headers(name))


@route(pages, "GET", "/istanze/{instance}/file.zip", READ_INSTANCE, "download")
async def files_zip(ctx: Ctx) -> Response:
    request = ctx.request
    assert ctx.row is not None
    console = console_of(request)
    instance = int(ctx.row["instance"])
    files = await console.pool.fetch("SELECT * FROM instance_files WHERE instance = $1 ORDER BY name", instance)
    if not files:
        raise HTTPException(404)
    await record_access(console.store, ctx.principal, "files-zip", instance, ctx.address,
                        {"files": [f["name"] for f in files]})
    spool = tempfile.NamedTemporaryFile(prefix="console-zip-", suffix=".zip", delete=False)
    with spool, zipfile.ZipFile(spool, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in files:
            archive.write(console.files.path(f["sha256"]), arcname=Path(f["name"]).name)
    return FileResponse(spool.name, media_type="application/zip", headers=attachment_headers(f"istanza-{instance}.zip"),
                        background=BackgroundTask(Path(spool.name).unlink, missing_ok=True))


async def feedback_files(ctx: Ctx) -> list[asyncpg.Record]:
    """The instance's esiti, as `flows feedback` lists them too (services/runtime/esiti.py)."""
    assert ctx.row is not None
    return await esiti(console_of(ctx.request).pool, int(ctx.row["instance"]))


def all_esiti_response(console: Console, instance: int, files: list[asyncpg.Record]) -> Response:
    """Every esito of the instance in one CSV (esiti.esiti_csv: one esito is its file as is)."""
    body = esiti_csv([(f["name"], console.files.path(f["sha256"])) for f in files])
    name = esiti_csv_name(instance, [f["name"] for f in files])
    return StreamingResponse(body, media_type="text/csv", headers=attachment_headers(name))


@route(pages, "GET", "/istanze/{instance}/feedback", READ_INSTANCE, "page")
async def feedback_page(ctx: Ctx, da: int = 0, file: str | None = None) -> Response:
    request = ctx.request
    assert ctx.row is not None
    console = console_of(request)
    files = await feedback_files(ctx)
    if not files:
        return page(ctx, "message.html", f"Esito dell'istanza {ctx.row['instance']}", level="success",
                    back=f"/istanze/{ctx.row['instance']}", back_label=f"Torna all'istanza {ctx.row['instance']}",
                    message="Nessun problema: l'istanza non ha esiti da leggere.")
    # An instance can have several: the load's feedback and Sistema TS's errors of each part of a 730 (`file` names
    # the one to read; the instance page links each). Only the first was ever shown, whichever link was followed.
    f = next((x for x in files if x["name"] == file), None) if file else files[0]
    if f is None:
        raise HTTPException(404)
    offset = max(da, 0)
    path, kind = console.files.path(f["sha256"]), f["kind"]
    flow_type, version = ctx.row["flow_type"], ctx.row["version"]
    instance = ctx.row["instance"]
    quoted = urllib.parse.quote(f["name"], safe="")
    base = f"/istanze/{instance}/feedback" + (f"?file={quoted}&" if file else "?")  # + da=N
    title = f"Esito dell'istanza {instance}"
    caption, columns, rows = file_rows(path, kind, flow_type, version, FILE_PAGE, offset)
    if not rows and offset:
        return _past_the_end(ctx, title, f["name"], offset, base.rstrip("?&"))
    await record_access(console.store, ctx.principal, "feedback-view", int(instance), ctx.address,
                        {"file": f["name"], "from": offset, "records": len(rows)})
    more = len(rows) == FILE_PAGE and _has_records_from(path, kind, flow_type, version, offset + FILE_PAGE)
    # 'Scarica il file' is the esito shown; with several, 'Scarica tutti gli esiti' is feedback.csv (one esito:
    # feedback.csv is that file, and the one link says so).
    several = len(files) > 1
    download = (f"/istanze/{instance}/file/{quoted}/scarica" if file or several
                else f"/istanze/{instance}/feedback.csv")
    return page(ctx, "table_view.html", title, active="/istanze",
                instance=instance, caption=f"{f['name']}: {caption}", columns=columns, rows=rows,
                download=download, download_all=f"/istanze/{instance}/feedback.csv" if several else None,
                esiti_count=len(files), prev_url=f"{base}da={max(offset - FILE_PAGE, 0)}" if offset else None,
                next_url=f"{base}da={offset + FILE_PAGE}" if more else None)


@route(pages, "GET", "/istanze/{instance}/feedback.csv", READ_INSTANCE, "download")
async def feedback_csv(ctx: Ctx) -> Response:
    request = ctx.request
    assert ctx.row is not None
    console = console_of(request)
    files = await feedback_files(ctx)
    if not files:
        raise HTTPException(404)
    # Every esito the pages list (the first alone was given: a 730's TS errors were never in it)
    await record_access(console.store, ctx.principal, "feedback-download", int(ctx.row["instance"]), ctx.address,
                        {"file": ", ".join(f["name"] for f in files)})
    return all_esiti_response(console, int(ctx.row["instance"]), files)


@route(pages, "POST", "/istanze/{instance}/formatta", ACT_ON_INSTANCE, "action")
async def format_action(ctx: Ctx) -> Response:
    request = ctx.request
    assert ctx.row is not None
    try:
        console = console_of(request)
        await send_format_request(console.settings.kafka_bootstrap, console.pool, ctx.row, ctx.principal.name)
    except UserError as exc:
        raise HTTPException(409, _not_now(ctx.row, "non si può formattare")) from exc
    return RedirectResponse(f"/istanze/{ctx.row['instance']}", status_code=303)


@route(pages, "POST", "/istanze/{instance}/cancella", ACT_ON_INSTANCE, "action")
async def delete_action(ctx: Ctx) -> Response:
    request = ctx.request
    assert ctx.row is not None
    reason = str((await request.form()).get("motivo") or "").strip() or None
    try:
        await append_deletion(console_of(request).pool, ctx.row, ctx.principal.name, reason, source="/flows/console")
    except UserError as exc:
        raise HTTPException(409, _not_now(ctx.row, "non si può cancellare")) from exc
    return RedirectResponse(f"/istanze/{ctx.row['instance']}", status_code=303)


def _not_now(row: asyncpg.Record, refused: str) -> str:
    """An action the instance's state no longer allows (the page that offered it is older than the state): the state
    by its label, and where to see what can be done now."""
    state = STATE_LABELS.get(row["state"], row["state"])
    return (f"L'istanza {row['instance']} è nello stato «{state}»: {refused}. Ricarichi la pagina dell'istanza per "
            "vedere le azioni possibili ora.")


# ---------------------------------------------------------------- Scadenze
DEADLINE_LABELS = {"covered": ("Coperta", "bg-success"), "late": ("In ritardo", "bg-danger"),
                   "due-soon": ("Scade entro 7 giorni", "bg-warning text-dark"), "open": ("Aperta", "bg-secondary")}


@route(pages, "GET", "/scadenze", LIST_INSTANCES, "page")
async def deadlines_page(ctx: Ctx, mese: str | None = None) -> Response:
    today = italian_today()
    year, month = default_month(today)
    error = None
    if mese:
        try:
            year, month = (int(x) for x in mese.split("-"))
            date(year, month, 1)
        except ValueError:
            error, (year, month) = f"Mese {mese!r} non valido: atteso AAAA-MM.", default_month(today)
    rows: list[dict[str, Any]] = []
    items, problems = known_deadlines_for_month(year, month)
    # The data file's own English (which table to add, which key is wrong) is the operators': logged, and the page
    # says in Italian what is missing and whom to tell; the flows whose dates it has are shown all the same.
    for exc in problems:
        log.warning("console.deadline_data", month=f"{year:04d}-{month:02d}", error=str(exc))
    gaps = [_deadline_data_error(exc) for exc in problems]
    if items:
        enti = None if ctx.principal.role in ("ops", "auditor") else sorted(ctx.principal.enti)
        for ente, deadline, covering in await coverage(console_of(ctx.request).pool, items, None, enti):
            label, css = DEADLINE_LABELS[deadline_status(deadline, covering, today)]
            rows.append({"ente": ente, "d": deadline, "covering": covering, "label": label, "css": css})
        if gaps:
            gaps.append("Le scadenze degli altri flussi sono nella tabella.")
    return page(ctx, "deadlines.html", "Scadenze", active="/scadenze", rows=rows, mese=f"{year:04d}-{month:02d}",
                mese_detto=f"{MONTHS[month - 1]} {year}", error=error or " ".join(gaps) or None)


def _deadline_data_error(exc: DeadlineDataMissing | DeadlineDataInvalid) -> str:
    """What the Scadenze page cannot show, in Italian: the year and flow types whose due dates the data lacks or
    cannot read, and that the operations team adds them (deadlines change by law: never guessed)."""
    if isinstance(exc, DeadlineDataMissing):
        flows_named = ", ".join(FLOW_TYPE_LABELS.get(t, t) for t in exc.flow_types)
        return (f"Scadenze non disponibili: mancano le date di scadenza del {exc.year} per {flows_named}. Le scadenze "
                "cambiano per legge e non si ricavano da un altro anno: avvisi l'esercizio perché le aggiunga.")
    return (f"Scadenze non disponibili: le date di scadenza del {exc.year} per "
            f"{FLOW_TYPE_LABELS.get(exc.flow_type, exc.flow_type)} non sono leggibili. Avvisi l'esercizio.")


# The months as the caption says them ("Scadenze dei periodi che finiscono a novembre 2026"), not 2026-11.
MONTHS = ("gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno", "luglio", "agosto", "settembre", "ottobre",
          "novembre", "dicembre")


# ---------------------------------------------------------------- Tipi di flusso
# The Flow Manager's "Lista tipi di flusso" (seeds/000, Amministrazione: NOME, VERSIONE, DESCRIZIONE), from the
# platform's own data: the layouts' folder (services/formatter/layouts.py), the deadline rules
# (contracts/deadlines.py), labels.py's names, descriptions and destinations.
@dataclass(frozen=True)
class DeadlineRule:
    """A flow type's deadline rule for one data year, in words: `text`, and `dates` when the rule is a few dated
    periods (the ALPI TA calendar, the 730's year or halves), each "period: entro il due"; `missing`: the data has no
    readable rule for the year, and `text` says so."""

    text: str
    dates: tuple[str, ...] = ()
    missing: bool = False


def _months_between(before: date, after: date) -> int:
    return (after.year * 12 + after.month) - (before.year * 12 + before.month)


def deadline_rule(flow_type: str, year: int, rule_book: dict[str, Any] | None = None) -> DeadlineRule:
    """`flow_type`'s deadline rule for the data of `year`, as contracts/data/deadlines.toml gives it, in Italian. The
    dates are those the Scadenze page shows (deadlines_for_month: read and checked by the same code, moved past
    weekends and holidays); a year without a rule, or with one that cannot be read, is said, never guessed."""
    book = rule_book if rule_book is not None else deadline_rules()
    try:
        found = [d for month in range(1, 13) for d in deadlines_for_month(year, month, book, [flow_type])]
    except (DeadlineDataMissing, DeadlineDataInvalid) as exc:
        log.warning("console.deadline_data", year=year, flow_type=flow_type, error=str(exc))
        what = "mancano" if isinstance(exc, DeadlineDataMissing) else "non sono leggibili"
        return DeadlineRule(f"Le regole di scadenza per i dati del {year} {what}: avvisi l'esercizio.", missing=True)
    rule = book[flow_type]["years"][str(year)]
    kind = rule["kind"]  # deadlines_for_month refused any other kind than these four
    if kind == "monthly" and "calendar" not in rule:
        day, after = int(rule["day"]), int(rule.get("months_after", 1))
        month = "del mese successivo" if after == 1 else f"del {after}° mese successivo"
        shorter = " (l'ultimo del mese, se è più corto)" if day > 28 else ""
        return DeadlineRule(f"Mensile: entro il giorno {day}{shorter} {month}.")
    dates = tuple(f"{italian_date(d.period_start)} – {italian_date(d.period_end)}: entro il {italian_date(d.due)}"
                  for d in found)
    if kind == "monthly":  # a calendar of twelve due dates
        days = sorted({d.due.day for d in found})
        if all(_months_between(d.period_end, d.due) == 1 for d in found):
            when = f"il giorno {days[0]}" if len(days) == 1 else f"il giorno fissato, tra il {days[0]} e il {days[-1]}"
            return DeadlineRule(f"Mensile, secondo il calendario del {year}: entro {when} del mese successivo.")
        return DeadlineRule(f"Mensile, secondo il calendario del {year}:", dates)
    if kind == "calendar":
        return DeadlineRule(f"Per i periodi fissati dal calendario del {year}:", dates)
    return DeadlineRule("Semestrale:" if kind == "semester" else "Annuale:", dates)


@dataclass(frozen=True)
class FlowTypeRow:
    """One row of the Tipi di flusso page."""

    flow_type: str
    name: str
    description: str
    versions: tuple[str, ...]
    in_force: str  # the version a load of the current month takes
    with_layouts: bool  # its versions are layouts (contracts/layouts): each links to its fields
    files_lead: str
    files: tuple[tuple[str, str], ...]  # (the file's kind as the operators see it, what it holds)
    destination: str
    deadline: DeadlineRule


def flow_type_rows(today: date, registry: LayoutRegistry | None = None,
                   rule_book: dict[str, Any] | None = None) -> list[FlowTypeRow]:
    """Every flow type the platform handles (FlowType), with what the page says of it on `today` (Italy's): the
    layout versions of `registry` (the layouts' folder) and the one a load of the current month takes, as a load
    takes it (version_in_force); the files a formatting writes (one per record kind of the layout in force; the
    730's zips); its deadline rule for the data of the current year."""
    registry = registry or LayoutRegistry()
    available = registry.available()
    month_start = today.replace(day=1)  # a load of the current month
    rows = []
    for flow in FlowType:
        flow_type = flow.value
        versions = tuple(v for f, v in available if f == flow_type)
        in_force = version_in_force(flow_type, month_start, versions)
        files: tuple[tuple[str, str], ...] = ()
        if versions:
            try:
                kinds = registry.get(flow_type, in_force).kinds
            except LayoutError as exc:  # the file's own English is the operators': logged
                log.warning("console.layout_unusable", flow_type=flow_type, version=in_force, error=str(exc))
                lead = f"Tracciato {in_force} non leggibile: avvisi l'esercizio."
            else:
                lead = ("Un file di testo a larghezza fissa" if len(kinds) == 1 else
                        f"{len(kinds)} file di testo a larghezza fissa, uno per tipo di record")
                files = tuple((kind, FILE_CONTENTS.get(kind, "")) for kind in kinds)
        else:
            lead, kinds = FILES_WITHOUT_LAYOUT.get(flow_type, ("—", ()))
            files = tuple((FILE_KIND_LABELS.get(kind, kind), FILE_CONTENTS.get(kind, "")) for kind in kinds)
        rows.append(FlowTypeRow(
            flow_type, FLOW_TYPE_LABELS.get(flow_type, flow_type), FLOW_TYPE_DESCRIPTIONS.get(flow_type, ""),
            tuple(sorted({*(versions or versions_without_layout(flow_type)), in_force})), in_force,
            bool(versions), lead, files, upload_platform(flow_type), deadline_rule(flow_type, today.year, rule_book)))
    return rows


@route(pages, "GET", "/tipi-di-flusso", LIST_INSTANCES, "page")
async def flow_types_page(ctx: Ctx) -> Response:
    today = italian_today()
    # a few small files read (the layouts, the deadline data once) and, at the first page, the holidays' calendars
    # loaded: off the event loop
    rows = await asyncio.to_thread(flow_type_rows, today)
    return page(ctx, "flow_types.html", "Tipi di flusso", active="/tipi-di-flusso", rows=rows, anno=today.year,
                mese_detto=f"{MONTHS[today.month - 1]} {today.year}")


def _rows_text(layout: Layout, scope: str) -> str:
    """On which records of a prescription a field is written (a grouped layout: its numbered rows, then the closing
    one)."""
    grouping = layout.grouping
    if grouping is None or scope == "all":
        return "tutte"
    if scope == "detail":
        return f"da 01 a {grouping.max_rows:02d}"
    return f"{grouping.closing_row} (chiusura)"


@route(pages, "GET", "/tipi-di-flusso/{tipo}/{versione}", LIST_INSTANCES, "page")
async def layout_page(ctx: Ctx, tipo: str, versione: str) -> Response:
    """A layout's records and fields, as contracts/layouts has them: what each line of a flow's files holds, where."""
    registry = LayoutRegistry()
    available = registry.available()
    if (tipo, versione) not in available:  # only a layout of the folder: no other path is ever read
        raise HTTPException(404)
    name = FLOW_TYPE_LABELS.get(tipo, tipo)
    try:
        layout = registry.get(tipo, versione)
    except LayoutError as exc:  # the file's own English is the operators': logged
        log.warning("console.layout_unusable", flow_type=tipo, version=versione, error=str(exc))
        return page(ctx, "message.html", f"Tracciato {name} versione {versione}", status=500, level="danger",
                    active="/tipi-di-flusso", back="/tipi-di-flusso", back_label="Torna ai tipi di flusso",
                    message=f"Il tracciato {name} versione {versione} non è leggibile: avvisi l'esercizio (il "
                            "dettaglio è nel log della console).")
    today = italian_today()
    in_force = version_in_force(tipo, today.replace(day=1), [v for f, v in available if f == tipo])
    records = [{"kind": r.kind, "holds": FILE_CONTENTS.get(r.kind, ""), "length": r.length,
                "fields": [{"title": f.title, "start": f.start, "end": f.end, "length": f.length,
                            "type": FIELD_TYPE_LABELS.get(f.type, f.type), "required": f.required,
                            "rows": _rows_text(layout, f.rows)} for f in r.fields]} for r in layout.records]
    return page(ctx, "layout.html", f"Tracciato {name} versione {versione}", active="/tipi-di-flusso",
                records=records, grouping=layout.grouping, description=FLOW_TYPE_DESCRIPTIONS.get(tipo, ""),
                in_force=versione == in_force, mese_detto=f"{MONTHS[today.month - 1]} {today.year}")


# ---------------------------------------------------------------- Invia a Sistema TS
def _sendable(row: asyncpg.Record) -> bool:
    return "send" in _state_actions(row["flow_type"], row["state"])


def _not_sendable(row: asyncpg.Record) -> str:
    """Why an instance cannot be sent to Sistema TS: its flow type never can (only the 730 goes there; the other
    flows' files are uploaded where each is due), or its state does not allow it now."""
    if row["flow_type"] not in SENDABLE_FLOW_TYPES:
        labels = ", ".join(FLOW_TYPE_LABELS.get(t, t) for t in sorted(SENDABLE_FLOW_TYPES))
        return (f"Solo le istanze {labels} si inviano a Sistema TS: l'istanza {row['instance']} è "
                f"{FLOW_TYPE_LABELS.get(row['flow_type'], row['flow_type'])}.")
    return _not_now(row, "non si può inviare a Sistema TS")


@route(pages, "GET", "/istanze/{instance}/invia-ts", ACT_ON_INSTANCE, "page")
async def ts_send_form(ctx: Ctx) -> Response:
    assert ctx.row is not None
    if not _sendable(ctx.row):
        raise HTTPException(409, _not_sendable(ctx.row))
    public_key = console_of(ctx.request).settings.keys_dir / PUBLIC_KEY_FILE
    if not public_key.exists():
        raise HTTPException(503, "La chiave pubblica del gateway TS non è disponibile: l'invio non si può preparare "
                                 "ora. Riprovi tra qualche minuto; se il problema continua, avvisi l'esercizio.")
    # documents TS already has from another instance of this entity (services.ts_gateway.overlap): said, not refused
    pool, instance, today = console_of(ctx.request).pool, int(ctx.row["instance"]), italian_today()
    overlap = warning_it(await sent_already(pool, instance))
    # documents paid in a year TS no longer takes if sent today, the form's date (services.ts_gateway.payment_year)
    late = payment_year.warning_it(await payment_year.payment_years(pool, instance), today)
    return page(ctx, "ts_send.html", f"Invia a Sistema TS l'istanza {ctx.row['instance']}", active="/istanze",
                row=ctx.row, public_key=public_key.read_text(), today=today.isoformat(), chosen=today.isoformat(),
                overlap=overlap, late=late, unconfirmed=False)


@route(pages, "POST", "/istanze/{instance}/invia-ts", ACT_ON_INSTANCE, "action")
async def ts_send(ctx: Ctx) -> Response:
    """Receives only the box the browser sealed (and the date): never a credential in clear."""
    assert ctx.row is not None
    console = console_of(ctx.request)
    if not _sendable(ctx.row):
        raise HTTPException(409, _not_sendable(ctx.row))
    form = await ctx.request.form()
    sealed, when = str(form.get("sigillo") or ""), str(form.get("data") or "")
    try:
        transmission = date.fromisoformat(when)
    except ValueError:
        raise HTTPException(422, f"Data di trasmissione non valida ({when!r}), attesa AAAA-MM-GG.") from None
    today = italian_today()  # the CLI's rule (flows send-730): today in Italy or a later day, never a past one
    if transmission < today:
        raise HTTPException(422, f"La data di trasmissione {transmission:%d/%m/%Y} è nel passato: indichi oggi "
                                 f"({today:%d/%m/%Y}) o un giorno successivo.")
    # What send_sealed_730 would refuse in the CLI's English, said here in Italian first: the gateway's key rotated
    # while this page was open (`flows ts rotate-key`), a box that did not arrive whole, no key at all.
    public_key = console.settings.keys_dir / PUBLIC_KEY_FILE
    if not public_key.exists():
        raise HTTPException(503, "La chiave pubblica del gateway TS non è disponibile: nulla è stato inviato. "
                                 "Riprovi tra qualche minuto; se il problema continua, avvisi l'esercizio.")
    try:
        sealed_to = sealed_key_id(sealed)
    except SealError:
        raise HTTPException(422, "Le credenziali cifrate non sono arrivate integre: ricarichi la pagina e le inserisca "
                                 "di nuovo. Nulla è stato inviato.") from None
    if sealed_to != key_id(public_key.read_bytes()):
        raise HTTPException(409, "La chiave del gateway TS è cambiata dopo l'apertura di questa pagina: ricarichi la "
                                 "pagina e inserisca di nuovo le credenziali. Nulla è stato inviato.")
    # The page warned of the payment years for the day it showed (today): a later day chosen in the form is warned
    # of here, as `flows send-730` asks again of a date typed at its prompt. Sent only once the operator has seen the
    # warning for that very day: the form then carries the day (anno-confermato), and the credentials are typed again
    # (the box they were sealed in is not sent back to the browser).
    instance = int(ctx.row["instance"])
    late = payment_year.warning_it(await payment_year.payment_years(console.pool, instance), transmission, today)
    if late and str(form.get("anno-confermato") or "") != transmission.isoformat():
        log.info("console.ts_send_unconfirmed_year", instance=instance, transmission=transmission.isoformat())
        return page(ctx, "ts_send.html", f"Invia a Sistema TS l'istanza {instance}", status=409, active="/istanze",
                    row=ctx.row, public_key=public_key.read_text(), today=today.isoformat(),
                    chosen=transmission.isoformat(), overlap=warning_it(await sent_already(console.pool, instance)),
                    late=late, unconfirmed=True)
    try:
        await send_sealed_730(console.settings.kafka_bootstrap, console.pool, console.settings.keys_dir,
                              instance, sealed, transmission, ctx.principal.name)
    except UserError as exc:
        # What the checks above passed and send_sealed_730 then refused (in the CLI's English) changed meanwhile: the
        # instance's state, or the gateway's key. Logged as said; the page says it in Italian.
        log.info("console.ts_send_refused", instance=int(ctx.row["instance"]), reason=str(exc))
        raise HTTPException(409, "Invio non possibile: lo stato dell'istanza o la chiave del gateway TS sono cambiati "
                                 "mentre la pagina era aperta. Nulla è stato inviato: riapra l'istanza e, se è ancora "
                                 "da inviare, ripeta l'invio.") from exc
    return RedirectResponse(f"/istanze/{ctx.row['instance']}", status_code=303)


