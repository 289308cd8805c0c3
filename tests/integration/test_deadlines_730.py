"""A 730's deadline is met by sending it to Sistema TS, not by formatting it (contracts.deadlines.covering_states):
on the real console's Scadenze page and in `flows deadlines`, both reading the instance read model of a fresh
database on the test stack. A 730 only Formatted leaves its deadline uncovered; once Sistema TS has it (Waiting
feedback, then Confirmed) it covers it; a Flusso C of the same entity is covered once Formatted (it is exported)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from typing import Any

import pytest

from services.runtime.eventstore import NewEvent
from services.runtime.read_models import instance_stream
from tests.console_support import RunningConsole

pytestmark = pytest.mark.integration

FORMATTED: list[tuple[str, dict[str, Any]]] = [
    ("flows.load-checked", {"source_instance": 1, "counts": {}}), ("flows.formatting-started", {}),
    ("flows.formatted", {"files": []})]
YEAR_2026 = ("2026-01-01", "2026-12-31")  # the 730's period: the deadline of the year, on the month of December


async def _page_row(console: RunningConsole, flow_label: str) -> str:
    """Entity 201's row of `flow_label` on the Scadenze page of December 2026, as its operator sees it."""
    async with console.client("operator") as client:
        page = (await client.get(console.url + "/scadenze?mese=2026-12")).text
    rows = [row for row in page.split("<tr")[1:] if f"<td>201</td><td>{flow_label}</td>" in row]
    assert len(rows) == 1, page
    return rows[0].split("</tr>")[0]


async def _cli_status(database_url: str, flow_type: str) -> str:
    """The status column of `flows deadlines --ente 201 --month 2026-12` for `flow_type`."""
    env = {**os.environ, "DATABASE_URL": database_url, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli.main", "deadlines", "--ente", "201",
                                                "--month", "2026-12", env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    lines = [line for line in text.splitlines() if re.search(rf"\b201\b.*\b{flow_type}\b", line)]
    assert len(lines) == 1, text
    return " ".join(lines[0].replace("│", " ").split()[4:])  # after ente, flow, period, due


async def _append(console: RunningConsole, instance: int, events: list[tuple[str, dict[str, Any]]]) -> None:
    version = await console.store.stream_version(instance_stream(instance))
    await console.store.append(instance_stream(instance), [
        NewEvent(t, {"instance": instance, **d}, actor="ts-gateway") for t, d in events],
        expected_version=version, key=str(instance), publish=False)


async def test_a_730_covers_its_deadline_once_sistema_ts_has_it_not_once_formatted(
        console: RunningConsole, fresh_db: str) -> None:
    sent = await console.instance("201", FORMATTED, flow_type="FLUSSO_730", period=YEAR_2026)
    exported = await console.instance("201", FORMATTED, period=("2026-12-01", "2026-12-31"))

    # Formatted: the Flusso C is covered (the operator uploads its files), the 730 is not (nothing reached TS)
    row = await _page_row(console, "FLUSSO C")
    assert ">Coperta<" in row and f'href="/istanze/{exported}"' in row, row
    row = await _page_row(console, "FLUSSO 730")
    assert ">Coperta<" not in row and "/istanze/" not in row, row
    assert await _cli_status(fresh_db, "FLUSSO_C") == f"covered by {exported}"
    assert not (await _cli_status(fresh_db, "FLUSSO_730")).startswith("covered")

    # Sistema TS took it (a protocollo): Waiting feedback covers the deadline
    await _append(console, sent, [("flows.ts-submitted", {"part": 1, "parts": 1, "protocollo": "26120500000000001"})])
    assert await console.pool.fetchval("SELECT state FROM instance_list WHERE instance = $1", sent) == \
        "Waiting feedback"
    row = await _page_row(console, "FLUSSO 730")
    assert ">Coperta<" in row and f'href="/istanze/{sent}"' in row, row
    assert await _cli_status(fresh_db, "FLUSSO_730") == f"covered by {sent}"

    # ... and so does its outcome, Confirmed
    await _append(console, sent, [("flows.ts-feedback-received", {
        "part": 1, "parts": 1, "protocollo": "26120500000000001", "stato": 2, "outcome": "confirmed",
        "instance_outcome": "confirmed"})])
    assert await console.pool.fetchval("SELECT state FROM instance_list WHERE instance = $1", sent) == "Confirmed"
    row = await _page_row(console, "FLUSSO 730")
    assert ">Coperta<" in row and f'href="/istanze/{sent}"' in row, row
    assert await _cli_status(fresh_db, "FLUSSO_730") == f"covered by {sent}"


async def test_flows_deadlines_lists_the_730_of_a_year_whose_monthly_flows_have_no_data(
        console: RunningConsole, fresh_db: str) -> None:
    """December 2024: the 730's last semiannual deadline is in the data, the monthly flows' year is not. The CLI
    listed nothing (an error); it lists the 730 and names the flows it lacks on stderr."""
    env = {**os.environ, "DATABASE_URL": fresh_db, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli.main", "deadlines", "--ente", "201",
                                                "--month", "2024-12", env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = (text.decode() for text in await asyncio.wait_for(proc.communicate(), 60))
    assert proc.returncode == 0, out + err
    rows = [line for line in out.splitlines() if re.search(r"\b201\b", line)]
    assert len(rows) == 1 and "FLUSSO_730" in rows[0] and "2025-01-31" in rows[0], out
    assert "warning: no deadline data for FLUSSO_C, FLUSSO_C_PACC, FLUSSO_MEF, FLUSSO_ALPI_TA in 2024" in err, err
    assert "the other flows are listed" in err
