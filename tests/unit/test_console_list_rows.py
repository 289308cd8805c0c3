"""The instance list's rows are built in Python (services/console/instance_pages.py `_list_rows`, for speed): every text
cell is still escaped, and the dates are shown as PostgreSQL wrote them (the creation time as Rome's wall-clock time:
tests/integration/test_console_list_page.py checks it on the real page). A row is read by position, its last eight
values in `_LIST_PAGE_TYPES` order, as an asyncpg Record unpacks."""

from __future__ import annotations

from services.console.instance_pages import _LIST_PAGE_TYPES, _list_rows
from services.console.labels import badge


def test_list_rows_escape_every_text_cell_and_show_the_dates_as_written() -> None:
    row = {"flow_type": "FLUSSO_C<script>", "ente": "<b>2", "instance": 1947, "source_instance": None,
           "created_text": "02/07/2026 00:30", "start_text": "01/06/2026", "end_text": "30/06/2026",
           "state": "Checked"}
    # as the page's statement gives it: the principal's columns first, then the page's eight, in order
    record = ("operator", *(row[name] for name, _ in _LIST_PAGE_TYPES))
    html = str(_list_rows([record]))  # type: ignore[list-item]
    assert "<script>" not in html and "<b>" not in html
    assert "FLUSSO_C&lt;script&gt;" in html and "&lt;b&gt;2" in html
    assert '<a href="/istanze/1947">1947</a>' in html
    assert "<td>02/07/2026 00:30</td><td>01/06/2026</td><td>30/06/2026</td>" in html
    assert 'data-state="Checked">Verificata (Checked)</span>' in html
    assert str(badge('x"<i>')) == '<span class="badge bg-primary" data-state="x&#34;&lt;i&gt;">x&#34;&lt;i&gt;</span>'
