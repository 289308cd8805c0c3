"""structlog configured once per process: JSON when not on a terminal, readable on one.

The consumer (services.runtime.broker) binds `aggregate_id` and `event_id` of each message it takes
(see `bind_message`), so every line of the work on it carries the key and the event being handled, and
clears them when the message is done (`forget_message`): a line never names the previous message.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    global _configured
    if _configured:
        return
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _configured = True


def bind_message(aggregate_id: str | None, event_id: str | None, **extra: Any) -> None:
    """The message being handled, replacing whatever was bound before."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(aggregate_id=aggregate_id, event_id=event_id, **extra)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def forget_message() -> None:
    """No message is being handled any more: later lines name none."""
    structlog.contextvars.clear_contextvars()
