"""The instance list's rows are built in Python (services/console/instance_pages.py `_list_rows`, for speed): every text
cell is still escaped, and the dates are shown as PostgreSQL wrote them (the creation time as Rome's wall-clock time:
tests/integration/test_console_list_page.py checks it on the real page). A row is read by position, its last ten
values in `_LIST_PAGE_TYPES` order, as an asyncpg Record unpacks.

The last cell, Azioni, offers what the instance page offers the same principal (`instance_actions`, one decision for
both: tests/integration/test_console_list_page.py compares the two pages) and the downloads the row's files allow,
each link and button named for a screen reader by its instance."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest

from contracts.states import InstanceState
from services.console.auth import Principal
from services.console.instance_pages import _LIST_PAGE_TYPES, _list_rows, instance_actions
from services.console.labels import badge

OPERATOR = Principal("op.201", "operator", frozenset({"201"}), csrf_token="t")
OPS, AUDITOR = Principal("ops.1", "ops"), Principal("aud.1", "auditor")
ESITO, FILES = 1, 2  # the instance has an esito, other files (the read model's has_esiti, has_files)


def record(instance: int = 1947, flow_type: str = "FLUSSO_C", ente: str = "201", state: str = "Checked",
           files: int | None = None, **other: Any) -> tuple[Any, ...]:
    """A row as the page's statement gives it: the principal's columns first (one here), then the page's ten."""
    row = {"instance": instance, "flow_type": flow_type, "ente": ente, "source_instance": None,
           "created_text": "02/07/2026 00:30", "start_text": "01/06/2026", "end_text": "30/06/2026", "state": state,
           "has_esiti": bool((files or 0) & ESITO), "has_files": bool((files or 0) & FILES), **other}
    return ("operator", *(row[name] for name, _ in _LIST_PAGE_TYPES))


def test_list_rows_escape_every_text_cell_and_show_the_dates_as_written() -> None:
    html = str(_list_rows(OPERATOR, [record(flow_type="FLUSSO_C<script>", ente="<b>2")]))  # type: ignore[list-item]
    assert "<script>" not in html and "<b>" not in html
    assert "FLUSSO_C&lt;script&gt;" in html and "&lt;b&gt;2" in html
    assert '<a href="/istanze/1947">1947</a>' in html
    assert "<td>02/07/2026 00:30</td><td>01/06/2026</td><td>30/06/2026</td>" in html
    assert 'data-state="Checked">Verificata (Checked)</span>' in html
    assert str(badge('x"<i>')) == '<span class="badge bg-primary" data-state="x&#34;&lt;i&gt;">x&#34;&lt;i&gt;</span>'
    # nine cells, the Azioni last; a state the console does not know offers no action, only its files
    odd = str(_list_rows(OPERATOR, [record(state='Strano <i>"', files=ESITO | FILES)]))  # type: ignore[list-item]
    assert odd.count("<td") == 9 and "<i>" not in odd
    assert set(_items(odd)) == {"Scarica i file (zip)", "Scarica l'esito (FeedBack)"}


def _items(cell_html: str) -> dict[str, str]:
    """The Azioni cell's items: each one's visible text -> its href (or formaction)."""
    cell = cell_html.split('<td class="azioni">')[1].split("</td>")[0]
    found = {}
    for _tag, target, inner in re.findall(r'<(a|button)[^>]*?(?:href|formaction)="([^"]+)"[^>]*>(.*?)</\1>', cell):
        found[unescape(re.sub(r'<span class="visually-hidden">.*?</span>', "", inner))] = target
    return found


def cell_of(principal: Principal, **row: Any) -> dict[str, str]:
    return _items(str(_list_rows(principal, [record(**row)])))  # type: ignore[list-item]


FORMAT = {"Formatta": "/istanze/1947/formatta"}
SEND = {"Invia a Sistema TS": "/istanze/1947/invia-ts"}
ZIP = {"Scarica i file (zip)": "/istanze/1947/file.zip"}
FEEDBACK = {"Scarica l'esito (FeedBack)": "/istanze/1947/feedback.csv"}
DELETE = {"Cancella…": "/istanze/1947#cancella"}


