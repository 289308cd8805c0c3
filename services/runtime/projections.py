"""Read models (projections) that can be dropped and rebuilt from the log with the same result.

A projection declares its tables (DDL with UNQUALIFIED names) and applies one event at a time.
Live projections run inline in the append transaction (``EventStore(projections=...)``), so a
command sees its own writes. To prove a read model is what the log says, ``rebuild`` replays every
event in global order into a scratch schema (the connection's search_path points there, which is
why the DDL and ``apply`` must not name a schema) and ``diff`` compares it with the live tables
row by row (EXCEPT ALL both ways: a missing, extra, changed or duplicated row all show up).

A rebuild replays every event, so it is where the per-event round trips hurt: a projection may also offer
``rebuilder()``, an object that folds the events in memory (``feed``, no I/O) and writes the final rows
in a few set-based statements (``write``). It must end with exactly the rows ``apply`` would leave
(tests/integration/test_read_models_rebuild.py diffs a bulk rebuild against tables the inline ``apply``
built); projections without one are applied event by event.

A rebuilder may also narrow what it reads, which is where most of a rebuild's time went (decoding every event's
whole payload into a dict, then building a ``StoredEvent``): ``events_where``, an SQL predicate over ``events``
naming the only events its ``feed`` does anything with (the rest are never fetched for it), and ``columns`` with
``feed_rows``: SQL expressions over ``events`` (e.g. ``data->>'state'``) fetched instead of whole events, and
the pages of those rows folded in one call. When every projection has a rebuilder, each reads its own events
in global order through a server-side cursor; otherwise every event is fetched once and fed to all.

Where even a narrow record costs too much (asyncpg builds a Record and a Python value for every column of every
row: at 1,000,000 events most of a rebuild's CPU), a rebuilder may instead take its columns as ``COPY ... TO
STDOUT`` text: ``copy_columns`` (SQL expressions, as ``columns``) and ``feed_copy``, which folds the rows of a
chunk, each a list of the fields as PostgreSQL's text output has them (``copy_rows``: None for NULL, escapes
undone). Splitting lines and tabs is a few C calls a row; the fold converts only the fields it keeps.

``rebuild_and_diff`` does both in ONE repeatable-read transaction and rolls it back: the rebuilt
tables see exactly the events the live tables were built from (live projections commit with their
events), and nothing is left behind. Columns compared with EXCEPT need equality: use jsonb, not json.
"""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from services.runtime.eventstore import StoredEvent, to_stored

_ALL_COLUMNS = """stream_id, version, position, transaction_id, event_id, type, data, actor, metadata, recorded_at,
       prev_hash, hash"""
_REPLAY_PAGE = f"""
SELECT {_ALL_COLUMNS}
FROM events WHERE (transaction_id, position) > ($1::xid8, $2::bigint)
ORDER BY transaction_id, position LIMIT $3
"""


class Projection(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> Mapping[str, str]:  # table name -> CREATE TABLE statement, unqualified
        ...

    async def apply(self, conn: asyncpg.Connection, event: StoredEvent) -> None: ...


class Rebuilder(Protocol):
    """A projection's bulk rebuild: ``feed`` every event in global order, then ``write`` once."""

    def feed(self, event: StoredEvent) -> None: ...

    async def write(self, conn: asyncpg.Connection) -> None: ...


class CopyRebuilder(Rebuilder, Protocol):
    """A rebuilder that reads its events as COPY text (``copy_columns``), folded a chunk at a time."""

    @property
    def events_where(self) -> str: ...

    @property
    def copy_columns(self) -> str: ...  # SQL select list over events; each row given to feed_copy as text fields

    def feed_copy(self, rows: list[list[str | None]]) -> None: ...


class NarrowRebuilder(Rebuilder, Protocol):
    """A rebuilder that reads only the events (``events_where``) and the values (``columns``) it folds."""

    @property
    def events_where(self) -> str: ...  # SQL predicate over events; "true" for every event

    @property
    def columns(self) -> str: ...  # SQL select list over events, in global order; fed to feed_rows page by page

    def feed_rows(self, rows: Sequence[asyncpg.Record]) -> None: ...


@dataclass(frozen=True)
class RowDifference:
    projection: str
    table: str
    only_in: str  # "live" or "rebuilt"
    row: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.projection}.{self.table}: row only in {self.only_in}: {self.row}"


@dataclass(frozen=True)
class RebuildReport:
    events_replayed: int
    differences: list[RowDifference]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def install(conn: asyncpg.Connection, projection: Projection, schema: str = "public") -> None:
    """Creates the projection's tables in ``schema`` (idempotent only if its DDL says IF NOT EXISTS)."""
    async with conn.transaction():
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
        await conn.execute(f"SET LOCAL search_path TO {_ident(schema)}, public")
        for ddl in projection.tables.values():
            await conn.execute(ddl)


