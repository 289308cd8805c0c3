"""PostgreSQL connection pools for every service, and JSON as PostgreSQL keeps it.

The event store, the outbox and the projections pass Python dicts for ``json``/``jsonb`` columns and
read dicts back, so every connection gets the same JSON codec. Always build pools here.

``canonical_text`` is the one serialisation whose bytes survive a jsonb round trip (sorted keys, no
spaces, whole floats as ints): what the event store hashes.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeGuard

import asyncpg
import orjson


def dumps_json(value: Any) -> str:
    # allow_nan=False: PostgreSQL rejects NaN/Infinity in JSON; fail here with Python's clearer message.
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


class _NotJson(Exception):
    pass


def _jsonable(value: Any) -> Any:
    """The value with whole-number floats as ints, because jsonb gives 1e20 back as the integer
    100000000000000000000 and 1.0 may come back as 1: the hash must survive the round trip."""
    if value is None or isinstance(value, str | int):  # bool is an int
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJson
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _NotJson
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    raise _NotJson


def _what_is_not_json(value: Any, where: str) -> str | None:
    """The first place in ``value`` that JSON cannot hold (slow path, only to word the error)."""
    if value is None or isinstance(value, str | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value}: JSON has no NaN or Infinity"
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{where} has a non-string key {k!r}"
            if problem := _what_is_not_json(v, f"{where}.{k}" if where else k):
                return problem
        return None
    if isinstance(value, list | tuple):
        return next((p for i, v in enumerate(value) if (p := _what_is_not_json(v, f"{where}[{i}]"))), None)
    return f"{where} is a {type(value).__name__}, which is not JSON (dump pydantic models with mode='json')"


def canonical_text(value: Any, where: str = "value") -> str:
    """Sorted keys, no spaces: the same text for the same JSON, whoever serialises it."""
    try:
        return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except _NotJson:
        raise ValueError(_what_is_not_json(value, where)) from None


def canonical_json(value: Any, where: str = "value") -> bytes:
    return canonical_text(value, where).encode()


# Every digit -> "9", everything else -> " ": 19 nines in a row = a number that may not fit in 64 bits.
_DIGITS = bytes(0x39 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_NUMBER = b"9" * 19


def loads_json(text: str) -> Any:
    """jsonb text -> Python, with orjson (a replay decodes every event's payload: faster than json).
    orjson reads integers beyond 64 bits as floats, while JSON and jsonb keep them exact (and the hash
    chain needs them exact): text with 19 digits in a row (such a number, or a long digit run in a string)
    takes json's path. The check is a byte translation and a substring search (a regex cost more than
    json itself)."""
    if _LONG_NUMBER in text.encode().translate(_DIGITS):
        return json.loads(text)
    return orjson.loads(text)


async def set_json_codecs(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=dumps_json, decoder=loads_json, schema="pg_catalog")


# Statements that may leave session state behind them (what asyncpg's reset query undoes): session
# advisory locks, LISTEN, SET / RESET outside SET LOCAL, set_config, SQL cursors and prepared statements.
# Matching too much only costs the reset round trip; matching too little would leak state, so the test is
# wide: any of these words anywhere in the lower-cased text, or a SET / RESET (but SET LOCAL) opening a line
# or following a semicolon. The one exception is a set_config whose third argument is the literal `true`
# (is_local: the setting ends with its transaction, like SET LOCAL) and whose name and value are each a
# plain quoted literal or a parameter: the loader's marking of a checked snapshot, once per load, sets
# synchronous_commit that way.
_SESSION_WORDS = ("advisory", "listen", "set_config", "declare", "prepare", "discard", "session")
_SESSION_SET = re.compile(r"(?:^|;)[ \t\r\n]*(?:set|reset)[ \t\r\n]+(?!local\b)", re.MULTILINE)
_LOCAL_SET_CONFIG = re.compile(r"\bset_config\s*\(\s*(?:'[^']*'|\$\d+)\s*,\s*(?:'[^']*'|\$\d+)\s*,\s*true\s*\)")
_verdicts: dict[str, bool] = {}  # per query text: the services send the same few hundred texts again and again


def may_leave_session_state(query: str) -> bool:
    verdict = _verdicts.get(query)
    if verdict is None:
        low = _LOCAL_SET_CONFIG.sub("", query.lower())
        verdict = any(word in low for word in _SESSION_WORDS) or ("set" in low and bool(_SESSION_SET.search(low)))
        if len(_verdicts) < 10_000:  # texts with literals inlined must not grow it without bound
            _verdicts[query] = verdict
    return verdict


class TrackedConnection(asyncpg.Connection):  # type: ignore[misc]
    """A connection that notes whether any statement sent through it may have left session state.

    Every statement text asyncpg sends goes through ``_get_statement`` (queries with arguments, fetch*,
    executemany, cursors, prepare) or ``execute`` without arguments (the simple-query protocol); both are
    checked here, before the statement is sent."""

    _flows_session_state = False

    def _note(self, query: str) -> None:
        if not self._flows_session_state and may_leave_session_state(query):
            self._flows_session_state = True

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        self._note(query)
        return await super().execute(query, *args, timeout=timeout)  # type: ignore[no-any-return]

    async def _get_statement(self, query: str, *args: Any, **kw: Any) -> Any:
        self._note(query)
        return await super()._get_statement(query, *args, **kw)

    async def copy_from_query(self, query: str, *args: Any, **kw: Any) -> str:  # COPY (query): its own path
        self._note(query)
        return await super().copy_from_query(query, *args, **kw)  # type: ignore[no-any-return]


def is_tracked(conn: object) -> TypeGuard[TrackedConnection]:
    """Whether `conn` itself is a TrackedConnection. Not isinstance(): asyncpg's Connection metaclass answers it True
    for ANY connection or pool proxy, whatever subclass of Connection is asked (ConnectionMeta.__instancecheck__)."""
    return TrackedConnection in type(conn).__mro__


def _tracked(conn: asyncpg.Connection) -> TrackedConnection | None:
    raw = getattr(conn, "_con", conn)  # a pool's connection is a proxy of the connection
    return raw if is_tracked(raw) else None


def connection_gone(conn: asyncpg.Connection) -> bool:
    """Whether `conn` is closed, or, taken from a pool, was handed back by asyncpg itself: when a pooled connection
    is lost (PostgreSQL crashed or stopped, the session terminated), asyncpg releases it at once and detaches the
    caller's proxy, on which every method, `is_closed()` and `terminate()` included, then raises InterfaceError
    ("connection has been released back to the pool"). Either way nothing is left to unlock or clean up on it:
    its session ended with the connection, and the pool makes a new one."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


