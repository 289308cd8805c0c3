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


# The stdlib logger the Kafka broker logs its own lines to (partitions assigned, a consumer's errors): passed to
# FastStream (services.runtime.broker.create_broker), whose default logger printed coloured text to stdout, between
# the JSON lines of the same log file.
BROKER_LOGGER = "flows.broker"


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """structlog's lines, and every stdlib logger's (the broker's, aiokafka's, asyncpg's, uvicorn's), rendered alike
    on stderr: one JSON object a line when not on a terminal, so a log file is JSON lines throughout."""
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,  # the message being handled, as structlog's own lines
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.stdlib.ExtraAdder(),  # what the library passed as `extra` (the broker: topic, group_id)
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    root = logging.getLogger()
    root.addHandler(handler)  # beside any already there (a test runner's capture), as basicConfig was not
    root.setLevel(logging.WARNING)
    logging.getLogger(BROKER_LOGGER).setLevel(logging.INFO)
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
