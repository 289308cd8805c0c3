"""The topic registry: one topic per event type, named `<area>.<event>`, each with a `.dlq` twin.

The topic name is also the CloudEvents `ce_type`. The key is the aggregate id: the instance
number for `flows.*`, the request id for `onboarding.*`, the source record id for `sources.*`.
"""

from __future__ import annotations

from contracts import audit, flows, onboarding, sources
from contracts.topic import (
    DEFAULT_RETENTION_MS,
    DLQ_MAX_MESSAGE_BYTES,
    DLQ_REASON_MAX,
    DLQ_RETENTION_MS,
    DLQ_SUFFIX,
    EXTERNAL,
    MAX_MESSAGE_BYTES,
    SECRET_COMMAND_RETENTION_MS,
    Topic,
)

__all__ = [
    "AUDIT_TOPICS",
    "DEFAULT_RETENTION_MS",
    "DLQ_MAX_MESSAGE_BYTES",
    "DLQ_REASON_MAX",
    "DLQ_RETENTION_MS",
    "DLQ_SUFFIX",
    "EXTERNAL",
    "FLOW_TOPICS",
    "INTAKE_TOPICS",
    "MAX_MESSAGE_BYTES",
    "ONBOARDING_TOPICS",
    "SECRET_COMMAND_RETENTION_MS",
    "SOURCE_TOPICS",
    "Topic",
    "all_topics",
    "by_name",
]

# Every area declares its own topics beside its payloads; this is where they meet.
FLOW_TOPICS: list[Topic] = flows.TOPICS
SOURCE_TOPICS: list[Topic] = sources.TOPICS
ONBOARDING_TOPICS: list[Topic] = onboarding.TOPICS
AUDIT_TOPICS: list[Topic] = audit.TOPICS

# What the loader consumes: the records regional systems publish (the rest of SOURCE_TOPICS it publishes).
INTAKE_TOPICS: list[Topic] = [t for t in SOURCE_TOPICS if "loader" in t.consumers]


def all_topics() -> list[Topic]:
    return [*FLOW_TOPICS, *SOURCE_TOPICS, *ONBOARDING_TOPICS, *AUDIT_TOPICS]


def by_name(name: str) -> Topic:
    for topic in all_topics():
        if topic.name == name:
            return topic
    raise KeyError(f"unknown topic {name!r}")
