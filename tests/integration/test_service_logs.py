"""A service's log file is JSON lines throughout: the broker's own lines (a partition assigned, a warning) were
FastStream's coloured text, printed between structlog's JSON lines, so a log shipper parsing the file as JSON
dropped or mangled them. Run as the stack runs it: a process of its own, stdout and stderr into one file."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from services.runtime.settings import Settings
from tests.isolation import logged_process
from tests.stack_urls import free_port

pytestmark = pytest.mark.integration


async def test_every_line_a_service_writes_is_json_its_broker_lines_named_as_such(settings: Settings, fresh_db: str,
                                                                                   tmp_path: Path) -> None:
    log = tmp_path / "formatter.log"
    env = {**os.environ, "DATABASE_URL": fresh_db, "FLOWS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "FLOWS_FILES_DIR": str(tmp_path / "files"), "FLOWS_HEALTH_PORT": str(free_port(30, 90)),
           "FLOWS_LOG_FORMAT": "auto"}  # not a terminal: JSON, as in the stack's log files
    async with logged_process(log, "-m", "services.formatter", env=env) as process:
        async with asyncio.timeout(90):  # started, and the broker has said which partitions it got
            while not ('"service.started"' in (text := log.read_text(errors="replace"))
                       and "assigned to partitions" in text):
                assert process.returncode is None, text[-2000:]
                await asyncio.sleep(0.2)
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    parsed = []
    for n, line in enumerate(lines, start=1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"line {n} of the formatter's log is not JSON: {line[:300]!r}") from None
    assert all({"event", "level", "timestamp"} <= set(p) for p in parsed), parsed
    broker = [p for p in parsed if p.get("logger") == "flows.broker"]
    assert any("assigned to partitions" in p["event"] and p["level"] == "info" for p in broker), broker
    assert any(p["event"] == "service.stopped" for p in parsed), "stopped by SIGTERM, it says so"
    assert "\x1b[" not in log.read_text(errors="replace"), "no terminal colour codes in a log file"
