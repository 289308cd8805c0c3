"""Signed checkpoints of the event store (issue 13, item 6).

A hash chain shows that a stream was not edited in place, but not that somebody with write access
to the database did not rewrite a whole stream and recompute every hash, or drop its last events.
A checkpoint closes that gap: the head (version, hash) of every stream goes into an RFC 6962
Merkle tree; its root, with the global position covered, is signed with an Ed25519 key held in a
file outside the database (created on first use, mode 0600), published on `audit.checkpoint` and
written as `checkpoint-N.json` with the heads. Later, every stream is re-hashed from its rows'
contents (never trusting the stored hash columns) and compared with the signed head.

Coverage: the heads are taken in one snapshot over the events whose transaction is below the
snapshot's xmin, the same horizon as `EventStore.read_all`: every event at or before the covered
global position (transaction_id, position) is in, none after it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contracts.audit import Checkpoint, CheckpointFile, InclusionProof, StreamHead, signed_bytes
from contracts.envelope import Envelope
from services.runtime.db import canonical_json
from services.runtime.eventstore import GENESIS_HASH, event_hash, to_stored
from services.runtime.settings import bootstrap_list

TOPIC = "audit.checkpoint"

# --- RFC 6962 Merkle tree (pure functions) ---------------------------------------------------


def leaf_bytes(head: StreamHead) -> bytes:
    return canonical_json({"hash": head.hash, "stream_id": head.stream_id, "version": head.version})


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _root(hashes: Sequence[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return node_hash(_root(hashes[:k]), _root(hashes[k:]))


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of RFC 6962 section 2.1; the empty tree hashes to sha256("")."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    return _root([leaf_hash(leaf) for leaf in leaves])


def _path(index: int, hashes: Sequence[bytes]) -> list[bytes]:
    if len(hashes) == 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return [*_path(index, hashes[:k]), _root(hashes[k:])]
    return [*_path(index - k, hashes[k:]), _root(hashes[:k])]


def inclusion_path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 section 2.1.1: the siblings from the leaf up to the root."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf index {index} is outside a tree of {len(leaves)} leaves")
    return _path(index, [leaf_hash(leaf) for leaf in leaves])


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2: does `leaf` sit at `index` of the tree of `size` leaves with `root`?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf_hash(leaf)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


# --- the signing key (a file, never the database) --------------------------------------------


def public_key_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".pub")


def load_or_create_key(key_path: Path) -> Ed25519PrivateKey:
    """The private key at `key_path`; created (mode 0600, public key beside it) on first use.

    Refuses a key file that group or others can read: the key is what makes a checkpoint worth
    more than the database it covers.
    """
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile: use theirs
            return load_or_create_key(key_path)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        public_key_path(key_path).write_bytes(public_pem(key.public_key()))
        return key
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(f"checkpoint signing key {key_path} is readable by others (mode {mode:o}): "
                         f"chmod 600 {key_path}")
    loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"checkpoint signing key {key_path} is not an Ed25519 private key")
    return loaded


class SigningKeyMissing(ValueError):
    """The signing key file is gone while checkpoints it signed are there: a new key is made only when asked."""


def signing_key(key_path: Path, directory: Path, *, new_key: bool = False) -> Ed25519PrivateKey:
    """The signing key (load_or_create_key), refusing to make a new one in place of a key that signed the checkpoints
    of `directory` unless `new_key`: a lost key replaced without a word left every later checkpoint signed by a key
    the auditors do not hold, with nothing telling them (`flows replay --all --chains-only` found them matching)."""
    if not key_path.exists() and not new_key:
        previous = latest(directory)
        if previous is not None:
            raise SigningKeyMissing(
                f"the checkpoint signing key {key_path} is missing, and checkpoint {previous.sequence} in {directory} "
                f"was signed by key {previous.key_id}: restore the key file from its backup; only if it is lost for "
                "good, make a new one with `flows audit checkpoint --new-key` and give the auditors its public key "
                "(`flows audit public-key`)")
    return load_or_create_key(key_path)


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key file (PEM), or the private key file whose public half is wanted."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return load_or_create_key(path).public_key()
    loaded = serialization.load_pem_public_key(data)
    if not isinstance(loaded, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return loaded


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signature_ok(checkpoint: Checkpoint, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(base64.b64decode(checkpoint.signature), checkpoint.signed_bytes())
    except (InvalidSignature, ValueError):
        return False
    return True


# --- taking a checkpoint ---------------------------------------------------------------------

_HEADS = """
SELECT DISTINCT ON (stream_id) stream_id, version, hash FROM events
WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY stream_id, version DESC
"""
_COVERED = """
SELECT transaction_id::text::bigint AS transaction_id, position, (SELECT count(*) FROM events
    WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())) AS events
