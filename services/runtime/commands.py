"""Publishing a command (an operator's or an external system's request) straight to Kafka.

Commands are not events of any stream yet: the service that acts on them records what it did.
The producer is idempotent with acks=all, like the outbox relay's.
"""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from contracts.envelope import Envelope
from contracts.topics import by_name
from services.runtime import tracing


async def send_command(bootstrap: str, topic_name: str, payload: BaseModel, *, key: str,
                       source: str = "/flows/cli") -> str:
    """Validates `payload` against the topic's model, publishes it, returns its ce_id.

    In a PRODUCER span (a new trace, or a child of the caller's span) whose context goes in the
    command's `ce_traceparent`/`ce_tracestate` headers."""
    topic = by_name(topic_name)
    checked = topic.payload.model_validate(payload.model_dump(mode="json"))
    with tracing.tracer().start_as_current_span(
            f"send {topic.name}", kind=tracing.trace.SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": topic.name,
                        "messaging.kafka.message.key": key}) as span:
        envelope = Envelope.new(topic.name, source, subject=key, **tracing.carrier())
        span.set_attribute("messaging.message.id", envelope.id)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic.name, checked.model_dump_json().encode(), key=key.encode(),
                                         headers=envelope.to_headers())
        finally:
            await producer.stop()
    return envelope.id
