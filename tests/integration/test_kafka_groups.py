"""tests/kafka_groups.py, the wait the e2e platform uses instead of a sleep, on the real broker: it returns once a
group's new members hold every partition, it reads a group in the middle of a rebalance (Kafka then sends empty
member metadata), and it fails naming the group that never joined."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.runtime.kafkagroups import describe_groups
from tests.kafka_groups import _admin, members_of, wait_until_joined
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

TOPIC = "flows.load-requested"  # provisioned by the test stack, 6 partitions


async def _polling(consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await consumer.getmany(timeout_ms=100)


async def test_a_second_member_joining_is_waited_for_through_the_rebalance() -> None:
    group = f"groups-{uuid.uuid4().hex[:8]}"
    first = AIOKafkaConsumer(TOPIC, bootstrap_servers=KAFKA, group_id=group, heartbeat_interval_ms=1000)
    await first.start()
    stop = asyncio.Event()
    polling = asyncio.create_task(_polling(first, stop))
    second = AIOKafkaConsumer(TOPIC, bootstrap_servers=KAFKA, group_id=group)
    try:
        before = await members_of(KAFKA, [group])
        assert len(before[group]) == 1
        joining = asyncio.create_task(second.start())
        # The first member rejoins on its next heartbeat: the group is rebalancing meanwhile, and read as such.
        states = set()
        async with _admin(KAFKA) as admin:
            while not joining.done():
                states.add((await describe_groups(admin, [group]))[group].state)
                await asyncio.sleep(0.05)
        await joining
        assert states & {"PreparingRebalance", "CompletingRebalance"}, states
        await wait_until_joined(KAFKA, before, deadline_s=120)
        async with _admin(KAFKA) as admin:
            state = (await describe_groups(admin, [group]))[group]
        assert state.state == "Stable" and len(state.members) == 2 and len(state.member_ids - before[group]) == 1
        assert state.subscribed == {TOPIC} and state.assigned == {(TOPIC, p) for p in range(6)}
        # each member holds its own share, named by its client id and host
        assert sorted(len(m.partitions) for m in state.members) == [3, 3], state.members
        assert all(m.client_id.startswith("aiokafka-") and m.host.lstrip("/") == "127.0.0.1" for m in state.members)
        assert state.holder(TOPIC, 0) in state.members
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        await second.stop()
        await first.stop()


async def test_a_group_nobody_joins_is_named_when_the_deadline_passes() -> None:
    joined, never = f"groups-{uuid.uuid4().hex[:8]}", f"groups-never-{uuid.uuid4().hex[:8]}"
    before = await members_of(KAFKA, [joined, never])
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=KAFKA, group_id=joined)
    await consumer.start()
    try:
        with pytest.raises(AssertionError) as refused:
            await wait_until_joined(KAFKA, before, deadline_s=3)
        assert f"'{never}': no member joined yet" in str(refused.value) and f"'{joined}'" not in str(refused.value)
        await wait_until_joined(KAFKA, {joined: before[joined]}, deadline_s=120)
    finally:
        await consumer.stop()


async def test_a_new_cluster_is_asked_until_it_has_a_group_coordinator(private_stack) -> None:  # type: ignore[no-untyped-def]
    """A Kafka that never saw a consumer group has no __consumer_offsets: the first FindCoordinator creates it and
    is answered COORDINATOR_NOT_AVAILABLE meanwhile. That is CI's stack (a fresh clone, where the e2e platform is
    the first to use a group): the wait asks again instead of failing the whole e2e folder."""
    from deploy import localstack

    info = await asyncio.to_thread(localstack.up, progress=lambda _msg: None)
    group, bootstrap = f"groups-{uuid.uuid4().hex[:8]}", info.bootstrap_servers
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        assert "__consumer_offsets" not in await admin.list_topics()  # a cluster that never had a group
        await admin.create_topics([NewTopic("groups-fresh", num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    before = await members_of(bootstrap, [group])
    assert before == {group: frozenset()}
    consumer = AIOKafkaConsumer("groups-fresh", bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    stop = asyncio.Event()
    polling = asyncio.create_task(_polling(consumer, stop))
    try:
        await wait_until_joined(bootstrap, before, deadline_s=120)
    finally:
        stop.set()
        await polling
        await consumer.stop()
