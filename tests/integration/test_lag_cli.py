"""`flows lag` on the real broker tells a group whose consumer is gone from an idle healthy one: a consumer
process holding every partition is shown as the member of its Stable group, with the partitions it holds; once
it is killed (SIGKILL, as a crashed service) and Kafka has expired it, the group is Empty, and with messages
arriving meanwhile it is marked NOBODY CONSUMING; a group whose consumer stopped with nothing left to read is
marked NO MEMBER only. The JSON output carries the same."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.runtime import ops
from tests.kafka_topics import create_topics

pytestmark = pytest.mark.integration

PARTITIONS = 3
# A service's consumer in a process of its own: reads its topic and commits what it read, until it is killed. A short
# session timeout: Kafka expires the killed member within seconds, not the 45 s of the broker's default.
CONSUMER = """
import asyncio, sys
from aiokafka import AIOKafkaConsumer

async def main(bootstrap, topic, group):
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, client_id="lag-probe",
                                session_timeout_ms=6000, heartbeat_interval_ms=1000, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    while True:
        if await consumer.getmany(timeout_ms=200):
            await consumer.commit()

asyncio.run(main(*sys.argv[1:]))
"""


async def _flows(bootstrap: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_")} | {"FLOWS_KAFKA_BOOTSTRAP": bootstrap,
                                                                                  "COLUMNS": "250"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli.main", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, errors = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode() + errors.decode()
    return out.decode()


async def _group_when(bootstrap: str, group: str, ready: Any) -> ops.GroupLag:
    """The group as `flows lag` reads it, once `ready(it)` holds (a hang guard, not a measure)."""
    async with asyncio.timeout(90):
        while True:
            found = await ops.consumer_groups(bootstrap, [group])
            if found and ready(found[0]):
                return found[0]
            await asyncio.sleep(0.3)


async def _send(producer: AIOKafkaProducer, topic: str, count: int) -> None:
    for n in range(count):
        await producer.send_and_wait(topic, b"{}", partition=n % PARTITIONS)


async def test_a_killed_consumer_s_group_is_marked_nobody_consuming_once_messages_wait(settings) -> None:  # type: ignore[no-untyped-def]
    bootstrap = settings.kafka_bootstrap
    topic = f"test.lag-{uuid.uuid4().hex[:8]}"
    group, drained = f"lag-{topic}", f"lag-drained-{topic}"
    await create_topics(bootstrap, topic, partitions=PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CONSUMER, bootstrap, topic, group)
    try:
        await _send(producer, topic, 6)
        every = {(topic, p) for p in range(PARTITIONS)}
        # Consumed and committed on every partition, by its one member
        await _group_when(bootstrap, group, lambda g: g.described.state == "Stable" and len(g.partitions) == PARTITIONS
                          and not g.lag)
        [alive] = json.loads(await _flows(bootstrap, "lag", "--group", group, "--json"))
        [member] = alive["members"]
        assert alive["state"] == "Stable" and alive["lag"] == 0 and alive["mark"] is alive["warning"] is None, alive
        assert member["client_id"] == "lag-probe" and member["host"].lstrip("/") == "127.0.0.1", member
        assert {(p["topic"], p["partition"]) for p in member["partitions"]} == every
        assert [(p["partition"], p["committed"], p["end"], p["lag"], p["held_by"]) for p in alive["partitions"]] == \
            [(p, 2, 2, 0, member["member_id"]) for p in range(PARTITIONS)]
        shown = await _flows(bootstrap, "lag", "--group", group)
        assert "Stable" in shown and f"lag-probe@127.0.0.1: {topic} 0,1,2" in shown, shown
        assert ops.NOBODY_CONSUMING not in shown and ops.NO_MEMBER not in shown, shown

        # The service crashes: its member goes once its session expires; messages keep coming meanwhile
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await _send(producer, topic, 3)
        await _group_when(bootstrap, group, lambda g: not g.described.members and g.lag == 3)
        [gone] = json.loads(await _flows(bootstrap, "lag", "--group", group, "--json"))
        assert gone["state"] == "Empty" and gone["members"] == [] and gone["lag"] == 3, gone
        assert gone["mark"] == ops.NOBODY_CONSUMING, gone
        assert gone["warning"].startswith(f"{ops.NOBODY_CONSUMING}: lag 3 and no member"), gone
        assert [(p["lag"], p["held_by"]) for p in gone["partitions"]] == [(1, None)] * PARTITIONS

        # A group that read everything, then stopped: no member, nothing waits
        reader = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=drained, auto_offset_reset="earliest",
                                  enable_auto_commit=False)
        await reader.start()
        try:
            async with asyncio.timeout(60):
                read = 0
                while read < 9:
                    read += sum(len(batch) for batch in (await reader.getmany(timeout_ms=200)).values())
            await reader.commit()
        finally:
            await reader.stop()
        both = await _flows(bootstrap, "lag", "--group", group, "--group", drained)
        lines = both.splitlines()
        assert f"{group}: {ops.NOBODY_CONSUMING}: lag 3 and no member" in " ".join(both.split()), both
        assert any(line.startswith(f"{drained}: {ops.NO_MEMBER}: offsets committed, lag 0") for line in lines), both
        assert not any(line.startswith(f"{drained}: {ops.NOBODY_CONSUMING}") for line in lines), both
        [quiet] = json.loads(await _flows(bootstrap, "lag", "--group", drained, "--json"))
        assert quiet["state"] == "Empty" and quiet["lag"] == 0 and quiet["mark"] == ops.NO_MEMBER, quiet
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await producer.stop()
