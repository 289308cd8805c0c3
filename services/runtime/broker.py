"""The broker factory and the one way a service consumes a topic.

Delivery policy (chosen deliberately; FastStream's Kafka default acks BEFORE processing):
`AckPolicy.NACK_ON_ERROR`, no auto-commit. The offset is committed after the handler returned or
after the message was dead-lettered; if even the dead-lettering fails (broker down) the message
is nacked and comes back. So delivery is at-least-once and the handlers make it exactly-once by
recording `ce_id` in the same transaction as their effects (`eventstore.mark_processed`).

A message whose envelope or payload is invalid goes straight to `<topic>.dlq`; one whose handler
raises is retried `max_attempts` times with a short backoff, then dead-lettered. Either way the
partition moves on: a poison message never blocks the ones behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import BaseModel, ValidationError

from contracts.envelope import Envelope, EnvelopeError, from_kafka_headers
from contracts.topics import Topic
from services.runtime.logging import bind_message, get_logger
from services.runtime.settings import Settings


class Refused(Exception):
    """A well-formed command that cannot be carried out (e.g. format a Failed loading instance).

    Retrying cannot help: the message is dead-lettered at once with this reason.
    """


@dataclass(frozen=True)
class Incoming:
    """What a handler knows about the message besides its payload."""

    envelope: Envelope
    key: str | None
    topic: str
    partition: int
    offset: int

    @property
    def message_id(self) -> str:
        return self.envelope.id


Handler = Callable[[Any, Incoming], Awaitable[None]]
# Called for an invalid message before it is dead-lettered: (record id, parsed body or None, reason).
InvalidHook = Callable[[str | None, Any, str], Awaitable[None]]


def create_broker(settings: Settings, *, client_id: str) -> KafkaBroker:
    middlewares: list[Any] = []
    if settings.metrics_port:
        from faststream.kafka.prometheus import KafkaPrometheusMiddleware
        from prometheus_client import REGISTRY

        middlewares.append(KafkaPrometheusMiddleware(registry=REGISTRY, app_name=client_id))
    # FastStream logs every message at its log_level: DEBUG keeps that out of production logs (our own
    # structlog lines say what happened to each message), and the root logger is at WARNING.
    # A list, never the comma-separated string (see Settings.bootstrap_list). Topics are provisioned by
    # `flows topics apply` from the registry: the broker must never create one with its own defaults.
    return KafkaBroker(settings.bootstrap_list(), client_id=client_id, enable_idempotence=True, acks="all",
                       middlewares=middlewares, log_level=logging.DEBUG, allow_auto_create_topics=False)


def validation_reason(exc: ValidationError) -> str:
    """One line per bad field: `field.path: message (got value)`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        parts.append(f"{loc}: {err['msg']}{shown}")
    return "; ".join(parts)


def _record_id(payload: dict[str, Any] | None, key: str | None) -> str:
    if isinstance(payload, dict):
        for name in ("source_id", "instance", "request_id"):
            if payload.get(name) is not None:
                return f"{name}={payload[name]}"
    return f"key={key}"


async def dead_letter(broker: KafkaBroker, topic: Topic, message: Any, reason: str, attempts: int) -> None:
    raw: Any = message.raw_message
    headers = {k: (v.decode(errors="replace") if isinstance(v, bytes) else str(v)) for k, v in (raw.headers or [])}
    headers.update({
        "dlq_reason": reason[:4000],
        "dlq_original_topic": topic.name,
        "dlq_original_partition": str(raw.partition),
        "dlq_original_offset": str(raw.offset),
        "dlq_attempts": str(attempts),
    })
    key = raw.key if isinstance(raw.key, bytes) else (raw.key.encode() if raw.key else None)
    await broker.publish(message.body, topic.dlq, key=key, headers=headers)


async def _raw_body(message: Any) -> bytes:
    # FastStream would json-decode before our code runs, and a body that is not JSON would then be
    # nacked forever, blocking the partition: we decode ourselves, inside the dead-letter guard.
    return bytes(message.body)


def consume(broker: KafkaBroker, topic: Topic, *, group_id: str, handler: Handler, max_attempts: int = 3,
            retry_delay: float = 0.2, on_invalid: InvalidHook | None = None) -> None:
    """Subscribes `handler(payload_model, incoming)` to `topic` with validation, retries and a DLQ."""
    log = get_logger(group_id)
    model: type[BaseModel] = topic.payload

    @broker.subscriber(topic.name, group_id=group_id, ack_policy=AckPolicy.NACK_ON_ERROR,
                       auto_offset_reset="earliest", title=f"{group_id}:{topic.name}",
                       description=topic.description, decoder=_raw_body)
    async def _on_message(message: KafkaMessage) -> None:
        raw: Any = message.raw_message
        key = raw.key.decode() if isinstance(raw.key, bytes) else raw.key
        body = message.body
        data: Any = None
        try:
            envelope = from_kafka_headers(raw.headers or [])
            data = json.loads(body)
            payload = model.model_validate(data)
        except (EnvelopeError, ValueError) as exc:
            reason = validation_reason(exc) if isinstance(exc, ValidationError) else str(exc)
            reason = f"invalid message {_record_id(data, key)} on {topic.name}: {reason}"
            log.warning("message.rejected", reason=reason, offset=raw.offset, partition=raw.partition)
            if on_invalid is not None:
                await on_invalid(_record_id(data, key), data, reason)
            await dead_letter(broker, topic, message, reason, attempts=0)
            return
        incoming = Incoming(envelope, key, topic.name, raw.partition, raw.offset)
        bind_message(aggregate_id=key, event_id=envelope.id, topic=topic.name)
        for attempt in range(1, max_attempts + 1):
            try:
                await handler(payload, incoming)
                return
            except Refused as exc:
                log.warning("message.refused", reason=str(exc))
                await dead_letter(broker, topic, message, f"refused: {exc}", attempts=attempt)
                return
            except Exception as exc:
                log.warning("message.failed", attempt=attempt, error=f"{type(exc).__name__}: {exc}")
                if attempt == max_attempts:
                    reason = f"processing failed {attempt} times: {type(exc).__name__}: {exc}"
                    await dead_letter(broker, topic, message, reason, attempts=attempt)
                    log.error("message.dead_lettered", reason=reason)
                    return
                await asyncio.sleep(retry_delay * 2 ** (attempt - 1))
