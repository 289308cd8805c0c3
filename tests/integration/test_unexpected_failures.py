"""An unexpected failure of a load or of a formatting ends the instance with an Italian reason and a reference
(services/runtime/incident.py), never with the exception's own text: that is Python's or PostgreSQL's English, and
it stayed in the instance's history, on the console's page, for good. The help desk finds the reference in the
service's log, with the exception.

The faults are real: the database is broken under the service (a column its statement reads renamed), so the
statement fails in PostgreSQL with an error that is not an outage (an outage is retried, never an outcome)."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from contracts import flows
from contracts.states import InstanceState
from services.formatter import handlers as formatter_handlers
from services.loader import handlers as loader_handlers
from services.runtime.eventstore import EventStore
from tests.handlers_inline import formatter_on, loader_on_services
from tests.integration.test_interruptions import _running

pytestmark = pytest.mark.integration

REASON = re.compile(r"(?P<what>.+) per un errore interno della piattaforma \(riferimento (?P<ref>[0-9A-F]{8})\): "
                    r"(?P<retry>.+); se l'errore si ripete, comunichi il riferimento all'assistenza\.")


async def _said(store: EventStore, instance: int, outcome: type[flows.Payload], logs: list[MutableMapping[str, Any]],
                crashed: str) -> tuple[str, str]:
    """(what did not get done, what to do) of the instance's one `outcome`, whose reference is the one the log line
    `crashed` has, with the exception; its text names nothing of the exception."""
    (event,) = [e for e in await store.read_stream(f"instance-{instance}") if e.type == flows.TYPE_OF[outcome]]
    (reason,) = event.data["reasons"] if "reasons" in event.data else [event.data["summary"]]
    said = REASON.fullmatch(reason)
    assert said, reason
    assert "patient_name" not in reason and "Error" not in reason
    (line,) = [entry for entry in logs if entry["event"] == crashed]
    assert line["reference"] == said["ref"] and line["instance"] == instance
    assert line["exc_info"] and line["log_level"] == "error"
    return said["what"], said["retry"]


async def test_a_load_and_a_formatting_that_fail_unexpectedly_say_so_in_italian_with_a_reference(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with loader_on_services("t_unexpected", tmp_path / "files", "test-unexpected", services=40,
                                  seed=7) as (pool, loader):
        # The load: its snapshot reads a column that is no longer there
        await pool.execute("ALTER TABLE snapshot_service RENAME COLUMN patient_name TO patient_name_gone")
        broken = await _running(loader, "204")
        with structlog.testing.capture_logs() as logs:
            await loader_handlers.run_instance(broken, loader)
        assert (await loader.instances.read(broken)).state is InstanceState.FAILED_LOADING
        assert await _said(loader.store, broken, flows.LoadFailed, logs, "load.crashed") == (
            "il caricamento non è stato completato", "richieda di nuovo il caricamento del periodo")

        # The formatting: a load that went through, then the snapshot's column gone under the formatter
        await pool.execute("ALTER TABLE snapshot_service RENAME COLUMN patient_name_gone TO patient_name")
        instance = await _running(loader, "204")
        await loader_handlers.run_instance(instance, loader)
        checked = await loader.instances.read(instance)
        assert checked.state is InstanceState.CHECKED, checked.state
        formatter = formatter_on(pool, tmp_path / "files", "test-unexpected")
        await formatter.instances.append(checked, flows.FormattingStarted(instance=instance))
        await pool.execute("ALTER TABLE snapshot_service RENAME COLUMN patient_name TO patient_name_gone")
        with structlog.testing.capture_logs() as logs:
            await formatter_handlers.format_instance(instance, formatter)
        assert (await formatter.instances.read(instance)).state is InstanceState.FORMAT_FAILED
        assert await _said(formatter.store, instance, flows.FormatFailed, logs, "format.crashed") == (
            "la formattazione non è stata completata", "richieda di nuovo la formattazione dell'istanza")
