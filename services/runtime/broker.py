"""The broker factory and the one way a service consumes a topic.

Delivery policy (chosen deliberately; FastStream's Kafka default acks BEFORE processing):
`AckPolicy.NACK_ON_ERROR`, no auto-commit. The offset is committed after the handler returned or
after the message was dead-lettered; if even the dead-lettering fails (broker down) the message
is nacked and comes back. So delivery is at-least-once and the handlers make it exactly-once by
recording `ce_id` in the same transaction as their effects (`EventStore.first_delivery`).

Poison versus outage. Everything that is wrong with the message itself (a key or a header that is
not UTF-8, a body that is not JSON or nested past the parser's depth, wrong types, an oversize
record, a `ce_type` that is unknown or belongs to another topic, an invalid envelope) goes straight
to `<topic>.dlq` with the ORIGINAL key, header and body bytes and `dlq_*` headers (a reason of at
most DLQ_REASON_MAX characters, never the whole value). The framework's own header decoding is
replaced by a tolerant parser, so even undecodable headers reach this guard instead of being
skipped. One poison message writes two log lines.

A handler that fails because a dependency is unreachable (PostgreSQL, Kafka, Sistema TS: connection
errors, see `is_transient`) is NOT dead-lettered: the consumer waits with capped exponential backoff
(0.5 s doubling to 30 s), probing the dependency, one log line per step, and retries the same
message for as long as the outage lasts. A long wait seeks back and returns to the poll loop every
few minutes (well within max.poll.interval), so the consumer keeps its group membership. Only a
handler that keeps failing while its dependencies answer is dead-lettered, after `max_attempts`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage  # the class itself: no FastDepends Context (see create_broker)
from pydantic import BaseModel, ValidationError

from contracts.envelope import Envelope, EnvelopeError, check_envelope_text, envelope_from_text, from_kafka_headers
from contracts.topics import DLQ_MAX_MESSAGE_BYTES, DLQ_REASON_MAX, Topic, all_topics
from services.runtime import kafkarecords, tracing
from services.runtime.kafkarecords import (
    DLQ_CORRUPT_BATCH,
    ISOLATION_LEVEL,
    corrupt_batch_problem,
    header_name_problem,
    printable_name,
)
from services.runtime.logging import BROKER_LOGGER, bind_message, forget_message, get_logger
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
# Raises when a dependency (PostgreSQL, ...) is unreachable; awaited between backoff steps.
Probe = Callable[[], Awaitable[None]]


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
    # apply_types=False: no FastDepends around the one subscriber (`consume`), which takes the message itself from
    # its decoder (_the_message). With it, a handler's `message: KafkaMessage` was a Context field that FastDepends
    # resolved through a sync function run on a worker thread (anyio.to_thread), inside a task group, for every
    # message: two thread switches and a loop wake-up per message for a dict lookup.
    return KafkaBroker(settings.bootstrap_list(), client_id=client_id, enable_idempotence=True, acks="all",
                       middlewares=middlewares, log_level=logging.DEBUG, allow_auto_create_topics=False,
                       apply_types=False, logger=logging.getLogger(BROKER_LOGGER))



# --- bounded text --------------------------------------------------------------------------------

LOG_REASON_MAX = 300  # what a log line quotes of a reason; the dead letter keeps up to DLQ_REASON_MAX
_SHOWN_VALUE_MAX = 80  # what a reason quotes of one bad value


def bounded(text: str, limit: int = DLQ_REASON_MAX) -> str:
    """`text` cut to `limit` characters, saying how much was cut: a reason never carries a whole value."""
    if len(text) <= limit:
        return text
    tail = f"... [cut: {len(text)} characters in all]"
    return text[:limit - len(tail)] + tail


def shown(value: Any, limit: int = _SHOWN_VALUE_MAX) -> str:
    """repr(value) for an error message, at most `limit` characters (a 1 MB value shows its start)."""
    if isinstance(value, str | bytes) and len(value) > limit * 4:
        value = value[:limit * 4]  # no repr of a megabyte only to cut it
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def validation_reason(exc: ValidationError) -> str:
    """One line per bad field: `field.path: message (got value)`, each value shown bounded."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        got = err.get("input")
        seen = "" if isinstance(got, dict | list) else f" (got {shown(got)})"
        parts.append(f"{loc}: {err['msg']}{seen}")
    return bounded("; ".join(parts))


