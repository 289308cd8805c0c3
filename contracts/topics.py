"""The topic registry: one topic per event type, named `<area>.<event>`, each with a `.dlq` twin.

The topic name is also the CloudEvents `ce_type`. The key is the aggregate id: the instance
number for `flows.*`, the request id for `onboarding.*`, the source record id for `sources.*`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from contracts import audit, flows, sources

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


_EXT = "external"  # a regional system (the CUP, SINFONIA) or the operator's CLI



def _flow(model: type[flows.Payload], *args: Any, **kwargs: Any) -> Topic:
    """The topic of a lifecycle payload, named by flows.TYPE_OF."""
    return Topic(flows.TYPE_OF[model], model, *args, **kwargs)


FLOW_TOPICS = [
    _flow(flows.LoadRequested, "request_id",
          "Command: load a flow for an entity and a period.", (_EXT, "cli"), ("loader",)),
    _flow(flows.LoadScheduled, "instance", "The load will start at its scheduled time.",
          ("loader",)),
    _flow(flows.LoadRunning, "instance", "An instance was created and is Running.",
          ("loader",)),
    _flow(flows.LoadChecked, "instance", "The load passed its checks: Checked.", ("loader",)),
    _flow(flows.LoadFailed, "instance",
          "Failed loading, with a feedback file naming every bad record.", ("loader",)),
    _flow(flows.FormatRequested, "instance", "Command: format a Checked instance.",
          (_EXT, "cli"), ("formatter",)),
    _flow(flows.FormattingStarted, "instance", "Formatting in progress.",
          ("formatter",)),
    _flow(flows.Formatted, "instance", "The files are ready: Formatted.", ("formatter",),
          (_EXT,)),
    _flow(flows.FormatFailed, "instance", "Formatting failed, with reasons.",
          ("formatter",)),
    _flow(flows.TsSubmissionRequested, "instance",
          "Command: send a Formatted 730 instance to Sistema TS (credentials sealed).", ("cli",),
          ("ts-gateway",), retention_ms=SECRET_COMMAND_RETENTION_MS),
    _flow(flows.TsSubmitted, "instance",
          "A zip was accepted by Sistema TS with a protocollo: Waiting feedback.", ("ts-gateway",)),
    _flow(flows.TsFeedbackReceived, "instance",
          "Sistema TS's outcome for a part, and for the instance when all parts have one.", ("ts-gateway",),
          (_EXT,)),
    _flow(flows.InstanceDeleted, "instance",
          "Cancella: the instance is marked deleted; history kept.", ("cli",)),
]

SOURCE_TOPICS = [
    Topic("sources.delivered-service", sources.DeliveredService, "source_id",
          "A delivered outpatient service with its prescription and patient.", (_EXT,), ("loader",)),
    Topic("sources.payment-document", sources.PaymentDocument, "source_id",
          "A fiscal document of a payment (source of the 730).", (_EXT,), ("loader",)),
    Topic("sources.intramoenia-booking", sources.IntramoeniaBooking, "source_id",
          "A booking of an intramoenia service (source of ALPI TA).", (_EXT,), ("loader",)),
]


class SourceRecordRejected(BaseModel):
    """A source record the loader could not accept; nothing else in its batch is lost."""

    schema_version: int = 1
    kind: str
    source_id: str | None
    errors: list[dict[str, str]]


SOURCE_TOPICS.append(Topic("sources.record-rejected", SourceRecordRejected, "source_id",
                           "A source record was rejected: each error names the field.", ("loader",), (_EXT,)))


AUDIT_TOPICS = [
    Topic("audit.checkpoint", audit.Checkpoint, "checkpoint",
          "A signed checkpoint: the Merkle root of every stream's head and the global position it covers.",
          ("audit",), (_EXT,)),
]


def onboarding_topics() -> list[Topic]:
    from contracts import onboarding

    return list(getattr(onboarding, "TOPICS", []))


def all_topics() -> list[Topic]:
    return [*FLOW_TOPICS, *SOURCE_TOPICS, *onboarding_topics(), *AUDIT_TOPICS]


def by_name(name: str) -> Topic:
    for topic in all_topics():
        if topic.name == name:
            return topic
    raise KeyError(f"unknown topic {name!r}")
