"""The Esercizio pages say "(motivo non registrato)" of a dead letter without a recorded reason, in Italian: the
reason shared with the CLI fell back to its English, "(no reason recorded)"."""

from __future__ import annotations

import html
import urllib.parse
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from tests.console_support import RunningConsole
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration


async def test_a_dead_letter_without_a_recorded_reason_is_said_so_in_italian(console: RunningConsole) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA)
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            "flows.load-requested.dlq", b'{"no": "reason"}', key=str(uuid.uuid4()).encode(), partition=0,
            headers=[("dlq_original_topic", b"flows.load-requested"), ("ce_id", str(uuid.uuid4()).encode())])
    finally:
        await producer.stop()
    letter = f"flows.load-requested.dlq:0:{meta.offset}"
    async with console.client("ops") as client:
        one = html.unescape((await client.get(
            f"{console.url}/esercizio/scarti/{urllib.parse.quote(letter, safe='')}")).text)
        listed = html.unescape((await client.get(f"{console.url}/esercizio/scarti")).text)
    assert 'id="motivo-scarto">(motivo non registrato)</dd>' in one, one
    assert "(motivo non registrato)" in listed and "no reason recorded" not in one + listed