def _record_id(payload: Any, key: str | None) -> str:
    if isinstance(payload, dict):
        for name in ("source_id", "instance", "request_id"):
            value = payload.get(name)
            if value is not None:
                return f"{name}={value}" if isinstance(value, str | int) and len(str(value)) <= 100 \
                    else f"{name}={shown(value, 40)}"
    return f"key={key}" if key is None or len(key) <= 100 else f"key={shown(key, 40)}"


# --- transient versus permanent ------------------------------------------------------------------

BACKOFF_INITIAL_S = 0.5
BACKOFF_CAP_S = 30.0
# How long one delivery waits out an outage before seeking back to the poll loop: far below
# max.poll.interval (5 min), so a long outage never costs the consumer its group membership.
OUTAGE_WAIT_PER_DELIVERY_S = 120.0
PROBE_EVERY_S = 1.0

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionRefusedError, ConnectionResetError, socket timeouts
    TimeoutError,
    asyncpg.PostgresConnectionError,  # cannot connect, connection failure
    asyncpg.InterfaceError,  # the connection was closed under the query
    asyncpg.CannotConnectNowError,  # the server is starting or shutting down
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown
    KafkaConnectionError,
)
# A file that is missing or unwritable is this machine's or the message's problem, not an outage.
_LOCAL_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
try:  # the TS gateway's HTTP client: unreachable Sistema TS
    import httpx

    _TRANSIENT_TYPES = (*_TRANSIENT_TYPES, httpx.TransportError)
except ImportError:  # pragma: no cover
    pass


def is_transient(exc: BaseException) -> bool:
    """True when `exc` (or what it was raised from) says a dependency is unreachable, not that the
    message is wrong: PostgreSQL, Kafka or Sistema TS down, a connection cut, a retriable Kafka error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _TRANSIENT_TYPES) and not isinstance(current, _LOCAL_OS_ERRORS):
            return True
        if isinstance(current, KafkaError) and getattr(current, "retriable", False):
            return True
        current = current.__cause__ or current.__context__
    return False


class _SeekBack(Exception):
    """Raised after OUTAGE_WAIT_PER_DELIVERY_S: nack (seek back) and poll again, keeping the group."""


@dataclass
class Outage:
    """Capped exponential backoff over one outage, shared by the consumer's deliveries."""

    log: Any
    what: str
    probe: Probe | None = None
    step: int = 0

    @property
    def active(self) -> bool:
        return self.step > 0

    def delay(self) -> float:
        return min(BACKOFF_INITIAL_S * 2 ** max(self.step - 1, 0), BACKOFF_CAP_S)

    async def wait(self, exc: BaseException, started: float) -> None:
        """One backoff step (one log line), then probes until the dependency answers or the step ends."""
        self.step += 1
        delay = self.delay()
        self.log.warning("dependency.unavailable", waiting=self.what, step=self.step, retry_in_s=delay,
                         error=bounded(f"{type(exc).__name__}: {exc}", LOG_REASON_MAX))
        # Probes about every second within the step (quietly): the retry comes as soon as the
        # dependency answers, not up to 30 s later.
        deadline = time.monotonic() + delay
        answered = False
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(PROBE_EVERY_S, remaining))
            if self.probe is not None and await self._answers():
                answered = True
                break
        if not answered and time.monotonic() - started > OUTAGE_WAIT_PER_DELIVERY_S:
            raise _SeekBack(self.what)

    async def _answers(self) -> bool:
        assert self.probe is not None
        try:
            await self.probe()
        except Exception as exc:
            return not is_transient(exc)
        return True

    def over(self) -> None:
        if self.step:
            self.log.info("dependency.available", waiting=self.what, after_steps=self.step)
        self.step = 0


