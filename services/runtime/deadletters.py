"""Dead letters: list, show, redrive, discard (issue 13, item 2).

A dead letter is named `<dlq topic>:<partition>:<offset>`. What it says comes from the headers the
consumer wrote (services.runtime.broker.dead_letter: dlq_reason, dlq_original_topic,
dlq_original_partition, dlq_original_offset, dlq_attempts, dlq_failed_at, dlq_consumer_group);
any of them may be missing and is then shown as unknown.

A decision about a dead letter (redriven or discarded) is the one event of its own stream
`dead-letter-<id>`, appended through the event store (hash-chained, covered by the checkpoints)
with expected version 0: a second decision about the same dead letter is a concurrency conflict,
so it is refused even when two operators try at the same moment. A redrive writes, in that same
transaction, an outbox row for the original topic with the original key and body and a new ce_id
(the decision event's id): the relay publishes it exactly when the decision commits, never twice,
never lost.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import TopicPartition

from contracts.audit import DeadLetterDiscarded, DeadLetterRedriven
from contracts.topics import DLQ_SUFFIX
from services.runtime import outbox
from services.runtime.eventstore import ConcurrencyError, EventStore, NewEvent, StoredEvent
from services.runtime.kafkaread import existing_topics, observer, offset_ranges, read_to_end
from services.runtime.kafkarecords import DLQ_CORRUPT_BATCH
from services.runtime.ops import decode_headers

STREAM_PREFIX = "dead-letter-"
REDRIVEN, DISCARDED = "ops.dead-letter-redriven", "ops.dead-letter-discarded"
_DLQ_HEADERS = ("dlq_reason", "dlq_original_topic", "dlq_original_partition", "dlq_original_offset",
                "dlq_attempts", "dlq_failed_at", "dlq_consumer_group", DLQ_CORRUPT_BATCH)


@dataclass(frozen=True)
class DeadLetter:
    topic: str  # the .dlq topic
    partition: int
    offset: int
    timestamp: datetime
    key: str | None
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        """The service's reason as recorded (the CLI's English fallback when none was); the console says its own."""
        return self.recorded_reason or "(no reason recorded)"

    @property
    def recorded_reason(self) -> str | None:
        return self.headers.get("dlq_reason") or None

    @property
    def original_topic(self) -> str:
        return self.headers.get("dlq_original_topic") or self.topic.removesuffix(DLQ_SUFFIX)

    def _int(self, name: str) -> int | None:
        value = self.headers.get(name, "")
        return int(value) if value.lstrip("-").isdigit() else None

    @property
    def original_partition(self) -> int | None:
        return self._int("dlq_original_partition")

    @property
    def original_offset(self) -> int | None:
        return self._int("dlq_original_offset")

    @property
    def attempts(self) -> int | None:
        return self._int("dlq_attempts")

    @property
    def failed_at(self) -> datetime:
        text = self.headers.get("dlq_failed_at")
        if text:
            try:
                return datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                pass
        return self.timestamp

    @property
    def group(self) -> str | None:
        return self.headers.get("dlq_consumer_group")

    def original_headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if k not in _DLQ_HEADERS}

    def body_text(self, limit: int = 4000) -> str:
        """The body as people read it: indented JSON, else the repr of its first `limit` bytes."""
        try:
            return json.dumps(json.loads(self.body), indent=2, ensure_ascii=False)
        except ValueError:
            return repr(self.body[:limit])


def _from_record(record: Any) -> DeadLetter:
    key = record.key.decode(errors="replace") if isinstance(record.key, bytes) else record.key
    return DeadLetter(record.topic, record.partition, record.offset,
                      datetime.fromtimestamp(record.timestamp / 1000, UTC), key, decode_headers(record.headers),
                      bytes(record.value or b""))


def parse_id(text: str) -> tuple[str, int, int]:
    topic, _, rest = text.rpartition(":")
    topic, _, partition = topic.rpartition(":")
    if not (topic.endswith(DLQ_SUFFIX) and partition.isdigit() and rest.isdigit()):
        raise ValueError(f"dead letter id {text!r} is not <topic>.dlq:<partition>:<offset>, "
                         "e.g. flows.format-requested.dlq:0:12 (`flows dlq list` shows them)")
    return topic, int(partition), int(rest)


def dlq_topic(name: str) -> str:
    return name if name.endswith(DLQ_SUFFIX) else name + DLQ_SUFFIX


async def list_letters(bootstrap: str, topic: str | None = None) -> list[DeadLetter]:
    """Every dead letter on `topic`'s dlq (or on every `.dlq` topic), oldest first."""
    async with observer(bootstrap) as consumer:
        known = await existing_topics(consumer)
    names = [dlq_topic(topic)] if topic else sorted(t for t in known if t.endswith(DLQ_SUFFIX))
    names = [n for n in names if n in known]
    return [_from_record(r) for r in await read_to_end(bootstrap, names)] if names else []


