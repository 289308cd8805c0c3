"""Audit contracts: the signed checkpoint of the event store (`audit.checkpoint`).

A checkpoint is the root of an RFC 6962 Merkle tree whose leaves are the head of every stream
(sorted by stream id), with the global position it covers, signed with an Ed25519 key that lives
outside the database it protects. The heads themselves are in the checkpoint file
(`checkpoint-N.json`); the message carries the signed fields only, so its size does not grow
with the number of streams.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from contracts.topic import EXTERNAL, Topic

HEX32 = r"^[0-9a-f]{64}$"


class StreamHead(BaseModel):
    """One leaf: a stream's last covered event (its version and its chained hash)."""

    stream_id: str = Field(min_length=1)
    version: int = Field(ge=1)
    hash: str = Field(pattern=HEX32, description="hex sha256 of the stream's event at `version`")


class Checkpoint(BaseModel):
    """The signed statement: these `tree_size` stream heads, up to this global position, hash to `root`."""

    schema_version: int = 1
    sequence: int = Field(ge=1, description="1, 2, 3...: checkpoint-<sequence>.json")
    created_at: datetime
    transaction_id: int = Field(ge=0, description="global position covered: the last event's transaction id")
    position: int = Field(ge=0, description="global position covered: the last event's position")
    events: int = Field(ge=0, description="how many events the covered heads stand for")
    tree_size: int = Field(ge=0, description="number of leaves (streams)")
    root: str = Field(pattern=HEX32, description="RFC 6962 Merkle tree hash of the heads, hex")
    key_id: str = Field(description="first 16 hex digits of sha256 of the raw Ed25519 public key")
    signature: str = Field(description="base64 Ed25519 signature of signed_bytes()")

    def signed_bytes(self) -> bytes:
        return signed_bytes(self.sequence, self.created_at, self.transaction_id, self.position, self.events,
                            self.tree_size, self.root)


class CheckpointFile(Checkpoint):
    """`checkpoint-N.json`: the checkpoint with its leaves, enough to build any inclusion proof."""

    heads: list[StreamHead]


class InclusionProof(BaseModel):
    """What `flows audit prove N` prints: checkable with the public key alone."""

    schema_version: int = 1
    head: StreamHead
    leaf_index: int = Field(ge=0)
    path: list[str] = Field(description="sibling hashes, hex, leaf to root (RFC 6962 audit path)")
    checkpoint: Checkpoint


def signed_bytes(sequence: int, created_at: datetime, transaction_id: int, position: int, events: int,
                 tree_size: int, root: str) -> bytes:
    return (f"flows-checkpoint/v1\nsequence={sequence}\ncreated_at={created_at.isoformat()}\n"
            f"transaction_id={transaction_id}\nposition={position}\nevents={events}\n"
            f"tree_size={tree_size}\nroot={root}\n").encode()


class DeadLetterRedriven(BaseModel):
    """An operator re-published a dead letter to its original topic (stream `dead-letter-<id>`).

    The stream holds at most one decision, so a dead letter is redriven (or discarded) once only.
    """

    schema_version: int = 1
    dead_letter: str = Field(description="<dlq topic>:<partition>:<offset>")
    original_topic: str
    original_partition: int | None = None
    original_offset: int | None = None
    key: str
    new_id: str = Field(description="ce_id of the re-published message")
    reason: str | None = Field(default=None, description="why it was dead-lettered")
    by: str


class DeadLetterDiscarded(BaseModel):
    """An operator decided a dead letter is not to be processed, and said why."""

    schema_version: int = 1
    dead_letter: str
    original_topic: str | None = None
    reason: str = Field(min_length=1)
    by: str



class OutboxRowRetried(BaseModel):
    """An operator unparked an outbox row the relay had parked, after fixing its cause (stream `outbox-row-<id>`).

    A row may be parked again (its cause was not fixed) and retried again: one event per retry.
    """

    schema_version: int = 1
    row: int = Field(description="the outbox row's id")
    event_id: str = Field(description="the event (and ce_id) the row carries")
    topic: str
    key: str = Field(description="the aggregate: its stream's later rows waited behind this one")
    parked_at: datetime
    parked_reason: str | None = Field(default=None, description="why the relay had parked it")
    by: str


class OutboxRowSkipped(BaseModel):
    """An operator gave up on a parked outbox row, and said why: the event stays in the event store, it is never
    published, and its stream's later rows go on (stream `outbox-row-<id>`, its last event)."""

    schema_version: int = 1
    row: int
    event_id: str
    topic: str
    key: str
    parked_at: datetime
    parked_reason: str | None = None
    reason: str = Field(min_length=1)
    by: str

# ---- topics -------------------------------------------------------------------------------------

TOPICS = [
    Topic("audit.checkpoint", Checkpoint, "checkpoint",
          "A signed checkpoint: the Merkle root of every stream's head and the global position it covers.",
          ("audit",), (EXTERNAL,)),
]