async def wait_out(outage: Outage, step: Callable[[], Awaitable[Any]], started: float) -> None:
    """Runs `step` until it does not fail for a transient reason: an outage is waited out with `outage`'s capped
    backoff, which starts again from its first step once the dependency answers."""
    while True:
        try:
            await step()
        except Exception as exc:
            if not is_transient(exc):
                raise
            await outage.wait(exc, started)
            continue
        outage.over()
        return


async def _the_message(message: Any) -> Any:
    # The "body" a subscriber gets is the message itself: FastStream would json-decode before our code runs, and a
    # body that is not JSON would then be nacked forever, blocking the partition: we decode ourselves, inside the
    # dead-letter guard, from the raw record.
    return message


# --- poison ----------------------------------------------------------------------------------------

class Poison(Exception):
    """What is wrong with the message itself: it goes to the DLQ with this (bounded) reason."""

    def __init__(self, reason: str, data: Any = None) -> None:
        super().__init__(bounded(reason))
        self.reason = str(self)
        self.data = data


# Every consumer of this process gets the records aiokafka's reader refuses (a header name that is not UTF-8):
# `parse` refuses them, and they go to their DLQ instead of blocking their partition.
kafkarecords.install()

_KNOWN_TYPES: frozenset[str] | None = None


def _known_types() -> frozenset[str]:
    global _KNOWN_TYPES
    if _KNOWN_TYPES is None:
        _KNOWN_TYPES = frozenset(t.name for t in all_topics())
    return _KNOWN_TYPES


