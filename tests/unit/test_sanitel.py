"""Encryption of CFs and pincode under the SanitelCF certificate (RSA PKCS#1 v1.5, base64)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.runtime.sanitel import (
    SanitelError,
    cf_shaped,
    ciphertext_length,
    decrypt_with_key,
    encrypt_for_ts,
    load_certificate,
    make_test_certificate,
)

MARIO_ROSSI = "RSSMRA80A01F839W"


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return make_test_certificate()


def test_a_cf_encrypted_for_ts_decrypts_back_with_the_test_key(keys):
    cert = x509.load_pem_x509_certificate(keys[0])
    cipher = encrypt_for_ts(cert, MARIO_ROSSI)
    assert MARIO_ROSSI not in cipher
    assert decrypt_with_key(keys[1], cipher) == MARIO_ROSSI


def test_the_ciphertext_is_base64_of_one_rsa_block_like_the_official_examples(keys):
    cert = x509.load_pem_x509_certificate(keys[0])
    cipher = encrypt_for_ts(cert, MARIO_ROSSI)
    assert len(base64.b64decode(cipher, validate=True)) == 128
    assert len(cipher) == ciphertext_length(cert) == 172  # the length of cfCittadino in the TS examples


def test_encryption_is_randomised_so_equal_cfs_give_different_ciphertexts(keys):
    cert = x509.load_pem_x509_certificate(keys[0])
    first, second = encrypt_for_ts(cert, MARIO_ROSSI), encrypt_for_ts(cert, MARIO_ROSSI)
    assert first != second
    assert decrypt_with_key(keys[1], first) == decrypt_with_key(keys[1], second) == MARIO_ROSSI


def test_the_certificate_loads_from_pem_and_from_der(keys, tmp_path: Path):
    pem, der = tmp_path / "SanitelCF.pem", tmp_path / "SanitelCF.cer"
    pem.write_bytes(keys[0])
    der.write_bytes(x509.load_pem_x509_certificate(keys[0]).public_bytes(serialization.Encoding.DER))
    for path in (pem, der):
        cert = load_certificate(path)
        assert cert.subject.rfc4514_string() == "CN=SanitelCF TEST"
        assert decrypt_with_key(keys[1], encrypt_for_ts(cert, "1234567890")) == "1234567890"


def test_a_missing_or_garbage_certificate_is_an_error_naming_the_path(tmp_path: Path):
    with pytest.raises(SanitelError, match=r"nowhere\.cer: cannot be read"):
        load_certificate(tmp_path / "nowhere.cer")
    garbage = tmp_path / "garbage.cer"
    garbage.write_bytes(b"this is not a certificate")
    with pytest.raises(SanitelError, match=r"garbage\.cer: neither a PEM nor a DER"):
        load_certificate(garbage)


def test_a_failed_decryption_never_shows_the_ciphertext_or_the_key(keys):
    other_cert, _ = make_test_certificate("someone else")
    cipher = encrypt_for_ts(x509.load_pem_x509_certificate(other_cert), MARIO_ROSSI)
    with pytest.raises(SanitelError) as caught:
        decrypt_with_key(keys[1], cipher, valid=cf_shaped)
    assert cipher not in str(caught.value) and MARIO_ROSSI not in str(caught.value)


def test_a_wrong_key_never_yields_a_codice_fiscale_despite_implicit_rejection(keys):
    """OpenSSL answers a bad PKCS#1 v1.5 padding with random bytes, not always an error; about 2% of
    them decoded as text before the shape check, so 300 tries found some every time."""
    other = x509.load_pem_x509_certificate(make_test_certificate("someone else")[0])
    leaked = []
    for _ in range(300):
        try:
            leaked.append(decrypt_with_key(keys[1], encrypt_for_ts(other, MARIO_ROSSI), valid=cf_shaped))
        except SanitelError:
            pass
    assert leaked == []


def test_a_value_too_long_for_one_rsa_block_is_refused_without_echoing_it(keys):
    cert = x509.load_pem_x509_certificate(keys[0])
    secret = "p" * 200
    with pytest.raises(SanitelError, match="too long") as caught:
        encrypt_for_ts(cert, secret)
    assert secret not in str(caught.value)


def _numbers(private_key_pem: bytes):  # type: ignore[no-untyped-def]
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    return key.private_numbers()  # type: ignore[union-attr]


def test_the_ciphertext_is_pkcs1_v1_5_as_rfc_8017_writes_it_read_by_plain_arithmetic(keys):
    """Sistema TS decrypts with its own RSA, not ours: the block must be RFC 8017's RSAES-PKCS1-v1_5 (7.2.1),
    checked here by the textbook arithmetic, without the library that wrote it. EM = 0x00 || 0x02 || PS || 0x00 || M,
    PS at least 8 non-zero random octets, and the ciphertext is EM^e mod n (so EM = c^d mod n), k octets long."""
    private = _numbers(keys[1])
    n, d = private.public_numbers.n, private.d
    k = (n.bit_length() + 7) // 8
    for cf in (MARIO_ROSSI, "PROVAX00X00X000Y", "1234567890"):
        raw = base64.b64decode(encrypt_for_ts(x509.load_pem_x509_certificate(keys[0]), cf), validate=True)
        assert len(raw) == k
        em = pow(int.from_bytes(raw, "big"), d, n).to_bytes(k, "big")
        assert em[:2] == b"\x00\x02", em[:2]
        separator = em.index(b"\x00", 2)
        padding_string = em[2:separator]
        assert len(padding_string) >= 8 and 0 not in padding_string
        assert em[separator + 1:] == cf.encode("ascii")


def test_a_block_built_by_rfc_8017_arithmetic_decrypts_in_the_simulator(keys):
    """The other way: a ciphertext made by hand as the RFC says (as another RSA implementation would) is read by
    `decrypt_with_key`, the Sistema TS simulator's side."""
    private = _numbers(keys[1])
    n, e = private.public_numbers.n, private.public_numbers.e
    k = (n.bit_length() + 7) // 8
    message = MARIO_ROSSI.encode("ascii")
    padding_string = bytes(range(1, k - len(message) - 2))  # non-zero octets (random in real use)
    em = b"\x00\x02" + padding_string + b"\x00" + message
    assert len(em) == k
    cipher = base64.b64encode(pow(int.from_bytes(em, "big"), e, n).to_bytes(k, "big")).decode("ascii")
    assert decrypt_with_key(keys[1], cipher, cf_shaped) == MARIO_ROSSI
