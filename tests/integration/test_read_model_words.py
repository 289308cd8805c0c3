"""The read models keep data; the pages and the CLI write the words, each in its reader's language. A deleted
instance: its row has who deleted it and why (or no reason), its summary stays the load's own; the console's page
says it in Italian ("Cancellata da op.201: caricata due volte"), the API gives the values, `flows show` says it in
English. On the real console, PostgreSQL and the CLI as a process."""

from __future__ import annotations

import asyncio
import html
import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from contracts.deadlines import ITALY
from services.runtime.read_models import instance_stream
from tests.console_support import RunningConsole
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


async def _flows(console: RunningConsole, *args: str) -> str:
    """`flows ARGS` as a process on the console's database: its output (it must succeed)."""
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True, cwd=REPO,
        timeout=120, env={**os.environ, "DATABASE_URL": console.settings.database_url, "FLOWS_KAFKA_BOOTSTRAP": KAFKA,
                          "COLUMNS": "250"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _dd(page: str, term: str) -> str:
    """The text of the page's <dd> after the <dt> `term` (unescaped)."""
    after = page.split(f">{term}</dt>", 1)[1]
    return html.unescape(after.split("<dd", 1)[1].split(">", 1)[1].split("</dd>", 1)[0])


async def test_a_deleted_instance_is_written_in_italian_on_the_page_from_the_read_models_data(
        console: RunningConsole) -> None:
    failed = ("flows.load-failed", {"source_instance": 5, "errors": 3, "warnings": 0,
                                    "summary": "3 errori in 2 record"})
    with_reason = await console.instance("201", [failed, ("flows.instance-deleted",
                                                          {"deleted_by": "op.201", "reason": "caricata due volte"})])
    without = await console.instance("201", [("flows.load-checked", {"source_instance": 6, "counts": {}}),
                                             ("flows.instance-deleted", {"deleted_by": "op.201"})])
    alive = await console.instance("201", [failed])
    one_each = await console.instance("201", [("flows.load-failed", {"source_instance": 7, "errors": 1, "warnings": 1,
                                                                     "summary": "1 errore in 1 record"})])

    rows = {r["instance"]: r for r in await console.pool.fetch(
        "SELECT instance, summary, deleted_by, deletion_reason FROM instance_list")}
    assert tuple(rows[with_reason])[1:] == ("3 errori in 2 record", "op.201", "caricata due volte")
    assert tuple(rows[without])[1:] == (None, "op.201", None)
    assert tuple(rows[alive])[1:] == ("3 errori in 2 record", None, None)

    async with console.client("operator") as client:
        page = (await client.get(f"{console.url}/istanze/{with_reason}")).text
        assert _dd(page, "Errori, avvisi") == "3 errori, 0 avvisi: 3 errori in 2 record"  # the load's own summary
        assert _dd(page, "Cancellazione") == "Cancellata da op.201: caricata due volte"
        assert "deleted by" not in page and "no reason given" not in page
        page = (await client.get(f"{console.url}/istanze/{without}")).text
        assert _dd(page, "Errori, avvisi") == "0 errori, 0 avvisi"
        assert _dd(page, "Cancellazione") == "Cancellata da op.201 (nessun motivo indicato)"
        page = (await client.get(f"{console.url}/istanze/{alive}")).text
        assert "Cancellazione" not in page and "Cancellata da" not in page
        page = (await client.get(f"{console.url}/istanze/{one_each}")).text
        assert _dd(page, "Errori, avvisi") == "1 errore, 1 avviso: 1 errore in 1 record"  # one, not "1 errori"

        # The API: the same values, no sentence.
        got = (await client.get(f"{console.url}/api/istanze/{with_reason}")).json()
        assert (got["summary"], got["deleted_by"], got["deletion_reason"]) == (
            "3 errori in 2 record", "op.201", "caricata due volte")
        listed = {i["instance"]: i for i in (await client.get(f"{console.url}/api/istanze")).json()["items"]}
        assert (listed[without]["summary"], listed[without]["deleted_by"], listed[without]["deletion_reason"]) == (
            None, "op.201", None)
        assert (listed[alive]["deleted_by"], listed[alive]["deletion_reason"]) == (None, None)

    # The CLI writes its own English from the same row.
    shown = await _flows(console, "show", str(with_reason))
    assert "deleted by op.201: caricata due volte" in shown and "3 errors: 3 errori in 2 record" in shown
    assert "deleted by op.201: no reason given" in await _flows(console, "show", str(without))
    assert "deleted by" not in await _flows(console, "show", str(alive))


async def test_the_cli_and_the_console_show_and_search_the_same_italian_times(console: RunningConsole) -> None:
    """Both write a recorded instant in Italian time and search "created from" by Italian days: an instance made at
    23:30 UTC on 4 March is made at 00:30 on 5 March for its operators, on the page, in `flows instances` (and found
    from the 5th there), and `flows show` writes its history in the same time."""
    late, early = await console.instance("201"), await console.instance("201")
    await console.pool.execute("UPDATE instance_list SET created_at = '2026-03-04 23:30+00' WHERE instance = $1", late)
    await console.pool.execute("UPDATE instance_list SET created_at = '2026-03-04 22:30+00' WHERE instance = $1", early)
    async with console.client("operator") as client:
        page = (await client.get(f"{console.url}/istanze", params={"dal": "2026-03-05"})).text
        assert f'href="/istanze/{late}"' in page and f'href="/istanze/{early}"' not in page
        assert "<td>05/03/2026 00:30</td>" in page
    listed = await _flows(console, "instances", "--from", "2026-03-05")
    assert "05/03/2026 00:30" in listed and "04/03/2026 23:30" not in listed
    assert f" {late} " in listed and f" {early} " not in listed
    recorded = await console.pool.fetchval("SELECT recorded_at FROM events WHERE stream_id = $1 AND version = 1",
                                           instance_stream(late))
    shown = await _flows(console, "show", str(late))
    assert f"{recorded.astimezone(ITALY):%Y-%m-%d %H:%M:%S}" in shown
    assert f"{recorded.astimezone(UTC):%Y-%m-%d %H:%M:%S}" not in shown


async def test_deleting_an_instance_sistema_ts_accepted_says_it_does_not_withdraw_the_documents(
        console: RunningConsole) -> None:
    """Cancella marks an instance deleted here; it sends nothing to Sistema TS. On a 730 that TS accepted, the form
    says so next to the reason's field, so no operator takes it for a withdrawal; elsewhere it says only that the
    history stays."""
    sent: list[tuple[str, dict[str, Any]]] = [
        ("flows.load-checked", {"source_instance": 1, "counts": {"payment_documents": 1}}),
        ("flows.formatting-started", {}), ("flows.formatted", {"files": []}),
        ("flows.ts-submitted", {"part": 1, "parts": 1, "protocollo": "P1"})]
    confirmed = {"part": 1, "parts": 1, "protocollo": "P1", "stato": 2, "outcome": "confirmed",
                 "instance_outcome": "confirmed"}
    accepted = await console.instance("201", [*sent, ("flows.ts-feedback-received", confirmed)], flow_type="FLUSSO_730")
    checked = await console.instance("201", sent[:1], flow_type="FLUSSO_730")
    async with console.client("operator") as client:
        page = (await client.get(f"{console.url}/istanze/{accepted}")).text
        assert 'data-state="Confirmed">Confermata (Confirmed)<' in _dd(page, "Stato")
        hint = " ".join(html.unescape(page.split('id="motivo-aiuto"', 1)[1].split("</p>", 1)[0]).split())
        assert "non ritira i documenti inviati a Sistema TS" in hint and "La storia dell'istanza resta" in hint
        page = (await client.get(f"{console.url}/istanze/{checked}")).text
        hint = " ".join(html.unescape(page.split('id="motivo-aiuto"', 1)[1].split("</p>", 1)[0]).split())
        assert "Sistema TS" not in hint and "La storia dell'istanza resta consultabile." in hint
