"""Provision the Kafka topics from the topic registry (contracts/topics.py): `flows topics apply|list`.

The brokers never auto-create a topic (deploy/localstack/kafka.py sets auto.create.topics.enable=false and
the services' clients do not ask): every topic a service produces to or consumes from exists because
this module created it, with

- the partitions of the `topic_partitions` setting (FLOWS_TOPIC_PARTITIONS, default 6);
- replication factor min(3, live brokers), and min.insync.replicas 2 when there are 3 or more, so
  `acks=all` means two copies and one broker may be down;
- retention.ms and max.message.bytes of the registry, for every topic and its `.dlq` twin.

Idempotent: a second apply creates what is missing, grows a topic that has fewer partitions, and sets
the configs again; it never deletes a topic nor shrinks one (Kafka cannot), and it reports a topic
whose replication factor differs from the wanted one (changing it needs a reassignment: an operator's
decision, not an apply's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

from contracts.topics import DLQ_MAX_MESSAGE_BYTES, DLQ_RETENTION_MS, Topic, all_topics
from services.runtime.kafkaadmin import admin_client

TOPIC_ALREADY_EXISTS = 36


class TopicsError(RuntimeError):
    """The cluster refused part of the provisioning; the message names the topic and Kafka's error."""


@dataclass(frozen=True)
class TopicSpec:
    """What a topic must look like on the cluster."""

    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


@dataclass
class TopicState:
    """What a topic looks like on the cluster, and what `apply` did to it."""

    name: str
    partitions: int | None = None
    replication_factor: int | None = None
    configs: dict[str, str] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wanted_topics(partitions: int, brokers: int, topics: Sequence[Topic] | None = None) -> list[TopicSpec]:
    """Every registry topic (`topics`: those, default every one) and its `.dlq` twin, for a cluster of ``brokers``
    brokers."""
    if partitions < 1:
        raise ValueError(f"topic partitions must be at least 1, got {partitions}")
    if brokers < 1:
        raise ValueError("the Kafka cluster reports no broker")
    rf = min(3, brokers)
    common = {"min.insync.replicas": "2"} if rf >= 3 else {"min.insync.replicas": "1"}
    specs = []
    for topic in all_topics() if topics is None else topics:
        specs.append(TopicSpec(topic.name, partitions, rf, {
            **common, "retention.ms": str(topic.retention_ms), "max.message.bytes": str(topic.max_message_bytes)}))
        specs.append(TopicSpec(topic.dlq, partitions, rf, {
            **common, "retention.ms": str(DLQ_RETENTION_MS), "max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}))
    return specs


def _raise_errors(what: str, errors: list[tuple[str, int, str | None]], tolerated: tuple[int, ...] = ()) -> None:
    bad = [(name, code, message) for name, code, message in errors if code and code not in tolerated]
    if bad:
        lines = [f"{name}: {for_code(code).__name__} {message or ''}".rstrip() for name, code, message in bad]
        raise TopicsError(f"could not {what}: " + "; ".join(lines))


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, TopicState]:
    """Partitions and replication factor of the named topics that exist (others are left out)."""
    found: dict[str, TopicState] = {}
    for meta in await admin.describe_topics(names):
        if meta["error_code"] or not meta["partitions"]:
            continue
        replicas = {len(p["replicas"]) for p in meta["partitions"]}
        found[meta["topic"]] = TopicState(meta["topic"], len(meta["partitions"]), max(replicas))
    if found:
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in found]
        for response in await admin.describe_configs(resources):
            for _code, _msg, _rtype, name, entries in response.resources:
                if name in found:
                    # (name, value, read_only, is_default/config_source, is_sensitive, ...): overrides only
                    found[name].configs = {e[0]: e[1] for e in entries if e[0] in _REPORTED}
    return found


_REPORTED = ("retention.ms", "max.message.bytes", "min.insync.replicas")


async def _settled(admin: AIOKafkaAdminClient, specs: list[TopicSpec], wait_s: float = 15.0) -> dict[str, TopicState]:
    """The topics' state once the metadata shows what was just created, grown or reconfigured (a broker
    learns it from the controller a moment later); after ``wait_s`` what is seen is returned and the
    differences become warnings."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        found = await _describe(admin, [s.name for s in specs])
        complete = len(found) == len(specs) and all(
            (found[s.name].partitions or 0) >= s.partitions
            and all(found[s.name].configs.get(k) == v for k, v in s.configs.items()) for s in specs)
        if complete or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.3)


async def _visible(admin: AIOKafkaAdminClient, names: list[str], wait_s: float = 15.0) -> dict[str, TopicState]:
    """The named topics, which the controller says exist, once the metadata shows them."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        found = await _describe(admin, names)
        if len(found) == len(names):
            return found
        if asyncio.get_running_loop().time() > deadline:
            missing = sorted(set(names) - set(found))
            raise TopicsError(f"the cluster says {', '.join(missing)} exist but does not show them "
                              f"after {wait_s:.0f} s")
        await asyncio.sleep(0.3)


async def _brokers(admin: AIOKafkaAdminClient) -> int:
    cluster = await admin.describe_cluster()
    return len(cluster["brokers"])


def _admin(bootstrap: str) -> AIOKafkaAdminClient:
    return admin_client(bootstrap, client_id="flows-topics", request_timeout_ms=30_000)


async def apply_topics(bootstrap: str, partitions: int, topics: Sequence[Topic] | None = None) -> list[TopicState]:
    """Create, grow and configure every registry topic (`topics`: those); returns each topic's state after the
    apply."""
    admin = _admin(bootstrap)
    await admin.start()
    try:
        specs = wanted_topics(partitions, await _brokers(admin), topics)
        existing = await _describe(admin, [s.name for s in specs])
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs) for s in missing])
            errors = [(e[0], e[1], e[2] if len(e) > 2 else None) for e in response.topic_errors]
            _raise_errors("create topics", errors, tolerated=(TOPIC_ALREADY_EXISTS,))
            # "already exists" for a topic the describe did not show: a concurrent apply created it, or the
            # broker's metadata had not caught up with a creation yet. It exists with whatever partitions and
            # configs its creator gave it, so it is grown and configured like any existing topic.
            raced = [name for name, code, _m in errors if code == TOPIC_ALREADY_EXISTS]
            if raced:
                existing.update(await _visible(admin, raced))
        grow = {s.name: NewPartitions(s.partitions) for s in specs
                if s.name in existing and (existing[s.name].partitions or 0) < s.partitions}
        if grow:
            await admin.create_partitions(grow)
        # AlterConfigs replaces a topic's overrides as a whole: the registry's set is the whole set.
        present = [s for s in specs if s.name in existing]
        if present:
            responses = await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, s.name, configs=s.configs) for s in present])
            _raise_errors("set topic configs",
                          [(r[3], r[0], r[1]) for resp in responses for r in resp.resources])
        after = await _settled(admin, specs)
        result = []
        for spec in specs:
            state = after.get(spec.name) or TopicState(spec.name)
            before = existing.get(spec.name)
            if before is None:
                state.actions.append("created")
            else:
                if spec.name in grow:
                    state.actions.append(f"partitions {before.partitions} -> {spec.partitions}")
                changed = sorted(k for k, v in spec.configs.items() if before.configs.get(k) != v)
                if changed:
                    state.actions.append("configs set: " + ", ".join(changed))
            if state.partitions is None:
                state.warnings.append("not visible in the cluster metadata after apply")
            elif (state.partitions or 0) > spec.partitions:
                state.warnings.append(f"has {state.partitions} partitions, more than the {spec.partitions} wanted "
                                      "(Kafka cannot shrink a topic)")
            if state.replication_factor is not None and state.replication_factor != spec.replication_factor:
                state.warnings.append(f"replication factor {state.replication_factor}, wanted "
                                      f"{spec.replication_factor}: needs a partition reassignment")
            pending = sorted(k for k, v in spec.configs.items() if state.partitions and state.configs.get(k) != v)
            if pending:
                state.warnings.append("configs not yet visible after apply: " + ", ".join(pending))
            result.append(state)
        return result
    finally:
        await admin.close()


