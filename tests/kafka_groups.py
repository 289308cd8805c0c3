"""Waiting until consumer groups have joined: every group Stable, with a member that joined since `members_of` was
taken, and every partition of the topics its members subscribe to assigned to one of them. A test that starts
services waits on this instead of sleeping (a fixed sleep is too long on a quiet machine, too short on a loaded
one, where the first message sent may then wait for a rebalance, or be read from the end by a late consumer).

The groups are described by services.runtime.kafkagroups (`flows lag` shows them too).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable

from aiokafka.admin import AIOKafkaAdminClient

from services.runtime.kafkaadmin import admin_client
from services.runtime.kafkagroups import GroupState, describe_groups


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
        return {name: state.member_ids for name, state in (await describe_groups(admin, groups)).items()}


async def _partitions(admin: AIOKafkaAdminClient, topics: Iterable[str]) -> set[tuple[str, int]]:
    described = await admin.describe_topics(sorted(topics))
    return {(t["topic"], p["partition"]) for t in described if t["error_code"] == 0 for p in t["partitions"]}


def _why_not(state: GroupState | None, before: frozenset[str], partitions: set[tuple[str, int]]) -> str | None:
    """What the group still lacks, or None when it has joined."""
    if state is None:
        return "the group is unknown to the cluster"
    if not state.member_ids - before:
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
