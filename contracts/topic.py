"""One topic's declaration and the size and retention limits, shared by every area's registry.

Each area (contracts/flows.py, sources.py, onboarding.py, audit.py) declares its own `TOPICS` with
this class; contracts/topics.py assembles them into the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

DLQ_SUFFIX = ".dlq"

# Size limits, one place. A message (value + key + headers) on a topic is at most
# MAX_MESSAGE_BYTES (Kafka's default, 1 MiB); its `.dlq` twin takes twice that, so a dead letter
# always fits: the original bytes, untouched, plus a bounded reason (DLQ_REASON_MAX characters).
MAX_MESSAGE_BYTES = 1024 * 1024
DLQ_MAX_MESSAGE_BYTES = 2 * MAX_MESSAGE_BYTES
DLQ_REASON_MAX = 2000
# Retention: business events are kept a long time on Kafka (the event store keeps them forever);
# dead letters long enough for an operator to look at them after a holiday.
DEFAULT_RETENTION_MS = 30 * 24 * 3600 * 1000
DLQ_RETENTION_MS = 90 * 24 * 3600 * 1000
# A command that carries sealed credentials lives on Kafka only as long as the gateway needs to read it.
SECRET_COMMAND_RETENTION_MS = 3600 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    payload: type[BaseModel]
    key: str
    description: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...] = ()
    retention_ms: int = DEFAULT_RETENTION_MS
    max_message_bytes: int = MAX_MESSAGE_BYTES

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX


EXTERNAL = "external"  # a regional system (the CUP, SINFONIA) or the operator's CLI