async def topic_exists(bootstrap: str, name: str) -> bool:
    """Whether the cluster has the topic `name` (with its partitions)."""
    admin = _admin(bootstrap)
    await admin.start()
    try:
        return name in {m["topic"] for m in await admin.describe_topics([name])
                        if not m["error_code"] and m["partitions"]}
    finally:
        await admin.close()


async def topic_setting(bootstrap: str, name: str, setting: str) -> str | None:
    """The value of one of the settings `flows topics list` reports (_REPORTED: the topic's own or the broker's
    default), or None when the cluster does not say (no such topic)."""
    admin = _admin(bootstrap)
    await admin.start()
    try:
        state = (await _describe(admin, [name])).get(name)
        return None if state is None else state.configs.get(setting)
    finally:
        await admin.close()


def registry_topic_provisioner(bootstrap: str, partitions: int,
                               topics: Sequence[Topic] | None = None) -> Callable[[str], Awaitable[bool]]:
    """What the outbox relay calls for a topic the cluster does not have (services.runtime.outbox): a registry topic
    (`topics`: those, default every one), or its `.dlq` twin, is provisioned again as `flows topics apply` does (every
    missing one with it) and the call says True; any other name, False."""
    async def provision(name: str) -> bool:
        registry = all_topics() if topics is None else topics
        if name not in {t.name for t in registry} | {t.dlq for t in registry}:
            return False
        await apply_topics(bootstrap, partitions, registry)
        return True

    return provision


async def list_topics(bootstrap: str, partitions: int) -> list[TopicState]:
    """Each registry topic as the cluster has it (None where it does not exist), plus what differs."""
    admin = _admin(bootstrap)
    await admin.start()
    try:
        specs = wanted_topics(partitions, await _brokers(admin))
        existing = await _describe(admin, [s.name for s in specs])
    finally:
        await admin.close()
    result = []
    for spec in specs:
        state = existing.get(spec.name) or TopicState(spec.name)
        if state.partitions is None:
            state.warnings.append("missing: run `flows topics apply`")
        else:
            if state.partitions < spec.partitions:
                state.warnings.append(f"{state.partitions} partitions, wanted {spec.partitions}")
            if state.replication_factor != spec.replication_factor:
                state.warnings.append(f"replication factor {state.replication_factor}, wanted "
                                      f"{spec.replication_factor}")
            wrong = sorted(k for k, v in spec.configs.items() if state.configs.get(k) != v)
            if wrong:
                state.warnings.append("configs differ: " + ", ".join(wrong))
        result.append(state)
    return result
