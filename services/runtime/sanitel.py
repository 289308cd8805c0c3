"""Encryption under the SanitelCF certificate of Sistema TS.

Sistema TS wants some fields "cifrati" with the public key of its SanitelCF certificate:
cfCittadino and cfProprietario in the 730 file, pincodeInvianteCifrato in the SOAP request.
The scheme is RSA with PKCS#1 v1.5 padding, the result in base64
(ws-asincrono-spec v2.5 §5 "Campo cifrato"; ricevute-spec 2015 §2.1 "criptato tramite SanitelCF.cer").

The certificate rotates, so it is always loaded from a path given by settings, never bundled.
PKCS#1 v1.5 encryption is randomised: the same CF gives a different ciphertext every time,
which is why nothing downstream may compare ciphertexts.

Plaintexts are secrets or personal data: no error raised here ever carries one.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import re
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

# 1024 bits gives 172 base64 characters, like the real SanitelCF.cer; the 730 schema caps
# cfCittadino/cfProprietario at 256 characters (730_precompilata.xsd cfType), i.e. at most 1536 bits.
TEST_KEY_BITS = 1024


class SanitelError(ValueError):
    """The certificate cannot be used, or a value cannot be encrypted/decrypted."""


def load_certificate(path: Path) -> x509.Certificate:
    """Read the SanitelCF certificate, PEM or DER (TS publishes it as a DER `.cer`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SanitelError(f"SanitelCF certificate {path}: cannot be read ({exc.strerror})") from exc
    return parse_certificate(data, origin=str(path))


def parse_certificate(data: bytes, *, origin: str = "<bytes>") -> x509.Certificate:
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise SanitelError(
            f"SanitelCF certificate {origin}: neither a PEM nor a DER X.509 certificate") from exc
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise SanitelError(f"SanitelCF certificate {origin}: the public key is not RSA")
    return cert


def ciphertext_length(cert: x509.Certificate) -> int:
    """Length in characters of every base64 ciphertext this certificate produces."""
    key = _rsa_public_key(cert)
    key_bytes = (key.key_size + 7) // 8
    return 4 * ((key_bytes + 2) // 3)


def encrypt_for_ts(cert: x509.Certificate, plaintext: str) -> str:
    """RSA PKCS#1 v1.5 under the certificate's public key, base64: the TS "campo cifrato"."""
    key = _rsa_public_key(cert)
    data = plaintext.encode("utf-8")
    # PKCS#1 v1.5 carries at most k-11 bytes; a CF (16) or a pincode is far below that.
    if len(data) > (key.key_size + 7) // 8 - 11:
        raise SanitelError(f"value of {len(data)} bytes is too long for a {key.key_size}-bit RSA key")
    return base64.b64encode(key.encrypt(data, padding.PKCS1v15())).decode("ascii")


@functools.lru_cache(maxsize=8)
def _private_key(private_key_pem: bytes) -> rsa.RSAPrivateKey:
    # Loading checks the key (~27 ms): once per key, not once per CF of a 5,000-document file.
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SanitelError("the private key is not RSA")
    return key


_CF_SHAPE = re.compile(r"[A-Z0-9]{16}|[0-9]{11}")


def cf_shaped(value: str) -> bool:
    """Shaped like a codice fiscale: 16 upper-case letters and digits, or 11 digits. Only the
    shape: Sistema TS's own test accounts use codes such as PROVAX00X00X000Y with no check letter."""
    return _CF_SHAPE.fullmatch(value) is not None


def alphanumeric(value: str) -> bool:
    """Non-empty ASCII letters and digits: what every TS "campo cifrato" holds (a pincode is a
    "Stringa alfanumerica", ws-asincrono-spec v2.5 par. 5)."""
    return value.isascii() and value.isalnum()


def decrypt_with_key(private_key_pem: bytes, b64: str, valid: Callable[[str], bool] = alphanumeric) -> str:
    """The TS side of `encrypt_for_ts`: used by the TS simulator and by tests, never by the product.

    A wrong key does not always raise: current OpenSSL answers a PKCS#1 v1.5 padding failure with
    "implicit rejection" (random bytes instead of an error, against the Marvin timing attack).
    Measured: 1.8% of wrong-key ciphertexts came back as text. So the plaintext must also have the
    shape of what was encrypted (`valid`: alphanumeric by default, `cf_shaped` for a codice
    fiscale); one that has not is a wrong key."""
    key = _private_key(private_key_pem)
    try:
        raw = base64.b64decode(b64, validate=True)
        text = key.decrypt(raw, padding.PKCS1v15()).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise SanitelError("ciphertext cannot be decrypted with this key") from exc
    if not valid(text):
        raise SanitelError("ciphertext cannot be decrypted with this key")
    return text


def make_test_certificate(common_name: str = "SanitelCF TEST") -> tuple[bytes, bytes]:
    """A throw-away RSA key and self-signed certificate: (cert_pem, private_key_pem).

    For the TS simulator and the tests only; the real certificate comes from Sistema TS.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=TEST_KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


def _rsa_public_key(cert: x509.Certificate) -> rsa.RSAPublicKey:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SanitelError("SanitelCF certificate: the public key is not RSA")
    return key
