"""What the regional ops team watches: CloudEvents decoded through the contracts, consumer lag.

Everything here reads as an observer (services.runtime.kafkaread): no group id, no commit.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from contracts.deadlines import italian_time
from contracts.envelope import EnvelopeError, from_kafka_headers
from contracts.topics import DLQ_SUFFIX, all_topics, by_name
from services.runtime.kafkaadmin import admin_client
from services.runtime.kafkagroups import GroupState, describe_groups
from services.runtime.kafkaread import (
    add_new_partitions,
    assign,
    history,
    observer,
    offset_ranges,
    order_key,
    read_to_end,
)
from services.runtime.kafkarecords import corrupt_batch_problem, printable_name

# --- decoding -----------------------------------------------------------------------------------

_ACTOR_FIELDS = ("requested_by", "actor", "operator", "decided_by", "assessed_by")
_SUMMARY_SKIP = {"schema_version", "request_id", "period", "files", "problems", "errors", "sealed", "box"}


def summarise(data: dict[str, Any], width: int = 160) -> str:
    """A payload in one line: its telling fields as name=value, lists counted."""
    parts = []
    for name, value in data.items():
        if name in _SUMMARY_SKIP or name in _ACTOR_FIELDS or value is None:
            continue
        if isinstance(value, dict | list):
            value = f"{len(value)} item(s)" if isinstance(value, list) else json.dumps(value, sort_keys=True)
        parts.append(f"{name}={value}")
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class Seen:
    """One record as the ops tools show it; `problem` is set when it could not be decoded."""

    topic: str
    partition: int
    offset: int
    timestamp: datetime
    key: str | None
    headers: dict[str, str]
    body: bytes
    id: str | None = None
    type: str | None = None
    source: str | None = None
    subject: str | None = None
    time: datetime | None = None
    data: dict[str, Any] | None = None
    problem: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def instance(self) -> int | None:
        value = (self.data or {}).get("instance")
        if isinstance(value, int):
            return value
        if self.type and self.type.startswith("flows.") and self.subject and self.subject.isdigit():
            return int(self.subject)
        return None

    @property
    def actor(self) -> str:
        for name in _ACTOR_FIELDS:
            if isinstance((self.data or {}).get(name), str):
                return str((self.data or {})[name])
        return (self.source or "?").rsplit("/", 1)[-1]

    def summary(self, width: int = 160) -> str:
        if self.problem:
            return f"UNDECODABLE: {self.problem}"
        return summarise(self.data or {}, width)

    def line(self) -> str:
        when = italian_time(self.time or self.timestamp)  # Italy's, as `flows show` and the console (README)
        kind = self.type or self.topic
        return f"{when}  {kind:<30} {self.subject or self.key or '-':<8} {self.actor:<12} {self.summary()}"

    def as_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "key": self.key,
                "id": self.id, "type": self.type, "source": self.source, "subject": self.subject,
                "time": (self.time or self.timestamp).isoformat(), "data": self.data, "problem": self.problem,
                "headers": self.headers, **self.extra}


def decode_headers(raw: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {printable_name(k): (v.decode(errors="replace") if isinstance(v, bytes) else str(v)) for k, v in (raw or [])}


def decode(record: Any) -> Seen:
    """A Kafka record decoded through the contracts; never raises (a bad one says why)."""
    headers = decode_headers(record.headers)
    key = record.key.decode(errors="replace") if isinstance(record.key, bytes) else record.key
    base = dict(topic=record.topic, partition=record.partition, offset=record.offset,
                timestamp=datetime.fromtimestamp(record.timestamp / 1000, UTC), key=key, headers=headers,
                body=bytes(record.value or b""))
    if (corrupt := corrupt_batch_problem(record)) is not None:  # a record batch damaged on a broker (kafkarecords)
        return Seen(**base, problem=corrupt)  # type: ignore[arg-type]
    try:
        envelope = from_kafka_headers(headers)
    except EnvelopeError as exc:
        return Seen(**base, problem=str(exc))  # type: ignore[arg-type]
    known = dict(id=envelope.id, type=envelope.type, source=envelope.source, subject=envelope.subject,
                 time=envelope.time)
    try:
        data = json.loads(base["body"])  # type: ignore[arg-type]
    except ValueError as exc:
        return Seen(**base, **known, problem=f"body is not JSON: {exc}")  # type: ignore[arg-type]
    topic_name = record.topic.removesuffix(DLQ_SUFFIX)
    try:
        by_name(topic_name).payload.model_validate(data)
    except KeyError:
        pass  # a topic the contracts do not know: shown as it is
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        return Seen(**base, **known, data=data if isinstance(data, dict) else None,  # type: ignore[arg-type]
                    problem=f"does not match {topic_name}: {where}: {first['msg']}")
    return Seen(**base, **known, data=data if isinstance(data, dict) else {"value": data})  # type: ignore[arg-type]


# --- tail ---------------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)\s*([smhd])$")


def parse_since(text: str) -> datetime:
    """`10m`, `2h`, `3d`, `30s` ago, or an ISO date-time."""
    found = _DURATION.match(text.strip())
    if found:
        amount, unit = int(found.group(1)), found.group(2)
        seconds = amount * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r} is neither a duration like 10m, 2h, 3d nor an ISO date-time") from None
    return when if when.tzinfo else when.astimezone()


def business_topics() -> list[str]:
    return [t.name for t in all_topics()]


@dataclass
class TailFilter:
    instance: int | None = None
    ente: str | None = None
    type: str | None = None
    # the entity of each instance seen so far: most events after load-running do not repeat it
    _ente_of: dict[int, str] = field(default_factory=dict)

    def accepts(self, seen: Seen) -> bool:
        instance = seen.instance
        ente = (seen.data or {}).get("ente")
        if instance is not None and isinstance(ente, str):
            self._ente_of[instance] = ente
        if self.instance is not None and instance != self.instance:
            return False
        if self.type is not None and not (seen.type or seen.topic).startswith(self.type):
            return False
        if self.ente is not None:
            known = ente if isinstance(ente, str) else self._ente_of.get(instance) if instance is not None else None
            if known != self.ente:
                return False
        return True


async def tail(bootstrap: str, topics: Sequence[str], flt: TailFilter, *, from_beginning: bool = False,
               since: datetime | None = None,
               on_ready: Callable[[list[TopicPartition]], Awaitable[None] | None] | None = None,
               rescan_s: float = 2.0) -> AsyncGenerator[Seen, None]:
    """Follows `topics` and yields the records `flt` accepts, forever. A topic created meanwhile (its
    first message) is picked up within `rescan_s` and read from its beginning. `on_ready(parts)` is called (and
    awaited, if it answers an awaitable) once the partitions are assigned, before any record is read."""
    async with observer(bootstrap) as consumer:
        since_ms = int(since.timestamp() * 1000) if since else None
        parts = await assign(consumer, topics, from_beginning=from_beginning, since_ms=since_ms)
        if on_ready is not None and (ready := on_ready(parts)) is not None:
            await ready  # e.g. `flows tail` recording its read before any record is read (services/cli/personal.py)
        if parts and (from_beginning or since is not None):
            async for record in history(consumer, parts):
                seen = decode(record)
                if flt.accepts(seen):
                    yield seen
        loop = asyncio.get_running_loop()
        rescan_at = loop.time() + rescan_s
        while True:
            if loop.time() >= rescan_at:
                await add_new_partitions(consumer, topics)
                rescan_at = loop.time() + rescan_s
            if not consumer.assignment():
                await asyncio.sleep(rescan_s)
                continue
            batches = await consumer.getmany(timeout_ms=500)
            records = sorted((r for batch in batches.values() for r in batch), key=order_key)
            for record in records:
                seen = decode(record)
                if flt.accepts(seen):
                    yield seen


# --- lag ------------------------------------------------------------------------------------------

# How long `flows lag` asks again for a group's coordinator (it moves when a broker stops) before it gives up.
GROUP_COORDINATOR_WAIT_S = 15.0


@dataclass(frozen=True)
class Lag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int
    last_commit: datetime | None

    @property
    def lag(self) -> int:
        return max(self.end - self.committed, 0)


def _offset_commit_key(key: bytes) -> tuple[str, str, int] | None:
    """(group, topic, partition) of a `__consumer_offsets` key, None for a group-metadata key."""
    (version,) = struct.unpack_from(">h", key, 0)
    if version not in (0, 1):
        return None
    at = 2
    parts = []
    for _ in range(2):
        (length,) = struct.unpack_from(">h", key, at)
        parts.append(key[at + 2: at + 2 + length].decode())
        at += 2 + length
    (partition,) = struct.unpack_from(">i", key, at)
    return parts[0], parts[1], partition


async def commit_times(bootstrap: str) -> dict[tuple[str, str, int], datetime]:
    """When each (group, topic, partition) last committed: the time its commit record was appended to
    `__consumer_offsets` (Kafka's offset fetch does not return it)."""
    times: dict[tuple[str, str, int], datetime] = {}
    for record in await read_to_end(bootstrap, ["__consumer_offsets"]):
        if record.key is None or record.value is None:
            continue
        try:
            where = _offset_commit_key(record.key)
        except (struct.error, UnicodeDecodeError):
            continue
        if where is not None:
            times[where] = datetime.fromtimestamp(record.timestamp / 1000, UTC)
    return times


async def _committed(admin: AIOKafkaAdminClient, groups: Sequence[str] | None) -> dict[str, dict[TopicPartition, int]]:
    """The consumer groups the brokers know (only `groups` when given), each with the offsets it committed."""
    names = sorted({g[0] for g in await admin.list_consumer_groups()})
    if groups:
        names = [g for g in names if g in groups]
    committed: dict[str, dict[TopicPartition, int]] = {}
    for group in names:
        offsets = await admin.list_consumer_group_offsets(group)
        committed[group] = {tp: om.offset for tp, om in offsets.items() if om.offset >= 0}
    return committed


async def _lags(bootstrap: str, committed: dict[str, dict[TopicPartition, int]], with_commit_times: bool) -> list[Lag]:
    parts = sorted({tp for per in committed.values() for tp in per})
    ends: dict[TopicPartition, int] = {}
    if parts:
        async with observer(bootstrap) as consumer:
            _, ends = await offset_ranges(consumer, parts)
    times = await commit_times(bootstrap) if parts and with_commit_times else {}
    return [Lag(group, tp.topic, tp.partition, offset, ends.get(tp, offset), times.get((group, tp.topic, tp.partition)))
            for group, per in committed.items() for tp, offset in sorted(per.items())]


async def consumer_lag(bootstrap: str, groups: Sequence[str] | None = None, *,
                       with_commit_times: bool = True) -> list[Lag]:
    """Committed offset, end offset and lag of every partition each consumer group committed on
    (commit times read `__consumer_offsets` whole: the metrics exporter goes without)."""
    admin = admin_client(bootstrap, client_id="flows-lag")
    await admin.start()
    try:
        committed = await _committed(admin, groups)
    finally:
        await admin.close()
    return await _lags(bootstrap, committed, with_commit_times)


@dataclass(frozen=True)
class GroupLag:
    """One consumer group as `flows lag` shows it: Kafka's state and members beside its committed offsets."""

    described: GroupState
    partitions: list[Lag]  # the partitions it committed on, in (topic, partition) order

    @property
    def group(self) -> str:
        return self.described.group

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def unheld(self) -> list[Lag]:
        """The partitions with lag that no member holds while the group has members (Stable): nobody reads them."""
        if not self.described.members or self.described.state != "Stable":
            return []
        return [p for p in self.partitions if p.lag and self.described.holder(p.topic, p.partition) is None]

    def mark(self) -> str | None:
        """NOBODY_CONSUMING, NO_MEMBER or None: the first words of `warning`."""
        warning = self.warning()
        return None if warning is None else warning.partition(":")[0]

    def warning(self) -> str | None:
        """What an operator must not miss (None: nothing): a group with committed offsets and no member (its service
        is not running, or cannot reach Kafka), above all one with lag (nobody consumes its messages), or a group
        whose members leave partitions with lag unheld."""
        if self.described.members:
            if unheld := self.unheld:
                return (f"{NOBODY_CONSUMING}: lag {sum(p.lag for p in unheld)} on {len(unheld)} partition(s) that no "
                        "member holds")
            return None
        if self.lag:
            return f"{NOBODY_CONSUMING}: lag {self.lag} and no member; is its service running? (`flows stack status`)"
        if self.partitions:
            return f"{NO_MEMBER}: offsets committed, lag 0; its service is not running, or not connected"
        return None


# The marks `flows lag` puts on a group (GroupLag.warning), first in its line: what a runbook or a grep looks for.
NOBODY_CONSUMING = "NOBODY CONSUMING"
NO_MEMBER = "NO MEMBER"


async def consumer_groups(bootstrap: str, groups: Sequence[str] | None = None) -> list[GroupLag]:
    """Every consumer group the brokers know (only `groups` when given), in name order, with its state, its members
    and the partitions each holds (services.runtime.kafkagroups), and its lag per partition with the commit times."""
    admin = admin_client(bootstrap, client_id="flows-lag")
    await admin.start()
    try:
        committed = await _committed(admin, groups)
        described = await describe_groups(admin, committed, coordinator_wait_s=GROUP_COORDINATOR_WAIT_S)
    finally:
        await admin.close()
    lags = await _lags(bootstrap, committed, with_commit_times=True)
    return [GroupLag(described[group], [lag for lag in lags if lag.group == group]) for group in committed]
