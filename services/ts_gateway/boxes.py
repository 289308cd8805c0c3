"""Where a submission's sealed credentials wait while it runs: table ts_sealed_credentials
(migration 0032), never the hash-chained events table, which nothing may erase.

One row per instance, the box of its latest request, keyed by that request's event id: `keep`
runs in the transaction that records the request (a newer request replaces the row), `forget` in
the one that records the instance outcome, so the box exists exactly while the submission does,
across gateway restarts. `stored` lists the rows for the resume pass, which forgets the boxes of
requests that ended another way (superseded, instance deleted) and keeps the retired keys the
remaining ones are sealed to.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class StoredBox:
    """A row, without the box itself (the resume pass does not need it)."""

    instance: int
    request_id: uuid.UUID
    key_id: str


async def keep(conn: asyncpg.Connection, instance: int, request_id: uuid.UUID, key_id: str, sealed: str) -> None:
    await conn.execute(
        "INSERT INTO ts_sealed_credentials (instance, request_id, key_id, sealed) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (instance) DO UPDATE SET request_id = EXCLUDED.request_id, key_id = EXCLUDED.key_id, "
        "sealed = EXCLUDED.sealed, recorded_at = now()",
        instance, request_id, key_id, sealed)


async def box_of(conn: asyncpg.Pool | asyncpg.Connection, instance: int, request_id: uuid.UUID) -> str | None:
    """The box of this request, or None (it ended, or a newer request replaced it)."""
    value = await conn.fetchval("SELECT sealed FROM ts_sealed_credentials WHERE instance = $1 AND request_id = $2",
                                instance, request_id)
    return None if value is None else str(value)


async def forget(conn: asyncpg.Pool | asyncpg.Connection, instance: int, request_id: uuid.UUID) -> bool:
    """Deletes the box of this request (not a newer one's); whether there was one."""
    status = await conn.execute("DELETE FROM ts_sealed_credentials WHERE instance = $1 AND request_id = $2",
                                instance, request_id)
    return bool(int(status.split()[-1]))


async def stored(conn: asyncpg.Pool | asyncpg.Connection) -> list[StoredBox]:
    rows = await conn.fetch("SELECT instance, request_id, key_id FROM ts_sealed_credentials ORDER BY instance")
    return [StoredBox(int(r["instance"]), r["request_id"], r["key_id"]) for r in rows]
