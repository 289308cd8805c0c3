"""Sealing the TS credentials for their trip CLI -> Kafka -> gateway, and keeping them out of sight."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.ts_gateway.sealing import (
    _OAEP,
    Credentials,
    SealError,
    ensure_gateway_keypair,
    key_id,
    private_key_id,
    seal,
    sealed_key_id,
    unseal,
)
from tests.ts_support import CANARY, _small_keys  # noqa: F401  (_small_keys: autouse fixture)


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


def test_the_box_names_the_key_it_was_sealed_to(keypair: tuple[bytes, bytes]) -> None:
    public_pem, private_pem = keypair
    kid = key_id(public_pem)
    # As the published contract (flows.ts-submission-requested.json) tells an external system to compute it: the
    # first 16 hex digits of the SHA-256 of the public key's DER. A gateway spelling it otherwise would not find the
    # key such a box names.
    der = serialization.load_pem_public_key(public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert kid == hashlib.sha256(der).hexdigest()[:16]
    assert private_key_id(private_pem) == kid
    sealed = seal(public_pem, CANARY)
    assert sealed_key_id(sealed) == kid
    assert base64.b64decode(sealed)[:4] == b"TSG2"


def test_a_box_relabelled_with_another_key_id_is_refused_by_both_keys(tmp_path, keypair: tuple[bytes, bytes]) -> None:  # type: ignore[no-untyped-def]
    """The key id is authenticated (AES-GCM associated data): a relabelled box opens with no key."""
    other_public, other_private = ensure_gateway_keypair(tmp_path / "other")
    raw = base64.b64decode(seal(keypair[0], CANARY))
    own, other = key_id(keypair[0]).encode(), key_id(other_public).encode()
    relabelled = base64.b64encode(raw.replace(own, other, 1)).decode()
    assert sealed_key_id(relabelled) == other.decode()
    for private_pem in (keypair[1], other_private):
        with pytest.raises(SealError, match="cannot be opened"):
            unseal(private_pem, relabelled)


def _seal_v1(public_pem: bytes, credentials: Credentials) -> str:
    """A box as the first version of the CLI (and an external system following it) seals it."""
    public_key = serialization.load_pem_public_key(public_pem)
    content_key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    plaintext = json.dumps({"user": credentials.user, "password": credentials.password,
                            "pincode": credentials.pincode, "cf_proprietario": credentials.cf_proprietario}).encode()
    ciphertext = AESGCM(content_key).encrypt(nonce, plaintext, b"TSG1")
    wrapped = public_key.encrypt(content_key, _OAEP)  # type: ignore[union-attr]
    return base64.b64encode(b"TSG1" + struct.pack(">H", len(wrapped)) + wrapped + nonce + ciphertext).decode()


def test_a_version_1_box_without_key_id_still_opens(keypair: tuple[bytes, bytes]) -> None:
    sealed = _seal_v1(keypair[0], CANARY)
    assert sealed_key_id(sealed) is None
    assert unseal(keypair[1], sealed) == CANARY


@pytest.mark.parametrize("blob", [b"TSG2", b"TSG2\x10abc", b"TSG2\x00\x00\x01", b"XXXX\x00\x01", b"TSG1\x00"])
def test_truncated_or_unknown_boxes_are_refused_by_what_is_wrong(keypair: tuple[bytes, bytes], blob: bytes) -> None:
    with pytest.raises(SealError, match=r"truncated|unknown format"):
        unseal(keypair[1], base64.b64encode(blob).decode())


def test_the_gateway_says_in_italian_why_a_stored_box_cannot_be_opened(keypair: tuple[bytes, bytes]) -> None:
    """What the operator reads when a stored box does not open (services.ts_gateway.handlers._unopenable): the key it
    was sealed to and the gateway's current one, or that it is not whole; never SealError's English."""
    from services.ts_gateway.handlers import _unopenable

    sealed = seal(keypair[0], CANARY)
    mine = key_id(keypair[0])
    assert _unopenable(sealed, "0123456789abcdef") == (
        f"le credenziali cifrate di questa richiesta sono sigillate con la chiave {mine} del gateway TS, che il "
        "gateway non custodisce più (la sua chiave attuale è 0123456789abcdef)")
    raw = bytearray(base64.b64decode(sealed))
    raw[-1] ^= 0x01  # sealed to the current key, but not whole
    for box in (base64.b64encode(bytes(raw)).decode(), "not a box at all"):
        assert _unopenable(box, mine) == ("le credenziali cifrate di questa richiesta non si possono aprire: non "
                                          "sono integre")
