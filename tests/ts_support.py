"""What the TS sealing and key tests share: canary credentials and quick RSA keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.ts_gateway import sealing
from services.ts_gateway.sealing import Credentials

# Canary values: memorable, and long enough that a chance substring match is impossible.
CANARY = Credentials(
    user="CANARYUSER0TS0X", password="Canary-Password-42!", pincode="9876543210", cf_proprietario="CNRCNR80A01F839X"
)


@pytest.fixture(autouse=True, scope="module")
def _small_keys() -> Iterator[None]:
    """2048-bit keys here: generating 3072-bit ones takes about a second each on this machine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sealing, "KEY_BITS", 2048)
        yield


def create_keypair_together(directory: str, barrier: Any, key_bits: int, results: Any) -> None:
    """A gateway's start in a process of its own (tests/unit/test_ts_keys.py): keys of `key_bits`, created
    (or read) in `directory` once all the processes of `barrier` are there; the (public, private) PEMs go to
    `results`."""
    sealing.KEY_BITS = key_bits
    barrier.wait(timeout=120)
    results.put(sealing.ensure_gateway_keypair(Path(directory)))
