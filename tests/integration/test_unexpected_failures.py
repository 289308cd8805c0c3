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
from contracts.sources import DeliveredService
from contracts.states import InstanceState
from services.formatter import handlers as formatter_handlers
from services.loader import handlers as loader_handlers
from services.loader.intake import store_services
from services.runtime.backoff import Interruptions
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.filestore import FileStore
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS
from simulators.cup.generator import generate
from tests.integration.test_interruptions import _Lines, _loader, _running
from tests.isolation import scratch_database

pytestmark = pytest.mark.integration

REASON = re.compile(r"(?P<what>.+) per un errore interno della piattaforma \(riferimento (?P<ref>[0-9A-F]{8})\): "
                    r"(?P<retry>.+); se l'errore si ripete, comunichi il riferimento all'assistenza\.")


def _logged(logs: list[MutableMapping[str, Any]], event: str) -> MutableMapping[str, Any]:
    (line,) = [entry for entry in logs if entry["event"] == event]
    return line


async def test_a_load_and_a_formatting_that_fail_unexpectedly_say_so_in_italian_with_a_reference(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with scratch_database("t_unexpected") as url:
        pool = await create_pool(url, min_size=1, max_size=4)
        try:
            await prepare_database(pool, FLOW_PROJECTIONS)
            async with pool.acquire() as conn:
                await store_services(conn, [r for r in generate("204", "2020-08", 40, seed=7)
                                            if isinstance(r, DeliveredService)])
            loader = _loader(pool, _Lines(), tmp_path / "files", "test-unexpected")

            # The load: its snapshot reads a column that is no longer there
            await pool.execute("ALTER TABLE snapshot_service RENAME COLUMN patient_name TO patient_name_gone")
            broken = await _running(loader, "204")
            with structlog.testing.capture_logs() as logs:
                await loader_handlers.run_instance(broken, loader)
            failed = await loader.instances.read(broken)
            assert failed.state is InstanceState.FAILED_LOADING, failed.state
            (event,) = [e for e in await loader.store.read_stream(f"instance-{broken}")
                        if e.type == flows.TYPE_OF[flows.LoadFailed]]
            summary = event.data["summary"]
            said = REASON.fullmatch(summary)
            assert said, summary
            assert (said["what"], said["retry"]) == ("il caricamento non è stato completato",
                                                     "richieda di nuovo il caricamento del periodo")
            assert "patient_name" not in summary and "Error" not in summary
            crashed = _logged(logs, "load.crashed")
            assert crashed["reference"] == said["ref"] and crashed["instance"] == broken
            assert crashed["exc_info"] and crashed["log_level"] == "error"

            # The formatting: a load that went through, then the snapshot's column gone under the formatter
            await pool.execute("ALTER TABLE snapshot_service RENAME COLUMN patient_name_gone TO patient_name")
            instance = await _running(loader, "204")
            await loader_handlers.run_instance(instance, loader)
            checked = await loader.instances.read(instance)
            assert checked.state is InstanceState.CHECKED, checked.state
            formatter = formatter_handlers.FormatterDeps(
                pool=pool, store=EventStore(pool, source="/flows/formatter", projections=FLOW_PROJECTIONS),
                files=FileStore(tmp_path / "files"),
                interrupted=Interruptions(_Lines(), initial_s=600.0, service="test-unexpected", work="format"))
            await formatter.instances.append(checked, flows.FormattingStarted(instance=instance))
            await pool.execute("ALTER TABLE snapshot_service RENAME COLUMN patient_name TO patient_name_gone")
            with structlog.testing.capture_logs() as logs:
                await formatter_handlers.format_instance(instance, formatter)
            stopped = await formatter.instances.read(instance)
            assert stopped.state is InstanceState.FORMAT_FAILED, stopped.state
            (event,) = [e for e in await formatter.store.read_stream(f"instance-{instance}")
                        if e.type == flows.TYPE_OF[flows.FormatFailed]]
            (reason,) = event.data["reasons"]
            said = REASON.fullmatch(reason)
            assert said, reason
            assert (said["what"], said["retry"]) == ("la formattazione non è stata completata",
                                                     "richieda di nuovo la formattazione dell'istanza")
            assert "patient_name" not in reason and "Error" not in reason
            crashed = _logged(logs, "format.crashed")
            assert crashed["reference"] == said["ref"] and crashed["instance"] == instance and crashed["exc_info"]
        finally:
            await pool.close()