def has_session_state(conn: asyncpg.Connection) -> bool:
    """Whether releasing `conn` would reset its session (a plain connection: always)."""
    tracked = _tracked(conn)
    return tracked is None or tracked._flows_session_state


def session_state_undone(conn: asyncpg.Connection) -> None:
    """The caller has undone the only session state `conn` got since it was clean (a session advisory lock it took
    and released itself): its release needs no reset."""
    if (tracked := _tracked(conn)) is not None:
        tracked._flows_session_state = False


async def reset_if_needed(conn: asyncpg.Connection) -> None:
    """The pool's reset on release. asyncpg has already rolled back an open transaction and dropped the
    listeners (``Connection._reset``); the reset query (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL``: one round trip, on every release by default) runs only when a statement since the last
    reset may have left session state, so a session advisory lock never passes to the next user."""
    if has_session_state(conn):  # a plain connection: always
        if query := conn.get_reset_query():
            await conn.execute(query)
        session_state_undone(conn)


class Fused:
    """A transaction opened by `fused_transaction`: `status` is what its opening statements answered (the last one's
    status, e.g. "SELECT 1"); `at_commit` and `after_commit`, statements without parameters that travel with the
    COMMIT, before it (in the transaction) and after it (run once it committed; not when it failed)."""

    def __init__(self, status: str) -> None:
        self.status = status
        self.at_commit = ""
        self.after_commit = ""