@dataclass(frozen=True)
class DlqTopic:
    """A `.dlq` topic and how many dead letters it holds (from its offsets: nothing is read)."""

    topic: str
    count: int
    ends: dict[int, tuple[int, int]]  # partition -> (first offset, end offset)

    def holds(self, letter_id: str) -> bool:
        topic, partition, offset = parse_id(letter_id)
        first, end = self.ends.get(partition, (0, 0))
        return topic == self.topic and first <= offset < end


async def dlq_topics(bootstrap: str) -> list[DlqTopic]:
    """Every `.dlq` topic with its count of dead letters, by name: cheap enough for a page, since only
    offsets are asked (the letters themselves are read by `list_letters` for one topic)."""
    async with observer(bootstrap) as consumer:
        known = await existing_topics(consumer)
        parts = [TopicPartition(t, p) for t in sorted(known) if t.endswith(DLQ_SUFFIX) for p in known[t]]
        begins, ends = await offset_ranges(consumer, parts)
    found: dict[str, dict[int, tuple[int, int]]] = {}
    for tp in parts:
        found.setdefault(tp.topic, {})[tp.partition] = (begins[tp], ends[tp])
    return [DlqTopic(t, sum(end - first for first, end in per.values()), per) for t, per in found.items()]


async def fetch(bootstrap: str, letter_id: str, timeout_ms: int = 10_000) -> DeadLetter:
    topic, partition, offset = parse_id(letter_id)
    async with observer(bootstrap) as consumer:
        known = await existing_topics(consumer)
        if partition not in known.get(topic, []):
            raise ValueError(f"no dead letter {letter_id}: topic {topic} has no partition {partition}")
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        ends = await consumer.end_offsets([tp])
        begins = await consumer.beginning_offsets([tp])
        if not begins[tp] <= offset < ends[tp]:
            held = (f"holds offsets {begins[tp]} to {ends[tp] - 1}" if begins[tp] < ends[tp] else
                    "holds no dead letter" + (f" (its {ends[tp]} were deleted by retention)" if ends[tp] else ""))
            raise ValueError(f"no dead letter {letter_id}: {topic} partition {partition} {held}")
        consumer.seek(tp, offset)
        batches = await consumer.getmany(tp, timeout_ms=timeout_ms)
        for record in batches.get(tp, []):
            if record.offset == offset:
                return _from_record(record)
    raise ValueError(f"dead letter {letter_id} could not be read within {timeout_ms / 1000:.0f} s")


def stream_of(letter_id: str) -> str:
    return STREAM_PREFIX + letter_id


async def decisions(store: EventStore) -> dict[str, StoredEvent]:
    """dead letter id -> the decision recorded about it."""
    found = {}
    for stream in await store.list_streams(STREAM_PREFIX):
        history = await store.read_stream(stream)
        if history:
            found[stream.removeprefix(STREAM_PREFIX)] = history[0]
    return found


