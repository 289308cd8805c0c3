"""The services' structlog lines, where a test can read them.

services.runtime.logging.configure() writes to the stderr of the moment it runs and caches each module-level
logger on its first use (cache_logger_on_first_use). A test that re-configures structlog onto a stream of its
own must also drop those cached loggers, or the ones an earlier test used keep writing to the old stream.
pytest's caplog sees only the standard library's records, none of these.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog._config import BoundLoggerLazyProxy


def uncache_loggers() -> None:
    """Every lazy logger assembles itself again from the current configuration at its next use.

    gc.get_objects() does not list what gc.freeze() put in the permanent generation, and a batch consumer
    started in this process froze everything it found (services.runtime.batch.tune_gc: the e2e platform runs
    the loader in the test process), module-level loggers included: those kept writing to the stream of their
    first use (a gateway test read no `store.full` line after the e2e folder had run). Unfrozen first: in a test
    process the collector walking them again costs nothing that matters."""
    gc.unfreeze()
    for proxy in [o for o in gc.get_objects() if isinstance(o, BoundLoggerLazyProxy)]:
        proxy.__dict__.pop("bind", None)


def configure_onto(stream: TextIO, level: str, fmt: str) -> None:
    """The services' own configure(), onto `stream`, for every logger including those already used."""
    from services.runtime import logging as service_logging

    saved, sys.stderr = sys.stderr, stream
    try:
        service_logging._configured = False
        service_logging.configure(level, fmt)
    finally:
        sys.stderr = saved
    uncache_loggers()


@contextmanager
def service_log_lines(level: str = "DEBUG") -> Iterator[io.StringIO]:
    """For the block: every structlog line, as JSON, in the StringIO yielded; then the configuration as it was."""
    from services.runtime import logging as service_logging

    saved_config, saved_configured = structlog.get_config(), service_logging._configured
    buffer = io.StringIO()
    configure_onto(buffer, level, "json")
    try:
        yield buffer
    finally:
        structlog.configure(**saved_config)
        service_logging._configured = saved_configured
        uncache_loggers()


def json_lines(log: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines (FLOWS_LOG_FORMAT=json) of `event` (structlog's "event" key) in a service's log file."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if f'"{event}"' in line:
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
    return found


class RecordedLog:
    """A logger with structlog's call shape that keeps what it is given as (level, event, fields): for the classes
    that take their logger (services.runtime.backoff's SpaceWaits, Interruptions)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append(("warning", event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(("info", event, kw))