@pytest.mark.parametrize(("flow_type", "state", "files", "operator", "reader"), [
    # Checked: formatted from the list; its warnings' feedback, when the checks left one
    ("FLUSSO_C", "Checked", None, FORMAT | DELETE, {}),
    ("FLUSSO_C", "Checked", ESITO, FORMAT | FEEDBACK | DELETE, FEEDBACK),
    # Failed loading: the feedback that says why; a crash that wrote none has no link
    ("FLUSSO_C", "Failed loading", ESITO, FEEDBACK | DELETE, FEEDBACK),
    ("FLUSSO_C", "Failed loading", None, DELETE, {}),
    ("FLUSSO_C", "Format failed", ESITO, FORMAT | FEEDBACK | DELETE, FEEDBACK),  # formatted again, as its page offers
    # Formatted: the files; only a 730 goes to Sistema TS
    ("FLUSSO_C", "Formatted", FILES, ZIP | DELETE, ZIP),
    ("FLUSSO_730", "Formatted", FILES | ESITO, SEND | ZIP | FEEDBACK | DELETE, ZIP | FEEDBACK),
    ("FLUSSO_730", "Rejected", FILES | ESITO, SEND | ZIP | FEEDBACK | DELETE, ZIP | FEEDBACK),  # sent again
    ("FLUSSO_730", "Waiting feedback", FILES, ZIP, ZIP),  # work in progress: neither sent again nor deleted
    ("FLUSSO_730", "Confirmed", FILES | ESITO, ZIP | FEEDBACK | DELETE, ZIP | FEEDBACK),
    ("FLUSSO_C", "Deleted", FILES, ZIP, ZIP),  # the history and its files stay
    ("FLUSSO_C", "Scheduled", None, DELETE, {}),
    ("FLUSSO_C", "Running", None, {}, {}),
    ("FLUSSO_C", "Formatting in progress", None, {}, {}),
])
def test_the_azioni_cell_offers_what_the_state_allows_to_whom_may_act(
        flow_type: str, state: str, files: int | None, operator: dict[str, str], reader: dict[str, str]) -> None:
    assert cell_of(OPERATOR, flow_type=flow_type, state=state, files=files) == operator
    for principal in (OPS, AUDITOR):  # they read every ente's instances and act on none
        assert cell_of(principal, flow_type=flow_type, state=state, files=files) == reader, principal.role
    # An operator of another ente (never listed it: the statement keeps its enti; and the rule says so too)
    other = Principal("op.202", "operator", frozenset({"202"}))
    assert cell_of(other, flow_type=flow_type, state=state, files=files) == reader


def test_every_state_is_the_instance_pages_decision() -> None:
    """The list asks `instance_actions`, as the instance page does: Formatta, Invia a Sistema TS and Cancella appear
    exactly when it names format, send and delete, for every state and flow type the platform has."""
    named = {"format": "Formatta", "send": "Invia a Sistema TS", "delete": "Cancella…"}
    for state in InstanceState:
        for flow_type in ("FLUSSO_C", "FLUSSO_730"):
            for principal in (OPERATOR, OPS, AUDITOR):
                shown = set(cell_of(principal, flow_type=flow_type, state=state.value)) & set(named.values())
                assert shown == {named[a] for a in instance_actions(principal, "201", flow_type, state.value)}


def test_the_formatta_button_posts_the_pages_form_and_every_name_is_unique() -> None:
    """Formatta is a submit button of the page's form `azioni` (which carries the CSRF token), posted to the row's own
    instance; every link and button of the column names its instance for a screen reader, so that no two on a page
    have the same accessible name."""
    rows = [record(instance=n, flow_type=("FLUSSO_C", "FLUSSO_730")[n % 2],
                   state=("Checked", "Formatted", "Failed loading")[n % 3], files=(ESITO, FILES | ESITO, ESITO)[n % 3])
            for n in range(1999, 1949, -1)]
    html = str(_list_rows(OPERATOR, rows))  # type: ignore[arg-type]
    assert ('<button type="submit" form="azioni" formaction="/istanze/1998/formatta" class="btn btn-primary btn-xs">'
            "Formatta<span class=\"visually-hidden\"> l'istanza 1998</span></button>") in html
    assert "csrf" not in html  # the token is the page's form's, once
    names = [unescape(re.sub(r"<[^>]+>", "", inner)) for _, inner in re.findall(r"<(a|button)\b[^>]*>(.*?)</\1>", html)]
    names = [n for n in names if not n.isdigit()]  # the instance's own link, its number
    assert len(names) == len(set(names)) > 140, names[:10]
    assert "Formatta l'istanza 1998" in names and "Scarica l'esito (FeedBack) dell'istanza 1997" in names
    assert "Invia a Sistema TS l'istanza 1999" in names and "Cancella… l'istanza 1999" in names
    assert "Scarica i file (zip) dell'istanza 1999" in names


def test_the_rows_are_ascii_whatever_they_offer() -> None:
    """Every shape of the Azioni cell is ASCII (&hellip;, not the character): a single character beyond Latin-1 in
    the rows makes Python hold the whole page as 2-byte text, slower to put together and to encode."""
    for state in InstanceState:
        for flow_type in ("FLUSSO_C", "FLUSSO_730"):
            for principal in (OPERATOR, AUDITOR):
                for files in (None, ESITO, FILES, ESITO | FILES):
                    row = record(flow_type=flow_type, state=state.value, files=files)
                    assert str(_list_rows(principal, [row])).isascii(), (state, flow_type, principal.role, files)  # type: ignore[list-item]
