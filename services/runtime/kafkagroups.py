"""Consumer groups as Kafka describes them: state (Stable, Empty, PreparingRebalance...), members (member id, client
id, host) and the partitions assigned to each. `flows lag` shows them beside the offsets, so that a group whose
service is stopped (committed offsets, no member) does not look like an idle healthy one; the tests wait on them
until the services' groups have joined (tests/kafka_groups.py).

The groups are described with DescribeGroups v0-v2, one group a request: aiokafka 0.14 pairs its v3 request with
the v2 response schema (DescribeGroupsRequest_v3.RESPONSE_TYPE), so against Kafka 3.9 its `describe_consumer_groups`
fails to decode the answer for more than one group ("Buffer underrun decoding string") and the admin connection is
closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import DescribeGroupsRequest_v0, DescribeGroupsRequest_v1, DescribeGroupsRequest_v2
from aiokafka.protocol.api import Request


class _DescribeGroups(Request[DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2]):
    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self._groups = groups

    def build(self, request_struct_class: type[DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 |
                                               DescribeGroupsRequest_v2]) -> Any:
        return request_struct_class(self._groups)


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    host: str  # as Kafka reports it, e.g. "/127.0.0.1"
    partitions: tuple[tuple[str, int], ...]  # (topic, partition) assigned to it, sorted; () during a rebalance

    @property
    def name(self) -> str:
        """client id@host, how an operator tells the members apart (several replicas share a client id)."""
        return f"{self.client_id}@{self.host.lstrip('/')}"


@dataclass(frozen=True)
class GroupState:
    group: str
    state: str  # Kafka's: Stable, Empty, PreparingRebalance, CompletingRebalance, Dead
    members: tuple[Member, ...]  # sorted by client id, host, member id
    subscribed: frozenset[str]  # the topics its members subscribe to

    @property
    def member_ids(self) -> frozenset[str]:
        return frozenset(m.member_id for m in self.members)

    @property
    def assigned(self) -> frozenset[tuple[str, int]]:
        return frozenset(p for m in self.members for p in m.partitions)

    def holder(self, topic: str, partition: int) -> Member | None:
        """The member the partition is assigned to, None when none holds it."""
        return next((m for m in self.members if (topic, partition) in m.partitions), None)


class NoGroupCoordinator(KafkaError):
    """No broker coordinates the group within the wait (a new cluster, a broker that stopped)."""

    retriable = False


# COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR: the group's coordinator is not there
# yet. A new cluster has no __consumer_offsets until the first FindCoordinator asks for it (CI's fresh stack: the
# e2e platform is the first to use a group), and a coordinator moves when a broker stops.
_COORDINATOR_NOT_YET = frozenset({14, 15, 16})
COORDINATOR_WAIT_S = 60.0


async def _describe_one(admin: AIOKafkaAdminClient, group: str, wait_s: float) -> Any:
    """The DescribeGroups entry of `group`, asked again while its coordinator is not ready (for `wait_s`)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait_s
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
            raise NoGroupCoordinator(f"consumer group {group!r}: no coordinator within {wait_s:.0f} s ({why})")
        await asyncio.sleep(0.2)


async def describe_groups(admin: AIOKafkaAdminClient, groups: Iterable[str],
                          coordinator_wait_s: float = COORDINATOR_WAIT_S) -> dict[str, GroupState]:
    """Each group's state, its members with the partitions assigned to each, and the topics they subscribe to. A
    group Kafka does not know is "Dead" with no member."""
    found: dict[str, GroupState] = {}
    for group in groups:
        error_code, name, state, protocol_type, _, described = await _describe_one(admin, group, coordinator_wait_s)
        if error_code != 0:
            raise KafkaError(f"describing consumer group {name!r}: Kafka error {error_code}")
        subscribed: set[str] = set()
        members = []
        for member_id, client_id, host, metadata, assignment in described:
            partitions: list[tuple[str, int]] = []
            # Kafka sends a member's subscription and assignment only while the group is Stable: empty bytes
            # during a rebalance (found on a run where the services' groups were still joining). A group of
            # another protocol (Kafka Connect...) has its own encoding: its members are listed without them.
            if protocol_type == "consumer":
                if metadata:
                    subscribed.update(ConsumerProtocolMemberMetadata.decode(metadata).subscription)
                if assignment:
                    partitions = [(tp.topic, tp.partition)
                                  for tp in ConsumerProtocolMemberAssignment.decode(assignment).partitions()]
            members.append(Member(member_id, client_id, host, tuple(sorted(partitions))))
        members.sort(key=lambda m: (m.client_id, m.host, m.member_id))
        found[name] = GroupState(name, state, tuple(members), frozenset(subscribed))
    return found
