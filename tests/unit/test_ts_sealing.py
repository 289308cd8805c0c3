"""Sealing the TS credentials for their trip CLI -> Kafka -> gateway, and keeping them out of sight."""

from __future__ import annotations

import base64
import stat

import pytest

from services.ts_gateway.sealing import Credentials, SealError, ensure_gateway_keypair, seal, unseal

# Canary values: memorable, and long enough that a chance substring match is impossible.
CANARY = Credentials(
    user="CANARYUSER0TS0X", password="Canary-Password-42!", pincode="9876543210", cf_proprietario="CNRCNR80A01F839X"
)


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    return ensure_gateway_keypair(tmp_path_factory.mktemp("keys"))


def test_sealed_credentials_open_to_the_same_values(keypair: tuple[bytes, bytes]) -> None:
    public_pem, private_pem = keypair
    assert unseal(private_pem, seal(public_pem, CANARY)) == CANARY


def test_sealed_text_contains_none_of_the_clear_values(keypair: tuple[bytes, bytes]) -> None:
    sealed = seal(keypair[0], CANARY)
    raw = base64.b64decode(sealed)
    for secret in CANARY.secrets():
        assert secret not in sealed
        assert secret.encode() not in raw
        assert base64.b64encode(secret.encode()).decode()[:12] not in sealed


def test_sealing_twice_gives_different_texts(keypair: tuple[bytes, bytes]) -> None:
    assert seal(keypair[0], CANARY) != seal(keypair[0], CANARY)


def test_a_tampered_box_is_refused_without_revealing_anything(keypair: tuple[bytes, bytes]) -> None:
    raw = bytearray(base64.b64decode(seal(keypair[0], CANARY)))
    raw[-1] ^= 0x01
    with pytest.raises(SealError) as refused:
        unseal(keypair[1], base64.b64encode(bytes(raw)).decode())
    assert all(secret not in str(refused.value) for secret in CANARY.secrets())


def test_a_box_sealed_for_another_gateway_cannot_be_opened(tmp_path, keypair: tuple[bytes, bytes]) -> None:  # type: ignore[no-untyped-def]
    other_public, _ = ensure_gateway_keypair(tmp_path / "other")
    with pytest.raises(SealError, match="cannot be opened"):
        unseal(keypair[1], seal(other_public, CANARY))


def test_garbage_is_refused_as_not_base64(keypair: tuple[bytes, bytes]) -> None:
    with pytest.raises(SealError, match="base64"):
        unseal(keypair[1], "not base64 at all!")


def test_the_gateway_keypair_is_created_once_with_a_private_file_of_mode_0600(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = ensure_gateway_keypair(tmp_path)
    second = ensure_gateway_keypair(tmp_path)
    assert first == second
    private_file = tmp_path / "ts_gateway_private.pem"
    assert stat.S_IMODE(private_file.stat().st_mode) == 0o600
    assert first[0].startswith(b"-----BEGIN PUBLIC KEY-----")


def test_credentials_repr_and_str_hide_every_value() -> None:
    shown = [repr(CANARY), str(CANARY), f"{CANARY}", f"{CANARY!r}", repr([CANARY]), repr({"c": CANARY})]
    for text in shown:
        assert "***" in text
        assert all(secret not in text for secret in CANARY.secrets()), text
