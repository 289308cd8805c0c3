"""services.runtime.kafkaread.observer when no broker answers (the platform down): the command's error, and no
"Unclosed AIOKafkaConsumer" warning after it on the operator's terminal."""

from __future__ import annotations

import gc
import socket
import warnings

import pytest
from aiokafka.errors import KafkaConnectionError

from services.runtime.kafkaread import observer


def _closed_port() -> int:
    with socket.socket() as s:  # a port just freed: nothing listens on it
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_observer_that_cannot_reach_kafka_raises_and_leaves_no_unclosed_consumer() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KafkaConnectionError):
            async with observer(f"127.0.0.1:{_closed_port()}"):
                pass
        gc.collect()  # aiokafka warns from the consumer's __del__
    assert [str(w.message) for w in caught if "Unclosed AIOKafkaConsumer" in str(w.message)] == []