def _text(value: bytes | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise Poison(f"{what} is not UTF-8 (byte {exc.start} of {len(value)}: {value[exc.start:exc.start + 4]!r})") \
            from None


def message_size(raw: Any) -> int:
    """Key + value + headers, as the broker counts a record (near enough: without framing)."""
    headers = sum(len(k) + len(v or b"") for k, v in (raw.headers or []))
    return len(raw.key or b"") + len(raw.value or b"") + headers


def parse(raw: Any, topic: Topic) -> tuple[str | None, Envelope, Any, BaseModel]:
    """(key, envelope, JSON body, payload) of a raw Kafka record, or Poison saying what is wrong."""
    if (corrupt := corrupt_batch_problem(raw)) is not None:
        raise Poison(corrupt)
    key = _text(raw.key, "the key")
    for name, _ in raw.headers or ():
        if problem := header_name_problem(name):
            raise Poison(problem)
    headers = [(name, _text(value, f"header {name!r}") or "") for name, value in (raw.headers or [])]
    size = message_size(raw)
    if size > topic.max_message_bytes:
        raise Poison(f"message of {size} bytes is over the limit of {topic.max_message_bytes} bytes of {topic.name}")
    try:
        envelope = from_kafka_headers(headers)
    except EnvelopeError as exc:
        raise Poison(bounded(str(exc))) from None
    if envelope.type != topic.name:
        known = "an event type of another topic" if envelope.type in _known_types() else "not a known event type"
        raise Poison(f"ce_type {shown(envelope.type)} on {topic.name}: {known} (this topic carries {topic.name})")
    body = raw.value or b""
    try:
        data = json.loads(body)
    except RecursionError:
        raise Poison(f"body of {len(body)} bytes is JSON nested too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise Poison(f"body of {len(body)} bytes is not JSON: {bounded(str(exc), 200)}") from None
    try:
        payload = topic.payload.model_validate(data)
    except ValidationError as exc:
        raise Poison(f"invalid message {_record_id(data, key)} on {topic.name}: {validation_reason(exc)}", data) \
            from None
    except RecursionError:
        raise Poison(f"invalid message {_record_id(data, key)} on {topic.name}: nested too deeply", data) from None
    return key, envelope, data, payload


@dataclass(frozen=True)
class Decoder:
    """What a volume consumer wants of a topic's valid bodies instead of the payload model.

    `from_json(body)` validates the body's bytes against the topic's contract and returns the value (a
    row, say) without building the model; it raises (ValidationError, ValueError) on anything it does not
    accept, and must never accept what the contract refuses. `from_model(payload)` makes the same value
    from the contract model, for a message `from_json` refused and `parse` accepted."""

    from_json: Callable[[bytes], Any]
    from_model: Callable[[Any], Any]


def parse_valid(raw: Any, topic: Topic, decoder: Decoder | None = None) -> tuple[str | None, Envelope, Any]:
    """(key, envelope, payload) of a raw Kafka record: `parse`'s verdict, cheaper for the common case.

    Volume intake (services.runtime.batch) parses millions of messages: here the headers are decoded in
    one pass and the body is validated straight from its bytes (`model_validate_json`: pydantic reads
    the JSON in Rust), with the same contract model and the same validators. Anything this path does
    not accept at once (bytes that are not UTF-8, a header missing, an invalid body, a body over the
    limit) is handed to `parse`, which gives the verdict and its reason: this path never accepts what
    `parse` would refuse, it only skips `parse`'s work for the messages both accept.

    With a `decoder` the payload is the decoder's value (`from_json` of the body, or `from_model` of what
    `parse` accepted after `from_json` refused) instead of the model."""
    key, headers, time, payload = parse_checked(raw, topic, decoder)
    return key, envelope_from_text(headers, time), payload


def parse_checked(raw: Any, topic: Topic,
                  decoder: Decoder | None = None) -> tuple[str | None, dict[str, str], datetime, Any]:
    """`parse_valid` with the envelope checked but not built: (key, its headers as text, its time, payload);
    `contracts.envelope.envelope_from_text(headers, time)` is the envelope."""
    try:
        key = None if raw.key is None else raw.key.decode()
        body = raw.value or b""
        size = len(raw.key or b"") + len(body)
        headers: dict[str, str] = {}
        odd_name = False
        for name, value in raw.headers or ():
            headers[name] = value.decode() if value else ""
            size += len(name) + len(value or b"")
            if not name.isascii():  # perhaps not UTF-8 (kafkarecords): `parse` judges
                odd_name = True
        if not odd_name and size <= topic.max_message_bytes and headers.get("ce_type") == topic.name:
            time = check_envelope_text(headers)
            if decoder is None:
                return key, headers, time, topic.payload.model_validate_json(body)
            try:
                return key, headers, time, decoder.from_json(body)
            except Exception:  # whatever the decoder refuses, `parse` judges
                pass
    except (UnicodeDecodeError, EnvelopeError, ValidationError, RecursionError):
        pass
    key, envelope, _, payload = parse(raw, topic)
    # what `parse` accepted: every header is text (the last of a repeated name, as from_kafka_headers reads them)
    headers = {name: value.decode() if value else "" for name, value in raw.headers or ()}
    return key, headers, envelope.time, payload if decoder is None else decoder.from_model(payload)


async def _tolerant_parser(record: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
    """FastStream's parser decodes every header as UTF-8 and fails BEFORE the handler, on bytes that are not UTF-8
    and on a header with no value at all (Kafka allows a null one; `None.decode()`): the message would be skipped
    without a trace, and the next message's commit would pass over it. The framework gets readable copies (a null
    value as empty); `raw_message` stays the original record, whose bytes the handler checks and dead-letters."""
    try:
        return await original(record)
    except (UnicodeDecodeError, AttributeError):
        readable = [(k, (v or b"").decode(errors="replace").encode()) for k, v in record.headers or []]
        message = await original(dataclasses.replace(record, headers=readable))
        message.raw_message = record
        return message


_LOGGED_ID_MAX = 100  # a key or ce_id longer than this is shown cut in log lines


def _readable(value: bytes | None) -> str | None:
    """Bytes of a key or header as a log line shows them: decoded with replacement, bounded."""
    if value is None:
        return None
    text = value[:_LOGGED_ID_MAX * 4].decode(errors="replace")
    return text if len(text) <= _LOGGED_ID_MAX else shown(text, _LOGGED_ID_MAX)


def _header(raw: Any, name: str) -> str | None:
    return next((_readable(v) for k, v in raw.headers or [] if k == name), None)


def _bootstrap(broker: KafkaBroker) -> Any:
    return broker._connection_kwargs["bootstrap_servers"]  # the servers given to create_broker


async def dead_letter(broker: KafkaBroker, topic: Topic, raw: Any, reason: str, attempts: int,
                      group_id: str = "") -> None:
    """Publishes the ORIGINAL key, headers and value to `<topic>.dlq`, with the dlq_* headers.

    Its own producer: the bytes go untouched (FastStream would encode str headers) and its request size
    fits the DLQ topic's limit, twice the topic's. Dead letters are rare: started for each one.
    """
    producer = dead_letter_producer(_bootstrap(broker))
    await producer.start()
    try:
        await producer.send_and_wait(topic.dlq, raw.value, key=raw.key,
                                     headers=dead_letter_headers(topic, raw, reason, attempts, group_id))
    finally:
        await producer.stop()


def dead_letter_producer(bootstrap: Any) -> AIOKafkaProducer:
    """A producer whose request size fits the DLQ topics' limit (twice the topic's)."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                            max_request_size=DLQ_MAX_MESSAGE_BYTES + 64 * 1024)


def dead_letter_headers(topic: Topic, raw: Any, reason: str, attempts: int, group_id: str) -> list[tuple[str, bytes]]:
    """The original headers (less any dlq_* ones) plus the dlq_* headers saying why and from where."""
    headers = [(printable_name(k), v or b"") for k, v in raw.headers or [] if not k.startswith("dlq_")]
    if corrupt_batch_problem(raw) is not None:  # not a message: a damaged record batch's bytes (kafkarecords)
        headers.append((DLQ_CORRUPT_BATCH, b"corrupt"))
    headers += [(name, value.encode()) for name, value in (
        ("dlq_reason", bounded(reason)),
        ("dlq_original_topic", topic.name),
        ("dlq_original_partition", str(raw.partition)),
        ("dlq_original_offset", str(raw.offset)),
        ("dlq_attempts", str(attempts)),
        ("dlq_failed_at", datetime.now(UTC).isoformat()),
        ("dlq_consumer_group", group_id),
    )]
    return headers


def bind_raw(raw: Any, topic: str) -> None:
    """The log context of a message that could not be read: its key and ce_id as far as they can be read."""
    bind_message(aggregate_id=_readable(raw.key), event_id=_header(raw, "ce_id"), topic=topic,
                 partition=raw.partition, offset=raw.offset)


def consume(broker: KafkaBroker, topic: Topic, *, group_id: str, handler: Handler, max_attempts: int = 3,
            retry_delay: float = 0.2, on_invalid: InvalidHook | None = None, probe: Probe | None = None) -> None:
    """Subscribes `handler(payload_model, incoming)` to `topic` with validation, retries and a DLQ.

    `probe` (e.g. SELECT 1 on the pool) is awaited between backoff steps of an outage.
    """
    log = get_logger(group_id)
    outage = Outage(log, f"dependencies of {group_id}", probe)

    async def patiently(step: Callable[[], Awaitable[None]], started: float) -> None:
        await wait_out(outage, step, started)

    async def reject(raw: Any, key: str | None, poison: Poison, started: float) -> None:
        reason = poison.reason
        log.warning("message.rejected", reason=bounded(reason, LOG_REASON_MAX), offset=raw.offset,
                    partition=raw.partition, topic=topic.name)
        if on_invalid is not None:
            hook = on_invalid

            async def run_hook() -> None:
                await hook(_record_id(poison.data, key), poison.data, reason)
            try:
                await patiently(run_hook, started)
            except _SeekBack:
                raise
            except Exception as exc:  # a failing hook must not block the partition: the DLQ says so
                reason = bounded(f"{reason} (and the rejection hook failed: {type(exc).__name__}: "
                                 f"{bounded(str(exc), 300)})")
        await patiently(partial(dead_letter, broker, topic, raw, reason, attempts=0, group_id=group_id), started)

    @broker.subscriber(topic.name, group_id=group_id, ack_policy=AckPolicy.NACK_ON_ERROR,
                       auto_offset_reset="earliest", isolation_level=ISOLATION_LEVEL, title=f"{group_id}:{topic.name}",
                       description=topic.description, decoder=_the_message, parser=_tolerant_parser)
    async def _on_message(message: KafkaMessage) -> None:  # the decoder's value, given as is (apply_types=False)
        try:
            await deliver(message)
        except _SeekBack:
            # Still waiting for a dependency: rewind to this message (no commit) and go back to the poll
            # loop, so the group does not consider this consumer dead; the backoff step is kept.
            raw: Any = message.raw_message
            log.info("message.seek_back", offset=raw.offset, partition=raw.partition)
            await message.nack()

    async def deliver(message: KafkaMessage) -> None:
        try:
            await _deliver(message.raw_message)
        finally:
            forget_message()

    async def _deliver(raw: Any) -> None:
        # Every line about this message names it (key and ce_id as far as they can be read, even from a
        # poison message) and no line names the previous one: the context is replaced once the message is read
        # (parsing logs nothing) and cleared after (deliver).
        started = time.monotonic()
        try:
            # parse's verdict; a valid body validated from its bytes, the headers decoded once (parse_valid)
            key, envelope, payload = parse_valid(raw, topic)
        except Poison as poison:
            bind_raw(raw, topic.name)
            await reject(raw, raw.key.decode(errors="replace") if raw.key else None, poison, started)
            return
        except Exception as exc:  # whatever else the bytes can do to a parser is still the message's fault
            bind_raw(raw, topic.name)
            await reject(raw, None, Poison(f"unreadable message: {type(exc).__name__}: {bounded(str(exc), 300)}"),
                         started)
            return
        incoming = Incoming(envelope, key, topic.name, raw.partition, raw.offset)
        bind_message(aggregate_id=key, event_id=envelope.id, topic=topic.name, partition=raw.partition,
                     offset=raw.offset)
        # One CONSUMER span per delivery, continuing the message's ce_traceparent: what the handler
        # appends carries it on (EventStore.append stores the current span's context).
        with tracing.tracer().start_as_current_span(
                f"consume {topic.name}", context=tracing.extract(envelope.extensions),
                kind=tracing.trace.SpanKind.CONSUMER,
                attributes={"messaging.system": "kafka", "messaging.destination.name": topic.name,
                            "messaging.consumer.group.name": group_id, "messaging.message.id": envelope.id,
                            "messaging.kafka.message.key": key or "", "messaging.kafka.offset": raw.offset,
                            "messaging.destination.partition.id": str(raw.partition)}):
            await handle(payload, incoming, raw, started)

    async def handle(payload: BaseModel, incoming: Incoming, raw: Any, started: float) -> None:
        attempt = 0
        while True:
            try:
                await handler(payload, incoming)
                outage.over()
                return
            except Refused as exc:
                reason = bounded(f"refused: {exc}")
                log.warning("message.refused", reason=bounded(reason, LOG_REASON_MAX))
                await patiently(partial(dead_letter, broker, topic, raw, reason, attempts=attempt + 1,
                                        group_id=group_id), started)
                return
            except Exception as exc:
                if is_transient(exc):  # the dependency, not the message: wait, do not count the attempt
                    await outage.wait(exc, started)
                    continue
                attempt += 1
                error = bounded(f"{type(exc).__name__}: {exc}", LOG_REASON_MAX)
                log.warning("message.failed", attempt=attempt, error=error)
                if attempt >= max_attempts:
                    reason = bounded(f"processing failed {attempt} times: {type(exc).__name__}: {exc}")
                    await patiently(partial(dead_letter, broker, topic, raw, reason, attempts=attempt,
                                            group_id=group_id), started)
                    log.error("message.dead_lettered", reason=bounded(reason, LOG_REASON_MAX))
                    return
                await asyncio.sleep(retry_delay * 2 ** (attempt - 1))