FROM events WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id DESC, position DESC LIMIT 1
"""


async def read_heads(pool: asyncpg.Pool) -> tuple[list[StreamHead], int, int, int]:
    """(heads sorted by stream id, transaction_id, position, events) in one snapshot."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(_HEADS)
        covered = await conn.fetchrow(_COVERED)
    heads = sorted((StreamHead(stream_id=r["stream_id"], version=r["version"], hash=bytes(r["hash"]).hex())
                    for r in rows), key=lambda h: h.stream_id)
    if covered is None:
        return heads, 0, 0, 0
    return heads, int(covered["transaction_id"]), int(covered["position"]), int(covered["events"])


def checkpoint_files(directory: Path) -> list[Path]:
    found = []
    for path in directory.glob("checkpoint-*.json"):
        number = path.stem.removeprefix("checkpoint-")
        if number.isdigit():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


def latest(directory: Path) -> CheckpointFile | None:
    files = checkpoint_files(directory)
    return read_checkpoint(files[-1]) if files else None


def read_checkpoint(path: Path) -> CheckpointFile:
    return CheckpointFile.model_validate_json(path.read_bytes())


def build(heads: list[StreamHead], key: Ed25519PrivateKey, *, sequence: int, transaction_id: int,
          position: int, events: int, created_at: datetime | None = None) -> CheckpointFile:
    created = (created_at or datetime.now(UTC)).astimezone(UTC)
    root = merkle_root([leaf_bytes(h) for h in heads]).hex()
    message = signed_bytes(sequence, created, transaction_id, position, events, len(heads), root)
    return CheckpointFile(sequence=sequence, created_at=created, transaction_id=transaction_id, position=position,
                          events=events, tree_size=len(heads), root=root, key_id=key_id(key.public_key()),
                          signature=base64.b64encode(key.sign(message)).decode(), heads=heads)


@dataclass(frozen=True)
class Taken:
    checkpoint: CheckpointFile
    path: Path
    new: bool  # False: nothing was appended since the latest checkpoint, which is returned


async def take(pool: asyncpg.Pool, key_path: Path, directory: Path, bootstrap: str | None, *,
               force: bool = False, new_key: bool = False) -> Taken:
    """Signs the current heads, writes checkpoint-N.json and publishes it on `audit.checkpoint`.

    Without `force`, a checkpoint is only taken when events were appended since the latest one. A missing key is
    made anew only for the first checkpoint or with `new_key` (signing_key).
    """
    key = signing_key(key_path, directory, new_key=new_key)
    if new_key:
        force = True  # the new key's first checkpoint, even when nothing was appended: its public key is then in use
    directory.mkdir(parents=True, exist_ok=True)
    heads, transaction_id, position, events = await read_heads(pool)
    previous = latest(directory)
    if previous is not None and not force and (previous.transaction_id, previous.position, previous.events) == (
            transaction_id, position, events):
        return Taken(previous, directory / f"checkpoint-{previous.sequence}.json", new=False)
    sequence = previous.sequence + 1 if previous else 1
    checkpoint = build(heads, key, sequence=sequence, transaction_id=transaction_id, position=position,
                       events=events)
    path = directory / f"checkpoint-{sequence}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(checkpoint.model_dump_json(indent=2) + "\n")
    tmp.replace(path)
    if bootstrap:
        await publish(checkpoint, bootstrap)
    return Taken(checkpoint, path, new=True)


async def publish(checkpoint: Checkpoint, bootstrap: str) -> None:
    from aiokafka import AIOKafkaProducer

    body = Checkpoint.model_validate(checkpoint.model_dump(exclude={"heads"})).model_dump_json().encode()
    envelope = Envelope.new(TOPIC, "/flows/audit", subject=str(checkpoint.sequence))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_list(bootstrap), enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(TOPIC, body, key=b"checkpoint", headers=envelope.to_headers())
    finally:
        await producer.stop()


# --- proofs ------------------------------------------------------------------------------------


