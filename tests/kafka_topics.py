"""Kafka topics for tests. The brokers never auto-create a topic (deploy/localstack/): the registry's
topics come from `apply_topics` (the session's `stack` fixture applies them), and a test that uses a topic
of its own creates it here first."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.admin import NewTopic

from services.runtime.kafkaadmin import admin_client
from services.runtime.kafkaread import read_to_end

TOPIC_ALREADY_EXISTS = 36


async def create_topics(bootstrap: str, *names: str, partitions: int = 1, replication: int = 1) -> None:
    """Create the named topics (an existing one is left as it is) and wait until the metadata shows them."""
    admin = admin_client(bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(n, partitions, replication) for n in names])
        failed = [e for e in response.topic_errors if e[1] and e[1] != TOPIC_ALREADY_EXISTS]
        assert not failed, f"could not create test topics: {failed}"
        for _ in range(100):
            described = await admin.describe_topics(list(names))
            if all(not t["error_code"] and t["partitions"] for t in described):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"test topics {names} not in the cluster metadata after 10 s")
    finally:
        await admin.close()


async def delete_all_topics(bootstrap: str) -> None:
    """Delete every topic but Kafka's internal ones and wait until they are gone (a topic re-created while
    its deletion is still running would be deleted with it)."""
    admin = admin_client(bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if not t.startswith("__")]
        if topics:
            await admin.delete_topics(topics)
        for _ in range(300):
            if not [t for t in await admin.list_topics() if not t.startswith("__")]:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("topics still listed 30 s after their deletion")
    finally:
        await admin.close()


async def records_now_on(bootstrap: str, *topics: str) -> list[Any]:
    """Every record on `topics` up to their end offsets read now, without a consumer group: an absence check
    built on it cannot pass because a group's join or first fetch was slow (a quiet poll of a fresh group
    reads nothing until it is assigned). Fails when a topic does not exist, rather than reading nothing."""
    admin = admin_client(bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    missing = [t["topic"] for t in described if t["error_code"] or not t["partitions"]]
    assert not missing, f"topics not in the cluster: {missing}"
    return await read_to_end(bootstrap, list(topics))