@asynccontextmanager
async def fused_transaction(conn: asyncpg.Connection, opening: str) -> AsyncIterator[Fused]:
    """A transaction whose BEGIN travels with `opening` in one round trip, and whose COMMIT with `Fused.at_commit` and
    `Fused.after_commit`: asyncpg's `conn.transaction()` sends BEGIN and COMMIT each alone, a round trip each on a
    path of a few statements (a small load's). The texts go by the simple-query protocol, hence without parameters:
    only statements whose values the caller made itself (SET LOCAL, an integer key) or checked to be plain (a code of
    letters and digits: services.loader.snapshot._create_text) belong there, never a value from outside as it came.

    An error inside rolls the transaction back (a connection already gone has nothing to roll back; a pool's
    release would roll back too). A caller must not swallow a statement's error inside: PostgreSQL answers the COMMIT
    of an aborted transaction with a rollback, not an error, and `after_commit` would run. Not for a connection
    already in a transaction: BEGIN there would be a warning, and the COMMIT would end the caller's transaction."""
    if conn.is_in_transaction():
        raise RuntimeError("fused_transaction opens its own transaction: the connection is in one already")
    try:
        fused = Fused(await conn.execute(f"BEGIN; {opening}"))
        yield fused
        # a failing statement of at_commit skips the COMMIT after it: the transaction is then rolled back below
        await conn.execute("; ".join(part for part in (fused.at_commit, "COMMIT", fused.after_commit) if part))
    except BaseException:
        if not connection_gone(conn) and conn.is_in_transaction():
            try:
                await conn.execute("ROLLBACK")
            except Exception:  # the error that ended the transaction is the one to raise
                pass  # the connection broke on the way (asyncpg's error for it varies): its session is gone with it
        raise


# asyncpg prepares a statement once per connection and keeps it, unless its text is longer than 15 KB (its default):
# such a statement is parsed and planned again at every call. The loader's checks of a small load are one statement
# (services/loader/checks.py _small_sql), run by every small load: ~19 KB for MEF, ~47 KB for Flusso C with its name
# and CHARSET rules (the writable ranges are its parameters; written into it, they made it 263 KB). Kept, a small
# load's checks took ~3 ms less (bench/latency.py, Running -> Checked p50 10.1-11.5 -> 6.9-9.3 ms, three alternating
# pairs, at ~20 KB).
# The limit leaves room above the largest: a statement past it would be planned at every load again, silently.
MAX_CACHEABLE_STATEMENT = 1024 * 1024


async def create_pool(database_url: str, **kw: Any) -> asyncpg.Pool:
    """An asyncpg pool whose connections encode/decode json and jsonb with json.dumps/loads.

    ``kw`` goes to ``asyncpg.create_pool``; an ``init`` given there runs after the codecs are set.
    Releasing a connection resets its session only when it may have session state (``reset_if_needed``).
    """
    kw.setdefault("connection_class", TrackedConnection)
    kw.setdefault("reset", reset_if_needed)
    kw.setdefault("max_cacheable_statement_size", MAX_CACHEABLE_STATEMENT)
    user_init: Callable[[asyncpg.Connection], Awaitable[None]] | None = kw.pop("init", None)

    async def init(conn: asyncpg.Connection) -> None:
        await set_json_codecs(conn)
        if user_init is not None:
            await user_init(conn)

    pool = await asyncpg.create_pool(database_url, init=init, **kw)
    if pool is None:  # only when the pool is created without awaiting; typed as Optional upstream
        raise RuntimeError(f"could not create a connection pool for {database_url.split('@')[-1]}")
    return pool


async def create_database(server_url: str, prefix: str, migrated: bool = True, template: str | None = None) -> str:
    """A new database `prefix_<random>` on the server of `server_url` (any database URL of that server), with
    the platform's schema unless `migrated` is False; its URL. With `template` (a database name), a copy of that
    database instead, not migrated again. For tests and benches: drop it with `drop_database` (or use
    `scratch_database`)."""
    from services.runtime.migrations import migrate

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await admin.close()
    url = server_url.rsplit("/", 1)[0] + "/" + name
    if migrated and template is None:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
    return url


async def drop_database(server_url: str, url: str) -> None:
    """Drops the database of `url` (its sessions closed first), through a new connection to `server_url`."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def scratch_database(server_url: str, prefix: str, migrated: bool = True,
                           keep: bool = False) -> AsyncIterator[str]:
    """`create_database` for the block, dropped afterwards (unless `keep`) with a NEW connection, so the block
    may restart the server in between."""
    url = await create_database(server_url, prefix, migrated)
    try:
        yield url
    finally:
        if not keep:
            await drop_database(server_url, url)
