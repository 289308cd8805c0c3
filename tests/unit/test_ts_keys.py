"""Rotating the gateway's sealing key: new seals use the new key, boxes sealed to the old one still
open until the gateway prunes the old private key, which it does only once nothing needs it."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.main import app
from services.ts_gateway import sealing
from services.ts_gateway.keys import RETIRED_DIR, GatewayKeys, KeysError, rotate_gateway_key
from services.ts_gateway.sealing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    SealError,
    ensure_gateway_keypair,
    key_id,
    seal,
    sealed_key_id,
)
from tests.ts_support import CANARY, _small_keys, create_keypair_together  # noqa: F401  (_small_keys: autouse)


def _public(directory: Path) -> bytes:
    return (directory / PUBLIC_KEY_FILE).read_bytes()


def test_after_a_rotation_new_seals_use_the_new_key_and_old_boxes_still_open(tmp_path: Path) -> None:
    ensure_gateway_keypair(tmp_path)
    keys = GatewayKeys(tmp_path)  # a running gateway, started before the rotation
    old_box = seal(_public(tmp_path), CANARY)
    first = keys.current_id

    rotation = rotate_gateway_key(tmp_path)

    assert rotation.previous == first != rotation.current == key_id(_public(tmp_path))
    new_box = seal(_public(tmp_path), CANARY)
    assert (sealed_key_id(old_box), sealed_key_id(new_box)) == (first, rotation.current)
    # the running gateway learns the new key when a box names it; a restarted one reads both
    assert keys.open(new_box) == (CANARY, rotation.current)
    assert keys.open(old_box) == (CANARY, first)
    restarted = GatewayKeys(tmp_path)
    assert restarted.current_id == rotation.current and restarted.held() == {first, rotation.current}
    assert restarted.open(old_box) == (CANARY, first)
    retired = tmp_path / RETIRED_DIR
    assert stat.S_IMODE(retired.stat().st_mode) == 0o700
    assert stat.S_IMODE((retired / f"{first}.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / PRIVATE_KEY_FILE).stat().st_mode) == 0o600
    assert not [p for p in tmp_path.rglob(".*.new")], "a temporary key file was left behind"


def test_a_retired_key_is_deleted_only_when_no_box_needs_it_and_its_grace_is_over(tmp_path: Path) -> None:
    ensure_gateway_keypair(tmp_path)
    old_box = seal(_public(tmp_path), CANARY)
    rotation = rotate_gateway_key(tmp_path)
    second = rotate_gateway_key(tmp_path)  # two retired keys now
    keys = GatewayKeys(tmp_path)
    later = time.time() + 10

    assert keys.prune(in_use={rotation.previous, rotation.current}, grace_s=0, now=later) == []
    assert keys.prune(in_use=set(), grace_s=3600, now=later) == []  # a command sealed to it may still be on Kafka
    assert keys.open(old_box)[0] == CANARY

    assert keys.prune(in_use={rotation.current}, grace_s=0, now=later) == [rotation.previous]
    assert not (tmp_path / RETIRED_DIR / f"{rotation.previous}.pem").exists()
    with pytest.raises(SealError, match=f"sealed to key {rotation.previous}, which this gateway does not hold"):
        keys.open(old_box)
    assert keys.prune(in_use=set(), grace_s=0, now=later) == [rotation.current]
    assert keys.held() == {second.current}  # the current key is never pruned
    assert keys.open(seal(_public(tmp_path), CANARY))[0] == CANARY


def test_a_rotation_that_died_between_its_two_renames_is_repaired_and_loses_no_box(tmp_path: Path) -> None:
    """The new private key is written first: if the process dies before the public file follows,
    the gateway derives the public key again, and boxes sealed to the old public key still open."""
    ensure_gateway_keypair(tmp_path)
    stale_public = _public(tmp_path)
    box = seal(stale_public, CANARY)
    rotation = rotate_gateway_key(tmp_path)
    (tmp_path / PUBLIC_KEY_FILE).write_bytes(stale_public)  # as if the second rename never happened

    keys = GatewayKeys(tmp_path)

    assert key_id(_public(tmp_path)) == keys.current_id == rotation.current
    assert keys.open(box) == (CANARY, rotation.previous)


def test_rotating_where_there_is_no_key_says_the_gateway_creates_it(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="the TS gateway creates it when it first starts"):
        rotate_gateway_key(tmp_path)


def test_flows_ts_rotate_key_rotates_the_key_of_the_configured_folder(tmp_path: Path) -> None:
    ensure_gateway_keypair(tmp_path)
    before = key_id(_public(tmp_path))
    result = CliRunner().invoke(app, ["ts", "rotate-key"], env={"FLOWS_KEYS_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    after = key_id(_public(tmp_path))
    out = " ".join(result.output.split())
    assert after != before and f"new seals use key {after}" in out and f"previous key {before} is kept" in out
    assert os.path.exists(tmp_path / RETIRED_DIR / f"{before}.pem")

    empty = tmp_path / "empty"
    result = CliRunner().invoke(app, ["ts", "rotate-key"], env={"FLOWS_KEYS_DIR": str(empty)})
    assert result.exit_code == 1 and "there is no gateway key in" in " ".join(result.output.split())


def test_gateway_replicas_starting_together_create_one_key_pair_and_all_read_it_whole(tmp_path: Path) -> None:
    """`flows stack up --replicas N` starts N gateways on one keys folder at once: each creates the pair when
    it is missing. Four real processes, released at the same instant, must end with one pair, read whole.

    Spawned, not forked: this pytest process has threads by now (two idle executor threads of an event loop),
    and a forked pool's child hung once in a full run (its terminate waited 300 s for a child): a child forked
    from a threaded process may inherit a lock held by a thread that does not exist in it."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    workers = [ctx.Process(target=create_keypair_together, args=(str(tmp_path), barrier, sealing.KEY_BITS, results))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        pairs = [results.get(timeout=120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    assert [w.exitcode for w in workers] == [0] * 4
    assert len(set(pairs)) == 1
    assert pairs[0] == (_public(tmp_path), (tmp_path / PRIVATE_KEY_FILE).read_bytes())
    assert stat.S_IMODE((tmp_path / PRIVATE_KEY_FILE).stat().st_mode) == 0o600
