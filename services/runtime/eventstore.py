"""The event store: append-only, hash-chained streams in PostgreSQL, with a tail-safe global order.

Streams (``instance-1947``, ``onboarding-42``) are sequences of events numbered 1, 2, 3... The
primary key (stream_id, version) is the optimistic-concurrency check: two writers that both saw
version 7 both try to insert version 8; PostgreSQL lets one commit and gives the other a unique
violation, which becomes ``ConcurrencyError``. No table lock: writers of different streams never
wait for each other.

Global order, and why not just the bigserial ``position``: positions are taken when a row is
inserted, but transactions commit in any order, so a reader that saw position 12 may later find
11 appear (it was in a slower transaction) and skip it forever. Each event therefore also stores
the id of the transaction that wrote it (``xid8``, ``pg_current_xact_id()``). A reader only
returns events whose transaction id is below ``pg_snapshot_xmin(pg_current_snapshot())`` - every
transaction with a smaller id has finished, so nothing can still appear before that horizon - and
orders them by (transaction_id, position). The checkpoint is that pair. This costs no lock on the
write path (the alternative, serialising appends with a table lock as pyeventsourcing does, caps
throughput at one writer); the price is that a long-running transaction holds the horizon back, so
tailing readers wait (never skip) until it ends. Transaction ids are cluster-wide: a long
transaction in ANY database of the server delays tailing, one more reason to give the event store
its own server in production.

Hash chain: every event stores ``prev_hash`` (the previous event's hash in its stream, 32 zero
bytes for version 1) and ``hash = sha256(prev_hash || canonical JSON of its fields)``. Editing a
row in place breaks its hash; rewriting a hash breaks the next event's ``prev_hash``.
``verify_stream``/``verify_all`` report every broken link.

Outbox and projections ride the same transaction as the events: an append that publishes writes
its outbox rows (relayed to Kafka by ``services.runtime.outbox.OutboxRelay``) and NOTIFYs the relay
in the very statement that inserts the events; live projections are applied inline, so a reader
sees its own writes. Pass ``conn`` to run all of it inside the caller's transaction (effects +
events + outbox + consumer dedup commit together). An append that names the version it expects costs
ONE round trip: the statement reads that version's hash, chains the new events from it in PostgreSQL
(sha256 of prev_hash || the canonical body built here, the same bytes ``verify_chain`` recomputes) and
inserts events and outbox rows; ``expected_version=None`` reads the head first (two round trips). Add
a savepoint when it runs inside a transaction or has projections to apply.

Pools must come from ``services.runtime.db.create_pool`` (JSON codecs for the jsonb columns).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg

from services.runtime.db import canonical_json, canonical_text, dumps_json

if TYPE_CHECKING:
    from services.runtime.projections import Projection

__all__ = ["GENESIS_HASH", "ChainBreak", "ConcurrencyError", "EventStore", "EventTooLarge", "Guard", "GuardFailed",
           "NewEvent", "RowOffers", "StoredEvent", "canonical_json", "event_hash", "verify_chain"]

# The channel an append NOTIFYs and the outbox relay LISTENs on (services.runtime.outbox takes it from here). The
# outbox and tracing modules are imported where an append or a delivery uses them, not here: they bring aiokafka,
# structlog and OpenTelemetry (~0.3 s), which a process that only reads streams (`flows show`, `flows users list`)
# never uses.
NOTIFY_CHANNEL = "flows_outbox"

# Event types are Kafka topic names too (`<area>.<event>`, e.g. flows.TYPE_OF[flows.LoadChecked]).
EVENT_TYPE = re.compile(r"^[a-z0-9]+(?:[.-][a-z0-9]+)*$")


@dataclass(frozen=True)
class NewEvent:
    type: str  # the topic name, e.g. flows.TYPE_OF[flows.LoadChecked]
    data: dict[str, Any]  # JSON-serialisable payload (pydantic model_dump(mode="json"))
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    actor: str = "system"  # who caused it (operator user id, "ts-gateway", ...)
    metadata: dict[str, Any] = field(default_factory=dict)  # correlation/causation ids


@dataclass(frozen=True)
class StoredEvent:
    stream_id: str
    version: int
    position: int
    transaction_id: int
    id: uuid.UUID
    type: str
    data: dict[str, Any]
    actor: str
    metadata: dict[str, Any]
    recorded_at: datetime
    prev_hash: bytes
    hash: bytes

    @property
    def global_position(self) -> tuple[int, int]:
        """The checkpoint to pass back to ``read_all(after=...)``."""
        return (self.transaction_id, self.position)


# --- hash chain (pure functions: no I/O) -------------------------------------------------------

GENESIS_HASH = bytes(32)  # what version 1 chains from


@dataclass(frozen=True)
class ChainBreak:
    """One broken link: ``link`` is "hash" (the row was edited), "prev_hash" (a hash was rewritten
    or an event removed) or "version" (a gap); expected/found are hex digests or version numbers."""

    stream_id: str
    version: int
    link: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"{self.stream_id} v{self.version}: {self.link} expected {self.expected}, found {self.found}"


def _body(*, stream_id: str, version: int, event_id: uuid.UUID, type: str, data_json: str, actor: str,
          recorded_at: datetime, metadata_json: str) -> bytes:
    # Byte for byte canonical_json() of the whole record (its keys in sorted order), assembled from
    # the already canonical data and metadata so that an append serialises each payload once.
    return (f'{{"actor":{dumps_json(actor)},"data":{data_json},"event_id":"{event_id}",'
            f'"metadata":{metadata_json},"recorded_at":"{recorded_at.astimezone(UTC).isoformat()}",'
            f'"stream_id":{dumps_json(stream_id)},"type":{dumps_json(type)},"version":{int(version)}}}').encode()


def _chained(prev_hash: bytes, *, stream_id: str, version: int, event_id: uuid.UUID, type: str,
             data_json: str, actor: str, recorded_at: datetime, metadata_json: str) -> bytes:
    return hashlib.sha256(prev_hash + _body(stream_id=stream_id, version=version, event_id=event_id, type=type,
                                            data_json=data_json, actor=actor, recorded_at=recorded_at,
                                            metadata_json=metadata_json)).digest()


def event_hash(prev_hash: bytes, *, stream_id: str, version: int, event_id: uuid.UUID, type: str,
               data: dict[str, Any], actor: str, recorded_at: datetime, metadata: dict[str, Any]) -> bytes:
    """sha256(prev_hash || canonical JSON of the event's fields)."""
    where = f"event {version} ({type}) of stream {stream_id}"
    return _chained(prev_hash, stream_id=stream_id, version=version, event_id=event_id, type=type,
                    data_json=canonical_text(data, f"{where}: data"), actor=actor, recorded_at=recorded_at,
                    metadata_json=canonical_text(metadata, f"{where}: metadata"))


def verify_chain(events: Iterable[StoredEvent], previous: StoredEvent | None = None) -> Iterator[ChainBreak]:
    """Every broken link in ``events`` (ordered by stream, version; several streams allowed).

    ``previous``: the event just before the first one, when checking page by page.
    """
    for event in events:
        same_stream = previous is not None and previous.stream_id == event.stream_id
        want_version = previous.version + 1 if same_stream and previous else 1
        want_prev = previous.hash if same_stream and previous else GENESIS_HASH
        if event.version != want_version:
            yield ChainBreak(event.stream_id, event.version, "version", str(want_version), str(event.version))
        if event.prev_hash != want_prev:
            yield ChainBreak(event.stream_id, event.version, "prev_hash", want_prev.hex(),
                             event.prev_hash.hex())
        recomputed = event_hash(event.prev_hash, stream_id=event.stream_id, version=event.version,
                                event_id=event.id, type=event.type, data=event.data, actor=event.actor,
                                recorded_at=event.recorded_at, metadata=event.metadata)
        if recomputed != event.hash:
            yield ChainBreak(event.stream_id, event.version, "hash", recomputed.hex(), event.hash.hex())
        previous = event


# --- the store -------------------------------------------------------------------------------


class ConcurrencyError(Exception):
    """Another writer appended to the stream since the caller read it."""

    def __init__(self, stream_id: str, expected: int | None, actual: int | None) -> None:
        self.stream_id, self.expected, self.actual = stream_id, expected, actual
        found = f"it is at version {actual}" if actual is not None else \
            "a concurrent writer took the next version"
        want = "the current version" if expected is None else f"version {expected}"
        super().__init__(f"stream {stream_id}: expected {want}, but {found}")


_COLUMNS = ("stream_id, version, position, transaction_id, event_id, type, data, actor, metadata, "
            "recorded_at, prev_hash, hash")

_HEAD = "SELECT version, hash FROM events WHERE stream_id = $1 ORDER BY version DESC LIMIT 1"

# An outbox row's headers: its ce_id and ce_type, then what the append's events share ($12, outbox.headers_tail), the
# text of outbox.headers_json_for_append: a UUID and an event type (EVENT_TYPE) need no JSON escaping.
_HEADERS = """'[["ce_id", "' || {id} || '"], ["ce_type", "' || {type} || '"], ' || $12::text"""

_INSERT = """
INSERT INTO events (stream_id, version, event_id, type, data, actor, metadata, recorded_at, prev_hash, hash)
SELECT $1, u.version, u.event_id, u.type, u.data::jsonb, u.actor, u.metadata::jsonb, $2, u.prev_hash, u.hash
FROM unnest($3::int[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::bytea[], $10::bytea[])
     WITH ORDINALITY AS u(version, event_id, type, data, actor, metadata, prev_hash, hash, n)
ORDER BY u.n
RETURNING version, position, transaction_id
"""

# Events, their outbox rows and the relay's wake-up in ONE statement: one round trip, and atomic
# even without an explicit transaction. Outbox topic = event type, payload = event data (its canonical JSON
# text, the bytes the relay sends).
_INSERT_AND_QUEUE = f"""
WITH appended AS ({_INSERT}),
queued AS (
    INSERT INTO outbox (event_id, topic, key, headers, payload)
    SELECT q.event_id, q.topic, $11, {_HEADERS.format(id="q.event_id", type="q.topic")}, q.payload
    FROM unnest($4::uuid[], $5::text[], $6::text[]) WITH ORDINALITY AS q(event_id, topic, payload, n)
    ORDER BY q.n
    RETURNING 1
)
SELECT a.version, a.position, a.transaction_id
FROM appended a CROSS JOIN (SELECT pg_notify('{NOTIFY_CHANNEL}', '')) AS wake
"""

# The hash of the expected version ($10), or the genesis hash for a new stream; no row when the stream never got there.
_PREV = f"""prev AS (
    SELECT hash FROM events WHERE stream_id = $1 AND version = $10 AND $10 > 0
    UNION ALL SELECT '\\x{GENESIS_HASH.hex()}'::bytea WHERE $10 = 0
)"""
_RETURNED = "SELECT version, position, transaction_id, prev_hash, hash FROM appended"
# An append that publishes wakes the outbox relay (LISTEN {NOTIFY_CHANNEL}) in the statement itself.
_RETURNED_AND_WAKE = f"""SELECT a.version, a.position, a.transaction_id, a.prev_hash, a.hash FROM appended a
CROSS JOIN (SELECT pg_notify('{NOTIFY_CHANNEL}', '')) AS wake
"""

# The append of a caller who names the version it read (expected_version): ONE statement takes the hash
# of that version from the table, chains the new events from it in PostgreSQL (sha256(prev || body), the
# bodies built here) and inserts them. A stream that moved past the expected version fails on the primary
# key; one that never reached it has no such row, so nothing is inserted and no row comes back.
_CHAIN = f"""
WITH RECURSIVE {_PREV},
chain AS (
    SELECT 1 AS n, p.hash AS prev_hash, sha256(p.hash || ($9::bytea[])[1]) AS hash FROM prev p
    UNION ALL
    SELECT c.n + 1, c.hash, sha256(c.hash || ($9::bytea[])[c.n + 1]) FROM chain c WHERE c.n < cardinality($9::bytea[])
),
appended AS (
    INSERT INTO events (stream_id, version, event_id, type, data, actor, metadata, recorded_at, prev_hash, hash)
    SELECT $1, u.version, u.event_id, u.type, u.data::jsonb, u.actor, u.metadata::jsonb, $2, c.prev_hash, c.hash
    FROM unnest($3::int[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[])
         WITH ORDINALITY AS u(version, event_id, type, data, actor, metadata, n)
    JOIN chain c ON c.n = u.n
    ORDER BY u.n
    RETURNING version, position, transaction_id, prev_hash, hash, event_id
)"""

_CHAIN_ONLY = f"{_CHAIN}\n{_RETURNED}"


def _queued_and_woken(rows: str) -> str:
    """The outbox rows of the appended events (`rows`: their SELECT list and FROM), what the append returns, and the
    relay's wake-up."""
    return f"""queued AS (
    INSERT INTO outbox (event_id, topic, key, headers, payload)
    {rows}
    RETURNING 1
)
{_RETURNED_AND_WAKE}"""


# A one-event append's wake-up names its outbox row: "<row id> <event id>". The relay of the process that appended
# sends the row as the append offered it before its statement, without reading it back, once this NOTIFY says it is
# committed (EventStore.offers, services.runtime.outbox.OutboxRelay.offer: its order and trust rules).
_NAMED_WAKE = f"(SELECT pg_notify('{NOTIFY_CHANNEL}', q.id::text || ' ' || q.event_id::text) FROM queued q) AS wake"


def _queued_one(rows: str) -> str:
    """The outbox row of one event (`rows`: its SELECT), returning what its wake-up names (_NAMED_WAKE)."""
    return f"""queued AS (
    INSERT INTO outbox (event_id, topic, key, headers, payload)
    {rows}
    RETURNING id, event_id
)"""


def _queued_and_named(rows: str) -> str:
    """_queued_and_woken for one event: the wake-up names the outbox row (its id and its event's)."""
    return f"""{_queued_one(rows)}
SELECT a.version, a.position, a.transaction_id, a.prev_hash, a.hash FROM appended a
CROSS JOIN {_NAMED_WAKE}"""


_CHAIN_AND_QUEUE = f"""{_CHAIN},
{_queued_and_woken(f'''SELECT q.event_id, q.topic, $11, {_HEADERS.format(id="q.event_id", type="q.topic")}, q.payload
    FROM unnest($4::uuid[], $5::text[], $6::text[]) WITH ORDINALITY AS q(event_id, topic, payload, n)
    JOIN appended a ON a.event_id = q.event_id
    ORDER BY q.n''')}"""


def _one(guard: str = "") -> str:
    """_ONE, or with `guard` (a SELECT: Guard.sql, its parameters numbered) as a CTE the event is inserted only
    when it has a row."""
    guard_cte, only_if = (f"\nguard AS ({guard}),", " WHERE EXISTS (SELECT FROM guard)") if guard else ("", "")
    return f"""
WITH {_PREV},{guard_cte}
appended AS (
    INSERT INTO events (stream_id, version, event_id, type, data, actor, metadata, recorded_at, prev_hash, hash)
    SELECT $1, $3::int, $4::uuid, $5::text, $6::text::jsonb, $7::text, $8::text::jsonb, $2, p.hash,
           sha256(p.hash || $9::bytea)
    FROM prev p{only_if}
    RETURNING version, position, transaction_id, prev_hash, hash, event_id
)"""


# The same for ONE event (most appends: a load's Checked, a file's Formatted, an access): scalar parameters at the
# same positions, no unnest, recursion or join; its generic plan runs in about half the time of the one above.
_ONE = _one()

_ONE_ONLY = f"{_ONE}\n{_RETURNED}"

_ONE_QUEUED = f"""SELECT a.event_id, $5::text, $11, {_HEADERS.format(id="a.event_id", type="$5::text")}, $6::text
    FROM appended a"""
_ONE_AND_QUEUE = f"""{_ONE},
{_queued_and_named(_ONE_QUEUED)}"""


# _ONE's parameters, without and with its outbox row's ($11 key, $12 headers): a fused change's are numbered after.
_ONE_PARAMETERS = {False: 10, True: 12}
_ONE_WITH: dict[tuple[bool, str], str] = {}


def _one_with(publish: bool, ctes: str) -> str:
    """_ONE_AND_QUEUE (or _ONE_ONLY) with `ctes` (a projection's change: services.runtime.read_models) among its
    CTEs; the same text for the same change (asyncpg keeps its prepared statement)."""
    sql = _ONE_WITH.get((publish, ctes))
    if sql is None:
        sql = _ONE_WITH[(publish, ctes)] = (f"{_ONE},\n{ctes},\n{_queued_and_named(_ONE_QUEUED)}" if publish
                                            else f"{_ONE},\n{ctes}\n{_RETURNED}")
    return sql


@dataclass(frozen=True)
class Guard:
    """A row an append needs, locked by the append's own statement (`EventStore.append(..., guard=)`): `sql` is a
    SELECT, with its locking clause (FOR SHARE), whose parameters are written {0}, {1}, ... for `args`. The event is
    inserted only when the SELECT has a row; else nothing is written and the append raises GuardFailed. One event
    after a named version only (_ONE). What it buys: an outcome that must find its row still there is ONE statement,
    atomic without BEGIN and COMMIT, where a transaction that locks the row first takes three round trips."""

    sql: str
    args: tuple[Any, ...] = ()


class GuardFailed(Exception):
    """The guard of an append found no row: nothing was written."""


# _one(guard) with a projection's change and the outbox row, and a first column `held`: whether the guard had a row.
# Its one row comes back either way; the event's columns are NULL when nothing was inserted.
_GUARDED: dict[tuple[bool, str, str], str] = {}


def _one_guarded(publish: bool, ctes: str, guard: str) -> str:
    sql = _GUARDED.get((publish, ctes, guard))
    if sql is None:
        parts = [_one(guard)] + ([ctes] if ctes else [])
        if publish:
            parts.append(_queued_one(_ONE_QUEUED))
        wake = f"\nLEFT JOIN {_NAMED_WAKE} ON true" if publish else ""
        sql = _GUARDED[(publish, ctes, guard)] = (
            ",\n".join(parts) + "\nSELECT h.held, a.version, a.position, a.transaction_id, a.prev_hash, a.hash"
            "\nFROM (SELECT EXISTS (SELECT FROM guard) AS held) AS h LEFT JOIN appended a ON true" + wake)
    return sql


class FusedProjection(Protocol):
    """A projection that can put its change to an event into the append's own statement (one event, ``_ONE``).

    ``fused(stream_id, type, data, recorded_at, first)``: CTEs (``name AS (...)``, comma-separated) whose parameters
    are numbered from ``first``, with their values; each writes only when the append inserted its event (they
    name ``appended``, the CTE of the inserted event), so a stream that was not at the expected version changes
    nothing. ("", []): nothing to change; None: this event is applied by ``apply`` after the statement. The rows
    must be those ``apply`` leaves (``apply`` still rebuilds the read model)."""

    def fused(self, stream_id: str, kind: str, data: dict[str, Any], recorded_at: datetime,
              first: int) -> tuple[str, list[Any]] | None: ...


class RowOffers(Protocol):
    """Where a one-event append offers its outbox row before its statement (services.runtime.outbox.OutboxRelay.offer):
    the event's id, the server process id of the connection that writes it, and the row as the relay reads it but its
    id (event_id, topic, key, headers, payload)."""

    def offer(self, event_id: str, backend_pid: int, row: dict[str, Any]) -> None: ...


class _Stale(Exception):
    """The stream is not at the expected version (the caller's ConcurrencyError names where it is)."""


# Only events of transactions older than every running one: see the module docstring.
_READ_ALL = f"""
SELECT {_COLUMNS} FROM events
WHERE (transaction_id, position) > ($1::xid8, $2::bigint)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id, position
LIMIT $3
"""


def to_stored(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        stream_id=row["stream_id"], version=row["version"], position=row["position"],
        transaction_id=int(row["transaction_id"]), id=row["event_id"], type=row["type"], data=row["data"],
        actor=row["actor"], metadata=row["metadata"], recorded_at=row["recorded_at"],
        prev_hash=bytes(row["prev_hash"]), hash=bytes(row["hash"]))


class EventStore:
    def __init__(self, pool: asyncpg.Pool, *, source: str, projections: Sequence[Projection] = (),
                 replica: str | None = None) -> None:
        self._pool = pool
        self.source = source  # CloudEvents ce_source of what this store publishes, e.g. "/flows/loader"
        # Which process of a replicated service appends (Settings.replica, e.g. "loader-2"): recorded in
        # each event's metadata as `replica`, so the history says which replica did the work.
        self.replica = replica
        self._projections = tuple(projections)
        # This process's outbox relay (services.runtime.host.serve sets it): each one-event append offers it its
        # outbox row, which it sends without reading it back once the append's NOTIFY names the row (OutboxRelay.offer).
        self.offers: RowOffers | None = None

    async def append(self, stream_id: str, events: Sequence[NewEvent], *, expected_version: int | None,
                     key: str, conn: asyncpg.Connection | None = None,
                     publish: bool = True, savepoint: bool = True, guard: Guard | None = None) -> list[StoredEvent]:
        """Appends ``events`` after ``expected_version`` (0 = new stream, None = wherever it is).

        Raises ConcurrencyError when the stream moved. Inside a caller's transaction (``conn``) the
        append runs in a savepoint, so a ConcurrencyError leaves the caller's transaction usable;
        ``savepoint=False`` spares its two round trips for a caller that ends its transaction on any error
        of the append (the error then leaves the transaction aborted). ``guard``: see Guard (one event after a named
        version); GuardFailed when its row is not there.
        """
        _check_append(stream_id, events, expected_version, key)
        if guard is not None and (len(events) != 1 or expected_version is None):
            raise ValueError(f"stream {stream_id}: a guarded append is of one event after a named version")
        if conn is not None:
            return await self._append(conn, stream_id, events, expected_version, key, publish, savepoint, guard)
        async with self._pool.acquire() as own:
            return await self._append(own, stream_id, events, expected_version, key, publish, savepoint, guard)

    async def _append(self, conn: asyncpg.Connection, stream_id: str, events: Sequence[NewEvent],
                      expected_version: int | None, key: str, publish: bool, savepoint: bool,
                      guard: Guard | None = None) -> list[StoredEvent]:
        in_callers = conn.is_in_transaction()
        recorded_at = datetime.now(UTC)  # PostgreSQL keeps microseconds; so does the hash.
        fused = self._fused(stream_id, events, expected_version, publish, recorded_at)
        write = functools.partial(self._write, conn, stream_id, events, expected_version, key, publish, recorded_at,
                                  fused, guard)
        try:
            if (in_callers and savepoint) or (self._projections and fused is None and not in_callers):
                async with conn.transaction():  # a savepoint inside the caller's transaction, else its own
                    return await write()
            # Without projections, or with their changes in the append's statement (`_fused`), the write is one
            # statement, hence one transaction on its own; a stream that moved after the head read fails on the
            # primary key like any concurrent append.
            return await write()
        except _Stale:
            # Read after the savepoint rolled back, so the caller's transaction is still usable; without a
            # savepoint the caller's transaction is aborted: read outside it.
            reader = None if in_callers and not savepoint else conn
            raise ConcurrencyError(stream_id, expected_version, await self.stream_version(stream_id, reader)) from None

    def _fused(self, stream_id: str, events: Sequence[NewEvent], expected_version: int | None, publish: bool,
               recorded_at: datetime) -> tuple[str, list[Any]] | None:
        """The projections' change to this append as CTEs of its own statement, with their parameters, when every
        projection can put it there (FusedProjection): one event after a named version (_ONE), the single-event
        append of a command or an outcome. ("", []): none changes anything; None: they are applied after the
        statement, each by its own statements (in a transaction with it)."""
        if not self._projections or len(events) != 1 or expected_version is None:
            return None
        event, first = events[0], _ONE_PARAMETERS[publish] + 1
        ctes: list[str] = []
        args: list[Any] = []
        for projection in self._projections:
            fuse = getattr(projection, "fused", None)
            change = fuse(stream_id, event.type, event.data, recorded_at, first + len(args)) if fuse else None
            if change is None:
                return None
            if change[0]:
                ctes.append(change[0])
                args += change[1]
        return ",\n".join(ctes), args

    async def _write(self, conn: asyncpg.Connection, stream_id: str, events: Sequence[NewEvent],
                     expected_version: int | None, key: str, publish: bool, recorded_at: datetime,
                     fused: tuple[str, list[Any]] | None, guard: Guard | None = None) -> list[StoredEvent]:
        if expected_version is not None:  # one round trip: the chain is made in the insert (_CHAIN)
            current, prev = expected_version, GENESIS_HASH
        else:
            head = await conn.fetchrow(_HEAD, stream_id)
            current, prev = (head["version"], bytes(head["hash"])) if head else (0, GENESIS_HASH)
        # The current span's W3C context (services.runtime.tracing) goes with each event: in its
        # metadata (an event's own traceparent wins) and in its outbox headers as ce_traceparent.
        from services.runtime import outbox, tracing

        trace = tracing.carrier()
        stamp = {**trace, "replica": self.replica} if self.replica else trace
        if stamp:
            events = [e if all(k in e.metadata for k in stamp)
                      else dataclasses.replace(e, metadata={**stamp, **e.metadata}) for e in events]
        versions, prev_hashes, hashes, datas, metadatas = [], [], [], [], []
        # _body's bytes, with what one append shares serialised once (a hot path: 100-event appends).
        at, sid = recorded_at.astimezone(UTC).isoformat(), dumps_json(stream_id)
        quoted: dict[str, str] = {}
        for number, event in enumerate(events, start=current + 1):
            where = f"event {number} ({event.type}) of stream {stream_id}"
            data_json = canonical_text(event.data, f"{where}: data")
            if publish:
                _check_size(event, data_json, stream_id, key)
            metadata_json = "{}" if event.metadata == {} else canonical_text(event.metadata, f"{where}: metadata")
            actor, kind = (quoted.get(event.actor) or quoted.setdefault(event.actor, dumps_json(event.actor)),
                           quoted.get(event.type) or quoted.setdefault(event.type, dumps_json(event.type)))
            body = (f'{{"actor":{actor},"data":{data_json},"event_id":"{event.id}","metadata":{metadata_json},'
                    f'"recorded_at":"{at}","stream_id":{sid},"type":{kind},"version":{number}}}').encode()
            versions.append(number)
            if expected_version is None:
                digest = hashlib.sha256(prev + body).digest()
                prev_hashes.append(prev)
                hashes.append(digest)
                prev = digest
            else:
                hashes.append(body)  # hashed in PostgreSQL (_CHAIN)
            datas.append(data_json)
            metadatas.append(metadata_json)
        args: list[Any] = [stream_id, recorded_at, versions, [e.id for e in events], [e.type for e in events],
                           datas, [e.actor for e in events], metadatas]
        if expected_version is None:
            args += [prev_hashes, hashes]
            sql = _INSERT_AND_QUEUE if publish else _INSERT
        else:
            args += [hashes, expected_version]
            sql = _CHAIN_AND_QUEUE if publish else _CHAIN_ONLY
        if publish:
            tail = outbox.headers_tail(time=recorded_at, key=key, source=self.source, trace=trace)
            args += [key, tail]
        if len(events) == 1 and expected_version is not None:  # _ONE: each array's one element
            args = [arg[0] if isinstance(arg, list) else arg for arg in args]
            sql = _ONE_AND_QUEUE if publish else _ONE_ONLY
            if fused is not None and fused[0]:  # the read models' changes: no round trip of their own
                if len(args) != _ONE_PARAMETERS[publish]:
                    raise AssertionError(f"_ONE takes {_ONE_PARAMETERS[publish]} parameters, not {len(args)}")
                sql = _one_with(publish, fused[0])
                args += fused[1]
            if guard is not None:
                positions = [f"${n}" for n in range(len(args) + 1, len(args) + 1 + len(guard.args))]
                sql = _one_guarded(publish, fused[0] if fused is not None else "", guard.sql.format(*positions))
                args += guard.args
            if publish and self.offers is not None:
                # the row as _ONE_QUEUED writes it (_HEADERS: ce_id, ce_type, then the tail), offered before the
                # statement: its NOTIFY may reach the relay before this coroutine sees the statement's answer
                event = events[0]
                self.offers.offer(str(event.id), conn.get_server_pid(), {
                    "event_id": event.id, "topic": event.type, "key": key, "payload": datas[0],
                    "headers": outbox.headers_text(event.id, event.type, tail)})
        try:
            rows = await conn.fetch(sql, *args)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "events_pkey":
                if expected_version is not None:
                    raise _Stale from exc  # moved on: ConcurrencyError with the version it is at
                raise ConcurrencyError(stream_id, expected_version, None) from exc
            raise ValueError(f"stream {stream_id}: an event id of this append is already stored "
                             f"({exc.detail})") from exc
        if guard is not None:
            if not rows or not rows[0]["held"]:
                raise GuardFailed(f"stream {stream_id}: the row of {guard.sql!r} {guard.args!r} is not there")
            rows = [row for row in rows if row["version"] is not None]
        if not rows:
            raise _Stale  # the stream never reached the expected version
        by_version = {row["version"]: row for row in rows}
        if expected_version is not None:
            prev_hashes = [bytes(by_version[v]["prev_hash"]) for v in versions]
            hashes = [bytes(by_version[v]["hash"]) for v in versions]
        stored = [StoredEvent(stream_id=stream_id, version=v, position=by_version[v]["position"],
                              transaction_id=int(by_version[v]["transaction_id"]), id=e.id, type=e.type,
                              data=e.data, actor=e.actor, metadata=e.metadata, recorded_at=recorded_at,
                              prev_hash=p, hash=h)
                  for v, e, p, h in zip(versions, events, prev_hashes, hashes, strict=True)]
        if fused is None:
            for projection in self._projections:
                for stored_event in stored:
                    await projection.apply(conn, stored_event)
        return stored

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[StoredEvent]:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 AND version >= $2 ORDER BY version",
            stream_id, from_version)
        return [to_stored(row) for row in rows]

    async def stream_version(self, stream_id: str, conn: asyncpg.Connection | None = None) -> int:
        sql = "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1"
        value = await (conn or self._pool).fetchval(sql, stream_id)
        return int(value)

    async def read_all(self, after: tuple[int, int] = (0, 0), limit: int = 1000) -> list[StoredEvent]:
        """Committed events after the checkpoint ``after`` = (transaction_id, position), in global order.

        Safe to tail: an event is returned only once every transaction that could precede it has
        ended, so a later call never finds an event before the last checkpoint.
        """
        rows = await self._pool.fetch(_READ_ALL, after[0], after[1], limit)
        return [to_stored(row) for row in rows]

    async def list_streams(self, prefix: str = "") -> list[str]:
        rows = await self._pool.fetch(
            "SELECT DISTINCT stream_id FROM events WHERE starts_with(stream_id, $1) ORDER BY stream_id",
            prefix)
        return [row["stream_id"] for row in rows]

    async def verify_stream(self, stream_id: str) -> list[ChainBreak]:
        return list(verify_chain(await self.read_stream(stream_id)))

    async def verify_all(self, batch: int = 5000) -> list[ChainBreak]:
        """Recomputes every stream's chain, page by page (stream, version order) in one snapshot."""
        breaks: list[ChainBreak] = []
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            last: tuple[str, int] = ("", 0)
            carry: StoredEvent | None = None  # last event of the previous page: the next one chains from it
            while True:
                rows = await conn.fetch(
                    f"SELECT {_COLUMNS} FROM events WHERE (stream_id, version) > ($1, $2) "
                    "ORDER BY stream_id, version LIMIT $3", last[0], last[1], batch)
                if not rows:
                    return breaks
                page = [to_stored(row) for row in rows]
                breaks.extend(verify_chain(page, previous=carry))
                carry = page[-1]
                last = (carry.stream_id, carry.version)

    @asynccontextmanager
    async def first_delivery(self, conn: asyncpg.Connection, *, consumer: str,
                      message_id: str) -> AsyncIterator[bool]:
        """``async with store.first_delivery(conn, consumer="loader", message_id=ce_id) as fresh:``.

        ``fresh`` is False when this consumer already processed the message: skip the effects.
        Must run inside the caller's transaction, the one that holds the effects.
        """
        from services.runtime import outbox

        yield await outbox.mark_processed(conn, consumer, message_id)


