"""Waiting until consumer groups have joined: every group Stable, with a member that joined since `members_of` was
taken, and every partition of the topics its members subscribe to assigned to one of them. A test that starts
services waits on this instead of sleeping (a fixed sleep is too long on a quiet machine, too short on a loaded
one, where the first message sent may then wait for a rebalance, or be read from the end by a late consumer).

The groups are described with DescribeGroups v0-v2: aiokafka 0.14 pairs its v3 request with the v2 response
schema (DescribeGroupsRequest_v3.RESPONSE_TYPE), so against Kafka 3.9 the answer for more than one group fails
to decode ("Buffer underrun decoding string") and the admin connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import DescribeGroupsRequest_v0, DescribeGroupsRequest_v1, DescribeGroupsRequest_v2
from aiokafka.protocol.api import Request

from services.runtime.kafkaadmin import admin_client


class _DescribeGroups(Request[DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2]):
    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self._groups = groups

    def build(self, request_struct_class: type[DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 |
                                               DescribeGroupsRequest_v2]) -> Any:
        return request_struct_class(self._groups)


@dataclass(frozen=True)
class GroupState:
    group: str
    state: str
    members: frozenset[str]  # member ids
    subscribed: frozenset[str]  # topics
    assigned: frozenset[tuple[str, int]]


# COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR: the group's coordinator is not there
# yet. A new cluster has no __consumer_offsets until the first FindCoordinator asks for it (CI's fresh stack: the
# e2e platform is the first to use a group), and a coordinator moves when a broker stops.
_COORDINATOR_NOT_YET = frozenset({14, 15, 16})
COORDINATOR_WAIT_S = 60.0


async def _describe_one(admin: AIOKafkaAdminClient, group: str) -> Any:
    """The DescribeGroups entry of `group`, asked again while its coordinator is not ready (for a while)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + COORDINATOR_WAIT_S
    while True:
        try:
            coordinator = await admin.find_coordinator(group)
            response = await admin._client.send(coordinator, _DescribeGroups([group]))
            [entry] = response.groups
            if entry[0] not in _COORDINATOR_NOT_YET:
                return entry
            why = f"Kafka error {entry[0]}"
        except KafkaError as exc:
            if not exc.retriable:
                raise
            why = f"{type(exc).__name__}: {exc}"
        if loop.time() > give_up:
            raise AssertionError(f"consumer group {group!r}: no coordinator within {COORDINATOR_WAIT_S:.0f} s "
                                 f"({why})")
        await asyncio.sleep(0.2)


async def describe_groups(admin: AIOKafkaAdminClient, groups: Iterable[str]) -> dict[str, GroupState]:
    """Each group's state, members, the topics they subscribe to and the partitions assigned to them."""
    found: dict[str, GroupState] = {}
    for group in groups:
        error_code, name, state, protocol_type, _, members = await _describe_one(admin, group)
        if error_code != 0:
            raise RuntimeError(f"describing consumer group {name!r}: Kafka error {error_code}")
        subscribed: set[str] = set()
        assigned: set[tuple[str, int]] = set()
        for _member_id, _client_id, _host, metadata, assignment in members:
            # Kafka sends a member's subscription and assignment only while the group is Stable: empty bytes
            # during a rebalance (found on a run where the services' groups were still joining).
            if protocol_type != "consumer":
                continue
            if metadata:
                subscribed.update(ConsumerProtocolMemberMetadata.decode(metadata).subscription)
            if assignment:
                assigned.update((tp.topic, tp.partition)
                                for tp in ConsumerProtocolMemberAssignment.decode(assignment).partitions())
        found[name] = GroupState(name, state, frozenset(m[0] for m in members), frozenset(subscribed),
                                 frozenset(assigned))
    return found


@contextlib.asynccontextmanager
async def _admin(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = admin_client(bootstrap, client_id="tests-groups")
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def members_of(bootstrap: str, groups: Iterable[str]) -> dict[str, frozenset[str]]:
    """The member ids each group has now (before services are started: `wait_until_joined` wants new ones)."""
    async with _admin(bootstrap) as admin:
        return {name: state.members for name, state in (await describe_groups(admin, groups)).items()}


async def _partitions(admin: AIOKafkaAdminClient, topics: Iterable[str]) -> set[tuple[str, int]]:
    described = await admin.describe_topics(sorted(topics))
    return {(t["topic"], p["partition"]) for t in described if t["error_code"] == 0 for p in t["partitions"]}


def _why_not(state: GroupState | None, before: frozenset[str], partitions: set[tuple[str, int]]) -> str | None:
    """What the group still lacks, or None when it has joined."""
    if state is None:
        return "the group is unknown to the cluster"
    if not state.members - before:
        return f"no member joined yet (state {state.state}, {len(state.members)} earlier member(s))"
    if state.state != "Stable":
        return f"state {state.state} with {len(state.members)} member(s)"
    if not state.subscribed:
        return "its members subscribe to no topic"
    if absent := sorted(state.subscribed - {topic for topic, _ in partitions}):
        return f"subscribed topics without partitions: {absent}"
    if missing := sorted({p for p in partitions if p[0] in state.subscribed} - state.assigned):
        return f"{len(missing)} partition(s) not assigned, e.g. {missing[:5]}"
    return None


async def wait_until_joined(bootstrap: str, before: dict[str, frozenset[str]], deadline_s: float = 180.0,
                            alive: Callable[[], None] = lambda: None) -> None:
    """Waits until every group of `before` (as `members_of` took it) has joined, as the module docstring says;
    `alive` raises when what should join has died meanwhile. Fails after `deadline_s` naming each group that did
    not join and why."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s
    async with _admin(bootstrap) as admin:
        while True:
            alive()
            states = await describe_groups(admin, before)
            topics = {t for s in states.values() for t in s.subscribed}
            partitions = await _partitions(admin, topics) if topics else set()
            lacking = {g: why for g in before if (why := _why_not(states.get(g), before[g], partitions)) is not None}
            if not lacking:
                return
            if loop.time() > give_up:
                raise AssertionError(f"consumer groups did not join within {deadline_s:.0f} s: " +
                                     "; ".join(f"{g!r}: {why}" for g, why in sorted(lacking.items())))
            await asyncio.sleep(0.2)