async def rebuild(conn: asyncpg.Connection, projections: Sequence[Projection], into_schema: str,
                  progress: Callable[[int], None] | None = None, page: int = 10_000,
                  bulk: bool = True) -> int:
    """Replays all events visible to ``conn`` into fresh tables in ``into_schema``; returns the count.

    Run it inside a transaction (``rebuild_and_diff`` does); ``into_schema`` is dropped first.
    ``bulk=False`` applies every event one by one even where a projection has a ``rebuilder`` (the
    reference the bulk path must equal; bench/replay.py --event-by-event times it).
    """
    if into_schema in ("public", "pg_catalog"):
        raise ValueError(f"rebuild into schema {into_schema!r}: refusing to drop a live schema")
    if not conn.is_in_transaction():
        raise RuntimeError("rebuild() must run inside a transaction (search_path is set LOCAL)")
    await conn.execute(f"DROP SCHEMA IF EXISTS {_ident(into_schema)} CASCADE")
    await conn.execute(f"CREATE SCHEMA {_ident(into_schema)}")
    await conn.execute(f"SET LOCAL search_path TO {_ident(into_schema)}, public")
    for projection in projections:
        for ddl in projection.tables.values():
            await conn.execute(ddl)
    bulky: list[Rebuilder] = []
    one_by_one: list[Projection] = []
    for projection in projections:
        make = getattr(projection, "rebuilder", None) if bulk else None
        if make is not None:
            bulky.append(make())
        else:
            one_by_one.append(projection)
    # A rebuild allocates millions of short-lived objects and keeps the folded rows: the cyclic garbage
    # collector would walk the growing heap again and again (half the time at 300k events), for no cycle.
    collecting = gc.isenabled()
    gc.disable()
    try:
        if one_by_one:
            replayed = await _replay(conn, bulky, one_by_one, progress, page)
        else:
            replayed = await _replay_narrow(conn, bulky, progress, page)
        for rebuilder in bulky:
            await rebuilder.write(conn)
    finally:
        if collecting:
            gc.enable()
    await conn.execute("RESET search_path")
    return replayed


async def _replay(conn: asyncpg.Connection, bulky: Sequence[Rebuilder], one_by_one: Sequence[Projection],
                  progress: Callable[[int], None] | None, page: int) -> int:
    replayed, after = 0, (0, 0)
    while rows := await conn.fetch(_REPLAY_PAGE, after[0], after[1], page):
        for row in rows:
            event = to_stored(row)
            for rebuilder in bulky:
                rebuilder.feed(event)
            for projection in one_by_one:
                await projection.apply(conn, event)
        replayed += len(rows)
        after = (int(rows[-1]["transaction_id"]), rows[-1]["position"])
        if progress is not None:
            progress(replayed)
    return replayed


async def _replay_narrow(conn: asyncpg.Connection, bulky: Sequence[Rebuilder],
                         progress: Callable[[int], None] | None, page: int) -> int:
    """Each rebuilder reads only its events (and, if it says so, only its columns) in global order.

    Returns how many events the log holds (in this snapshot), the ones no rebuilder needs included: they
    were replayed in the sense that every projection has seen the whole log."""
    fed = 0
    for rebuilder in bulky:
        where = getattr(rebuilder, "events_where", None) or "true"
        copy_columns = getattr(rebuilder, "copy_columns", None)
        if copy_columns:
            fed = await _replay_copy(conn, rebuilder, where, copy_columns, fed, progress)  # type: ignore[arg-type]
            continue
        columns = getattr(rebuilder, "columns", None)
        cursor = await conn.cursor(f"SELECT {columns or _ALL_COLUMNS} FROM events WHERE {where} "
                                   "ORDER BY transaction_id, position")
        # The next page is asked for before this one is folded: PostgreSQL (its own process, the other core)
        # makes it while Python folds.
        ahead = asyncio.ensure_future(cursor.fetch(page))
        try:
            while rows := await ahead:
                ahead = asyncio.ensure_future(cursor.fetch(page))
                await asyncio.sleep(0)  # the task sends its Execute now
                if columns:
                    rebuilder.feed_rows(rows)  # type: ignore[attr-defined]
                else:
                    for row in rows:
                        rebuilder.feed(to_stored(row))
                fed += len(rows)
                if progress is not None:
                    progress(fed)
        finally:
            if not ahead.done():  # a fold that raised: the connection is free again once the fetch is in
                await asyncio.gather(ahead, return_exceptions=True)
    return int(await conn.fetchval("SELECT count(*) FROM events"))


