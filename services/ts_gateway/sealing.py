"""Credentials for one TS submission, and how they travel sealed to the gateway.

The operator types the TS user, password, pincode and C.F. proprietario at the CLI. They must
never appear in clear on Kafka, in the event store, in files or in logs (design.md, Secrets), so
the CLI seals them to the gateway's public key and only the gateway can open the box:

    RSA-OAEP(SHA-256) wraps a random AES-256-GCM key; AES-GCM encrypts the JSON
    {user, password, pincode, cf_proprietario}; the result is one base64 text.

Sealed text layout (before base64): b"TSG1" | u16 wrapped-key length | wrapped key | 12-byte nonce
| ciphertext+tag. The magic/version prefix is bound as AES-GCM associated data, so a box cannot be
replayed under a different format version.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_MAGIC = b"TSG1"
_NONCE_BYTES = 12
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
PUBLIC_KEY_FILE = "ts_gateway_public.pem"
PRIVATE_KEY_FILE = "ts_gateway_private.pem"


@dataclass(frozen=True, repr=False)
class Credentials:
    """TS user, password, pincode and C.F. proprietario, used for one submission, never stored."""

    user: str
    password: str
    pincode: str
    cf_proprietario: str

    def __repr__(self) -> str:
        # The values must not leak through logs, tracebacks or pytest assertion rewriting.
        return "Credentials(user=***, password=***, pincode=***, cf_proprietario=***)"

    __str__ = __repr__

    def secrets(self) -> tuple[str, ...]:
        """The clear values, for canary searches in tests and log scrubbing."""
        return (self.user, self.password, self.pincode, self.cf_proprietario)


class SealError(ValueError):
    """A sealed box that cannot be opened (wrong key, tampered, truncated). Never carries values."""


def seal(public_key_pem: bytes, credentials: Credentials) -> str:
    public_key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise SealError("the gateway public key is not an RSA key")
    content_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(_NONCE_BYTES)
    plaintext = json.dumps(
        {
            "user": credentials.user,
            "password": credentials.password,
            "pincode": credentials.pincode,
            "cf_proprietario": credentials.cf_proprietario,
        }
    ).encode()
    ciphertext = AESGCM(content_key).encrypt(nonce, plaintext, _MAGIC)
    wrapped = public_key.encrypt(content_key, _OAEP)
    blob = _MAGIC + struct.pack(">H", len(wrapped)) + wrapped + nonce + ciphertext
    return base64.b64encode(blob).decode("ascii")


def unseal(private_key_pem: bytes, sealed: str) -> Credentials:
    try:
        blob = base64.b64decode(sealed, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SealError("sealed credentials are not valid base64") from exc
    if blob[:4] != _MAGIC or len(blob) < 6:
        raise SealError("sealed credentials have an unknown format (expected TSG1)")
    (wrapped_len,) = struct.unpack(">H", blob[4:6])
    wrapped = blob[6 : 6 + wrapped_len]
    nonce = blob[6 + wrapped_len : 6 + wrapped_len + _NONCE_BYTES]
    ciphertext = blob[6 + wrapped_len + _NONCE_BYTES :]
    if len(wrapped) != wrapped_len or len(nonce) != _NONCE_BYTES or not ciphertext:
        raise SealError("sealed credentials are truncated")
    private_key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise SealError("the gateway private key is not an RSA key")
    try:
        content_key = private_key.decrypt(wrapped, _OAEP)
        plaintext = AESGCM(content_key).decrypt(nonce, ciphertext, _MAGIC)
    except (ValueError, InvalidTag) as exc:
        raise SealError("sealed credentials cannot be opened with this gateway key") from exc
    fields = json.loads(plaintext)
    try:
        return Credentials(
            user=fields["user"],
            password=fields["password"],
            pincode=fields["pincode"],
            cf_proprietario=fields["cf_proprietario"],
        )
    except KeyError as exc:
        raise SealError(f"sealed credentials lack the field {exc.args[0]!r}") from exc


def ensure_gateway_keypair(directory: Path) -> tuple[bytes, bytes]:
    """Return (public_pem, private_pem), creating the pair once; the private key file is mode 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    public_path = directory / PUBLIC_KEY_FILE
    private_path = directory / PRIVATE_KEY_FILE
    if private_path.exists() and public_path.exists():
        return public_path.read_bytes(), private_path.read_bytes()
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Created with 0600 from the first byte: no window in which the key is world-readable.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return public_pem, private_pem
