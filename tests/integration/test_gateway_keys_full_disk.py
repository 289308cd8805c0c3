"""The TS gateway's key pair, created at its first start, on a REAL full disk (tests/fault_disk.py: a small
tmpfs as the keys folder). The pair is what every sealed credential depends on: a first start that fails for
want of space must leave nothing that stops the next start once space is freed (no half-written key, no empty
public key file, no temporary file), and that start must end with a pair that matches."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from services.ts_gateway.sealing import (
    KEYS_LOCK_FILE,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    Credentials,
    ensure_gateway_keypair,
    key_id,
    private_key_id,
    seal,
    unseal,
)
from tests.fault_disk import small_disk

pytestmark = pytest.mark.integration

PAGE = 4096


@pytest.mark.parametrize("filler_pages", [1, 0], ids=["nothing-fits", "private-fits-public-does-not"])
def test_a_first_start_on_a_full_disk_leaves_a_folder_the_next_start_completes(
        tmp_path: Path, filler_pages: int) -> None:
    credentials = Credentials(cf_proprietario="RSSMRA80A01H501U", user="utente", password="segreto",
                              pincode="1234567890")
    with small_disk(tmp_path / "keys", size_kb=4) as disk:  # one page: the private key (~2.5 KB) and no more
        if filler_pages:
            (disk.path / "filler").write_bytes(b"x" * PAGE * filler_pages)
        with pytest.raises(OSError) as failed:
            ensure_gateway_keypair(disk.path)
        assert failed.value.errno == errno.ENOSPC, failed.value
        left = sorted(p.name for p in disk.path.iterdir())
        expected = {KEYS_LOCK_FILE, "filler"} if filler_pages else {KEYS_LOCK_FILE, PRIVATE_KEY_FILE}
        assert set(left) == expected, f"left in the keys folder after the failed start: {left}"
        if not filler_pages:
            kept = (disk.path / PRIVATE_KEY_FILE).read_bytes()
            assert (disk.path / PRIVATE_KEY_FILE).stat().st_mode & 0o777 == 0o600
            private_key_id(kept)  # whole: it parses

        disk.grow(64)  # the operator frees space; the gateway starts again
        public_pem, private_pem = ensure_gateway_keypair(disk.path)
        assert key_id(public_pem) == private_key_id(private_pem)
        if not filler_pages:
            assert private_pem == kept  # the key written before the disk filled, its public key derived from it
        assert (disk.path / PUBLIC_KEY_FILE).read_bytes() == public_pem
        assert (disk.path / PRIVATE_KEY_FILE).read_bytes() == private_pem
        assert not [p.name for p in disk.path.iterdir() if p.name.endswith(".new")]
        assert unseal(private_pem, seal(public_pem, credentials)) == credentials
        assert ensure_gateway_keypair(disk.path) == (public_pem, private_pem)  # and the start after that reads it