class EventTooLarge(ValueError):
    """An event whose Kafka message would be over its topic's max.message.bytes: refused at append,
    before it could reach the outbox and stop the relay."""


# ce_* headers and record framing of one outbox message, generously (they are ~300 bytes).
_HEADERS_ALLOWANCE = 1024
_LIMITS: dict[str, int] | None = None


def message_limit(event_type: str) -> int:
    """max.message.bytes of the topic that carries `event_type` (the registry's, default 1 MiB)."""
    global _LIMITS
    if _LIMITS is None:
        from contracts.topics import all_topics

        _LIMITS = {topic.name: topic.max_message_bytes for topic in all_topics()}
    from contracts.topics import MAX_MESSAGE_BYTES

    return _LIMITS.get(event_type, MAX_MESSAGE_BYTES)


def _check_size(event: NewEvent, data_json: str, stream_id: str, key: str) -> None:
    limit = message_limit(event.type)
    budget = limit - _HEADERS_ALLOWANCE - len(key.encode())
    if len(data_json) * 4 <= budget:  # a UTF-8 character is at most 4 bytes: no need to encode
        return
    size = len(data_json.encode())
    if size > budget:
        raise EventTooLarge(f"event {event.type} of aggregate {key} (stream {stream_id}) is {size} bytes: over the "
                            f"{budget} bytes a message of {event.type} may carry (limit {limit} bytes with key "
                            "and headers); nothing was appended")


def _check_append(stream_id: str, events: Sequence[NewEvent], expected_version: int | None, key: str) -> None:
    if not stream_id:
        raise ValueError("append: stream_id is empty")
    if not key:
        raise ValueError(f"append to {stream_id}: key (the aggregate id) is empty")
    if not events:
        raise ValueError(f"append to {stream_id}: no events given")
    if expected_version is not None and expected_version < 0:
        raise ValueError(f"append to {stream_id}: expected_version {expected_version} is negative")
    for index, event in enumerate(events, start=1):
        if not EVENT_TYPE.match(event.type):
            raise ValueError(f"append to {stream_id}, event {index} ({event.id}): type {event.type!r} "
                             "is not a topic-style name like '<area>.<event>'")
        if not isinstance(event.data, dict):
            raise ValueError(f"append to {stream_id}, event {index} ({event.type}): data must be a dict, "
                             f"not {type(event.data).__name__}")