async def _replay_copy(conn: asyncpg.Connection, rebuilder: CopyRebuilder, where: str, columns: str, fed: int,
                       progress: Callable[[int], None] | None) -> int:
    """The rebuilder's events in global order as COPY text, each chunk folded as it arrives (PostgreSQL, on the
    other core, fills the socket meanwhile). The events are ordered inside a fence (OFFSET 0), so the planner
    chooses the scan as for the plain ordered SELECT, not by the cost of the expressions (with them it chose a
    parallel sequential scan and an external sort)."""
    query = (f"SELECT {columns} FROM (SELECT * FROM events WHERE {where} ORDER BY transaction_id, position "
             "OFFSET 0) AS events ORDER BY transaction_id, position")  # asyncpg makes it COPY (...) TO STDOUT
    rest = b""
    failure: Exception | None = None

    async def fold(chunk: bytes) -> None:
        nonlocal rest, fed, failure
        if failure is not None:
            return  # the rest of the COPY is drained unread
        if rest:
            chunk, rest = rest + chunk, b""
        end = chunk.rfind(b"\n") + 1  # asyncpg hands over whole CopyData messages (lines); kept safe anyway
        if end < len(chunk):
            chunk, rest = chunk[:end], chunk[end:]
        if not chunk:
            return
        try:
            rows = copy_rows(chunk.decode())
            rebuilder.feed_copy(rows)
        except Exception as error:
            # Not raised from here: asyncpg would cancel the COPY from another connection, and the connection was
            # then left closed or hanging (tried). The COPY runs to its end and the error is raised after it.
            failure = error
            return
        fed += len(rows)
        if progress is not None:
            progress(fed)

    await conn.copy_from_query(query, output=fold)
    if failure is not None:
        raise failure
    if rest:
        raise RuntimeError(f"COPY ended inside a line: {rest[:80]!r}")
    return fed


_COPY_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_COPY_ESCAPED = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _copy_unescape(field: str) -> str | None:
    if field == "\\N":
        return None
    return _COPY_ESCAPE.sub(lambda m: _COPY_ESCAPED.get(m.group(1), m.group(1)), field)


def copy_rows(text: str) -> list[list[str | None]]:
    """The rows of COPY text output (whole lines, each ending with a newline): each a list of its fields, None for
    NULL (``\\N``), the text format's escapes undone (``\\\\``, ``\\t``, ``\\n``... : a field's tab or
    newline is always escaped, so the splits cannot cut one). A line without a backslash has neither NULL nor
    escape: its split is the row (the fast path: a rebuilder's columns avoid NULL where they can)."""
    lines = text.split("\n")
    lines.pop()  # after the last newline
    rows: list[list[str | None]] = [line.split("\t") for line in lines]  # type: ignore[misc]
    if "\\" in text:
        for i, line in enumerate(lines):
            if "\\" in line:
                rows[i] = [_copy_unescape(field) if "\\" in field else field for field in line.split("\t")]
    return rows


async def _columns(conn: asyncpg.Connection, schema: str, table: str) -> list[str]:
    rows = await conn.fetch("SELECT column_name FROM information_schema.columns "
                            "WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                            schema, table)
    if not rows:
        raise LookupError(f"table {schema}.{table} does not exist")
    return [row["column_name"] for row in rows]


async def diff(conn: asyncpg.Connection, projection: Projection, live_schema: str = "public",
               rebuilt_schema: str = "rebuilt") -> list[RowDifference]:
    """Rows that differ between the live and the rebuilt tables of ``projection``."""
    differences: list[RowDifference] = []
    for table in projection.tables:
        # The rebuilt table's column list, so a live table altered in another column order still compares.
        columns = ", ".join(_ident(c) for c in await _columns(conn, rebuilt_schema, table))
        await _columns(conn, live_schema, table)  # a missing live table is an error, not "all rows differ"
        live = f"SELECT {columns} FROM {_ident(live_schema)}.{_ident(table)}"
        rebuilt = f"SELECT {columns} FROM {_ident(rebuilt_schema)}.{_ident(table)}"
        for only_in, first, second in (("live", live, rebuilt), ("rebuilt", rebuilt, live)):
            for row in await conn.fetch(f"{first} EXCEPT ALL {second}"):
                differences.append(RowDifference(projection.name, table, only_in, dict(row)))
    return differences


async def rebuild_and_diff(pool: asyncpg.Pool, projections: Sequence[Projection], *,
                           live_schema: str = "public", scratch_schema: str = "replay_scratch",
                           progress: Callable[[int], None] | None = None) -> RebuildReport:
    """Rebuilds ``projections`` from the whole log and compares them with the live tables.

    One snapshot for both sides; rolled back at the end, so the scratch schema never persists.
    """
    async with pool.acquire() as conn:
        tx = conn.transaction(isolation="repeatable_read")
        await tx.start()
        try:
            replayed = await rebuild(conn, projections, scratch_schema, progress)
            differences: list[RowDifference] = []
            for projection in projections:
                differences.extend(await diff(conn, projection, live_schema, scratch_schema))
        finally:
            await tx.rollback()
    return RebuildReport(replayed, differences)