class NotRedrivable(ValueError):
    """The message cannot go back to its topic: `cause` is "no-key", "not-json" or "corrupt-batch"; discard it
    instead."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class AlreadyDecided(ValueError):
    """A second decision about a dead letter; `decision` is the first one when it could be read."""

    def __init__(self, message: str, decision: StoredEvent | None = None) -> None:
        super().__init__(message)
        self.decision = decision


async def decision_about(store: EventStore, letter_id: str) -> StoredEvent | None:
    """The decision recorded about one dead letter, if any."""
    history = await store.read_stream(stream_of(letter_id))
    return history[0] if history else None


async def _refuse_if_decided(store: EventStore, letter_id: str) -> None:
    decided = await decision_about(store, letter_id)
    if decided is not None:
        raise AlreadyDecided(_decided_message(letter_id, decided), decided)


def _decided_message(letter_id: str, event: StoredEvent) -> str:
    what = "redriven" if event.type == REDRIVEN else "discarded"
    return (f"dead letter {letter_id} was already {what} by {event.actor} at "
            f"{event.recorded_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC: a dead letter is acted on once only")


async def redrive(pool: asyncpg.Pool, store: EventStore, letter: DeadLetter, by: str) -> DeadLetterRedriven:
    """Records the redrive and queues the original message (new ce_id) for the outbox relay, atomically."""
    if letter.headers.get(DLQ_CORRUPT_BATCH):
        raise NotRedrivable(f"cannot redrive {letter.id}: it is a record batch damaged on a broker, not a message "
                            "(its value is the batch's bytes as they were fetched); its records must be sent again by "
                            "their producer; discard it with `flows dlq discard --reason`", "corrupt-batch")
    await _refuse_if_decided(store, letter.id)
    if not letter.key:
        raise NotRedrivable(f"cannot redrive {letter.id}: it has no key, and its original topic "
                            f"{letter.original_topic} is keyed by aggregate", "no-key")
    try:
        body = json.loads(letter.body)
    except ValueError as exc:
        raise NotRedrivable(f"cannot redrive {letter.id}: its body is not JSON ({exc}); no consumer can read it, "
                            "discard it with `flows dlq discard --reason`", "not-json") from None
    new_id = uuid.uuid4()
    fact = DeadLetterRedriven(dead_letter=letter.id, original_topic=letter.original_topic,
                              original_partition=letter.original_partition, original_offset=letter.original_offset,
                              key=letter.key, new_id=str(new_id), reason=letter.reason, by=by)
    headers = {**letter.original_headers(), "ce_id": str(new_id), "ce_redrivenfrom": letter.id}
    async with pool.acquire() as conn, conn.transaction():
        try:
            await store.append(stream_of(letter.id), [NewEvent(REDRIVEN, fact.model_dump(mode="json"), id=new_id,
                                                               actor=by)],
                               expected_version=0, key=letter.id, conn=conn, publish=False)
        except ConcurrencyError:
            raise AlreadyDecided(f"dead letter {letter.id} was acted on by someone else just now: "
                                 "a dead letter is acted on once only") from None
        await conn.execute(
            "INSERT INTO outbox (event_id, topic, key, headers, payload) VALUES ($1, $2, $3, $4, $5)",
            new_id, letter.original_topic, letter.key,
            json.dumps([[k, v] for k, v in headers.items()], ensure_ascii=False), _as_text(letter.body, body))
        await conn.execute("SELECT pg_notify($1, '')", outbox.NOTIFY_CHANNEL)
    return fact


def _as_text(body: bytes, parsed: object) -> str:
    """The original body as the outbox's text: byte for byte when it is UTF-8 (as every producer of ours writes),
    else the JSON it holds, written again in ASCII (json reads UTF-16 and UTF-32 too)."""
    try:
        return body.decode()
    except UnicodeDecodeError:
        return json.dumps(parsed)


async def discard(store: EventStore, letter_id: str, original_topic: str | None, reason: str,
                  by: str) -> DeadLetterDiscarded:
    if not reason.strip():
        raise ValueError("discard: --reason is empty; say why the dead letter is not to be processed")
    await _refuse_if_decided(store, letter_id)
    fact = DeadLetterDiscarded(dead_letter=letter_id, original_topic=original_topic, reason=reason, by=by)
    try:
        await store.append(stream_of(letter_id), [NewEvent(DISCARDED, fact.model_dump(mode="json"), actor=by)],
                           expected_version=0, key=letter_id, publish=False)
    except ConcurrencyError:
        raise AlreadyDecided(f"dead letter {letter_id} was acted on by someone else just now") from None
    return fact


async def published(pool: asyncpg.Pool, new_id: str) -> bool:
    return bool(await pool.fetchval("SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1",
                                    uuid.UUID(new_id)))
