"""Credentials for one TS submission, and how they travel sealed to the gateway.

The operator types the TS user, password, pincode and C.F. proprietario at the CLI. They must
never appear in clear on Kafka, in the event store, in files or in logs (design.md, Secrets), so
the CLI seals them to the gateway's public key and only the gateway can open the box:

    RSA-OAEP(SHA-256) wraps a random AES-256-GCM key; AES-GCM encrypts the JSON
    {user, password, pincode, cf_proprietario}; the result is one base64 text.

Sealed text layout (before base64), version 2: b"TSG2" | u8 key-id length | key id (ASCII) |
u16 wrapped-key length | wrapped key | 12-byte nonce | ciphertext+tag. The key id (`key_id`: the
first 16 hex digits of the SHA-256 of the public key's DER) names the gateway key the box was
sealed to, so a gateway that rotated its key (keys.py) knows which private key opens it; it is not
secret. Magic and key id are bound as AES-GCM associated data: a box cannot be replayed under
another format version or relabelled with another key id. Version 1 (b"TSG1", no key id) is still
opened, by trying each key the gateway holds: an external system sealing the old way keeps working.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_MAGIC_V1 = b"TSG1"
_MAGIC = b"TSG2"
_NONCE_BYTES = 12
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
KEY_BITS = 3072  # of each gateway key pair (NIST: 128-bit security)
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


def key_id(public_key_pem: bytes) -> str:
    """The id of a gateway key: 16 hex digits of the SHA-256 of its public key (DER). Not secret."""
    public_key = serialization.load_pem_public_key(public_key_pem)
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def load_private_key(private_key_pem: bytes) -> rsa.RSAPrivateKey:
    """Parse (and validate: slow, hundreds of ms for RSA-3072) a private key once, to use it many times."""
    private_key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise SealError("the gateway private key is not an RSA key")
    return private_key


def private_key_id(private_key: bytes | rsa.RSAPrivateKey) -> str:
    """The id of the key pair a private key belongs to (see `key_id`)."""
    if isinstance(private_key, bytes):
        private_key = load_private_key(private_key)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key_id(public_pem)


def seal(public_key_pem: bytes, credentials: Credentials) -> str:
    public_key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise SealError("the gateway public key is not an RSA key")
    kid = key_id(public_key_pem).encode("ascii")
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
    header = _MAGIC + struct.pack(">B", len(kid)) + kid
    ciphertext = AESGCM(content_key).encrypt(nonce, plaintext, header)
    wrapped = public_key.encrypt(content_key, _OAEP)
    blob = header + struct.pack(">H", len(wrapped)) + wrapped + nonce + ciphertext
    return base64.b64encode(blob).decode("ascii")


@dataclass(frozen=True)
class _Box:
    key_id: str | None  # None: a version 1 box, which does not say
    associated: bytes  # the bytes bound as AES-GCM associated data
    wrapped: bytes
    nonce: bytes
    ciphertext: bytes


def _parse(sealed: str) -> _Box:
    try:
        blob = base64.b64decode(sealed, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SealError("sealed credentials are not valid base64") from exc
    if blob[:4] == _MAGIC:
        if len(blob) < 5:
            raise SealError("sealed credentials are truncated")
        kid_len = blob[4]
        header = blob[: 5 + kid_len]
        try:
            kid: str | None = header[5:].decode("ascii")
        except UnicodeDecodeError as exc:
            raise SealError("sealed credentials carry a key id that is not ASCII") from exc
        if len(header) != 5 + kid_len or not kid:
            raise SealError("sealed credentials are truncated")
        rest = blob[len(header) :]
    elif blob[:4] == _MAGIC_V1:
        header, kid, rest = _MAGIC_V1, None, blob[4:]
    else:
        raise SealError("sealed credentials have an unknown format (expected TSG2 or TSG1)")
    if len(rest) < 2:
        raise SealError("sealed credentials are truncated")
    (wrapped_len,) = struct.unpack(">H", rest[:2])
    wrapped = rest[2 : 2 + wrapped_len]
    nonce = rest[2 + wrapped_len : 2 + wrapped_len + _NONCE_BYTES]
    ciphertext = rest[2 + wrapped_len + _NONCE_BYTES :]
    if len(wrapped) != wrapped_len or len(nonce) != _NONCE_BYTES or not ciphertext:
        raise SealError("sealed credentials are truncated")
    return _Box(kid, header, wrapped, nonce, ciphertext)


def sealed_key_id(sealed: str) -> str | None:
    """The id of the key a box was sealed to, read without opening it (None for a version 1 box)."""
    return _parse(sealed).key_id


def unseal(private_key: bytes | rsa.RSAPrivateKey, sealed: str) -> Credentials:
    """Open a box with a private key (PEM, or one `load_private_key` parsed already)."""
    box = _parse(sealed)
    if isinstance(private_key, bytes):
        private_key = load_private_key(private_key)
    if box.key_id is not None and box.key_id != private_key_id(private_key):
        raise SealError(f"sealed credentials cannot be opened with this gateway key (sealed to key {box.key_id})")
    try:
        content_key = private_key.decrypt(box.wrapped, _OAEP)
        plaintext = AESGCM(content_key).decrypt(box.nonce, box.ciphertext, box.associated)
    except (ValueError, InvalidTag) as exc:
        raise SealError("sealed credentials cannot be opened with this gateway key") from exc
    try:
        fields = json.loads(plaintext)
        return Credentials(
            user=fields["user"],
            password=fields["password"],
            pincode=fields["pincode"],
            cf_proprietario=fields["cf_proprietario"],
        )
    except KeyError as exc:
        raise SealError(f"sealed credentials lack the field {exc.args[0]!r}") from exc
    except (ValueError, TypeError):  # never chain the plaintext into a traceback
        raise SealError("sealed credentials do not hold the expected JSON object") from None


KEYS_LOCK_FILE = ".rotate.lock"


@contextlib.contextmanager
def keys_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on the keys folder: whoever creates or rotates its key pair holds it. Every replica
    of the gateway sharing the folder creates the pair at its first start if it is missing; without the lock
    two would write two pairs (one fails, or one reads the other's half-written file)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / KEYS_LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def public_of(private_pem: bytes) -> bytes:
    """The public key (PEM) of a private key (PEM)."""
    private_key = serialization.load_pem_private_key(private_pem, password=None)
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def new_key_pair() -> tuple[bytes, bytes]:
    """A new gateway key pair of KEY_BITS: (public_pem, private_pem), the private key PKCS8 unencrypted."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return public_of(private_pem), private_pem


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write to a hidden temporary file created with `mode` (never readable by others, from its first byte),
    fsync, rename. A write that fails (a full disk) leaves neither a partial file nor its temporary one."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.unlink(missing_ok=True)  # left by a crash in the middle of a write
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def ensure_gateway_keypair(directory: Path) -> tuple[bytes, bytes]:
    """Return (public_pem, private_pem), creating the pair once; the private key file is mode 0600.
    Under `keys_lock`: replicas starting together create one pair and all read it whole.

    Each file is written whole or not at all (`write_atomically`), the private key first: a first start that
    stops between the two (a full disk, a kill) leaves the private key alone, and the next start derives its
    public key instead of failing on the private key that exists (nothing can have been sealed to a public key
    that was never written)."""
    public_path = directory / PUBLIC_KEY_FILE
    private_path = directory / PRIVATE_KEY_FILE
    with keys_lock(directory):
        if private_path.exists():
            private_pem = private_path.read_bytes()
            if public_path.exists():
                return public_path.read_bytes(), private_pem
            public_pem = public_of(private_pem)
            write_atomically(public_path, public_pem, 0o644)
            return public_pem, private_pem
        public_pem, private_pem = new_key_pair()
        write_atomically(private_path, private_pem, 0o600)
        write_atomically(public_path, public_pem, 0o644)
        return public_pem, private_pem