def prove(checkpoint: CheckpointFile, stream_id: str) -> InclusionProof:
    index = next((i for i, h in enumerate(checkpoint.heads) if h.stream_id == stream_id), None)
    if index is None:
        raise ValueError(f"stream {stream_id} is not in checkpoint {checkpoint.sequence} "
                         f"(taken {checkpoint.created_at:%Y-%m-%d %H:%M:%S} UTC): take a newer one with "
                         "`flows audit checkpoint`")
    leaves = [leaf_bytes(h) for h in checkpoint.heads]
    signed = Checkpoint.model_validate(checkpoint.model_dump(exclude={"heads"}))
    return InclusionProof(head=checkpoint.heads[index], leaf_index=index,
                          path=[p.hex() for p in inclusion_path(index, leaves)], checkpoint=signed)


def check_proof(proof: InclusionProof, key: Ed25519PublicKey) -> list[str]:
    """What is wrong with the proof (empty: it verifies) with nothing but the public key."""
    problems = []
    cp = proof.checkpoint
    if not signature_ok(cp, key):
        problems.append(f"checkpoint {cp.sequence}: the signature does not verify with public key "
                        f"{key_id(key)} (signed by key {cp.key_id})")
    if not verify_inclusion(leaf_bytes(proof.head), proof.leaf_index, cp.tree_size,
                            [bytes.fromhex(p) for p in proof.path], bytes.fromhex(cp.root)):
        problems.append(f"stream {proof.head.stream_id} version {proof.head.version}: the audit path does not "
                        f"lead to the signed root of checkpoint {cp.sequence}")
    return problems


# --- checking the database against a checkpoint -----------------------------------------------


async def check_store(pool: asyncpg.Pool, checkpoint: CheckpointFile, key: Ed25519PublicKey,
                      stream_ids: Sequence[str] | None = None, batch: int = 5000) -> list[str]:
    """Every stream (or only `stream_ids`) re-hashed from its rows' contents and compared with the
    head the checkpoint signed. Returns one line per problem, each naming the stream."""
    problems = []
    if not signature_ok(checkpoint, key):
        problems.append(f"checkpoint {checkpoint.sequence}: the signature does not verify with public key "
                        f"{key_id(key)}: the checkpoint file itself was altered or signed by another key")
    if merkle_root([leaf_bytes(h) for h in checkpoint.heads]).hex() != checkpoint.root or \
            len(checkpoint.heads) != checkpoint.tree_size:
        problems.append(f"checkpoint {checkpoint.sequence}: its heads do not hash to its signed root")
    wanted = {h.stream_id: h for h in checkpoint.heads
              if stream_ids is None or h.stream_id in stream_ids}
    computed: dict[str, str] = {}  # stream -> recomputed hash at the signed version
    lengths: dict[str, int] = {}
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        last: tuple[str, int] = ("", 0)
        chain: tuple[str | None, bytes] = (None, GENESIS_HASH)  # (stream, recomputed hash of its previous event)
        while True:
            rows = await conn.fetch(
                "SELECT stream_id, version, position, transaction_id, event_id, type, data, actor, metadata, "
                "recorded_at, prev_hash, hash FROM events WHERE (stream_id, version) > ($1, $2) "
                "AND stream_id = ANY($4::text[]) ORDER BY stream_id, version LIMIT $3",
                last[0], last[1], batch, list(wanted))
            if not rows:
                break
            for row in rows:
                event = to_stored(row)
                prev = chain[1] if chain[0] == event.stream_id else GENESIS_HASH
                digest = event_hash(prev, stream_id=event.stream_id, version=event.version, event_id=event.id,
                                    type=event.type, data=event.data, actor=event.actor,
                                    recorded_at=event.recorded_at, metadata=event.metadata)
                chain = (event.stream_id, digest)
                lengths[event.stream_id] = lengths.get(event.stream_id, 0) + 1
                head = wanted[event.stream_id]
                if event.version == head.version:
                    computed[event.stream_id] = digest.hex()
                last = (event.stream_id, event.version)
    for stream_id, head in sorted(wanted.items()):
        cp = f"checkpoint {checkpoint.sequence}"
        if stream_id not in lengths:
            problems.append(f"{stream_id}: the stream is gone; {cp} signed it at version {head.version}")
        elif lengths[stream_id] < head.version or stream_id not in computed:
            problems.append(f"{stream_id}: has {lengths[stream_id]} event(s), {cp} signed version {head.version}: "
                            "events were deleted")
        elif computed[stream_id] != head.hash:
            problems.append(f"{stream_id}: its events up to version {head.version} hash to {computed[stream_id]}, "
                            f"{cp} signed {head.hash}: the stream was rewritten")
    return problems
