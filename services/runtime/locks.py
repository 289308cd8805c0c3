"""Per-instance work locks: PostgreSQL session advisory locks.

A service holds the lock while it works on an instance (load, format, submit). If the process
dies, PostgreSQL releases the lock with the session, and the instance, still Running or
Formatting in progress, is picked up by the next `resume` pass of any replica.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from services.runtime.db import connection_gone, has_session_state, session_state_undone

# Every PostgreSQL advisory-lock key of the platform, one place: a new one is chosen here, against the
# others. Single-key locks (pg_advisory_lock(key)); arbitrary constants shared by every process of a
# database.
MIGRATION_LOCK_KEY = 7_316_004_001  # migrations: the second process waits, then finds nothing to do
RELAY_LOCK_KEY = 7_316_004_002  # the outbox relay: only its holder publishes
PROJECTION_INSTALL_LOCK_KEY = 7_316_004_003  # installing the projections' read-model tables
CATALOGUE_SYNC_LOCK_KEY = 7_316_004_010  # reference data: two loads must not interleave delete + copy
SIGNER_LOCK_KEY = 7_316_004_013  # the audit checkpoint signer
HOUSEKEEPING_LOCK_KEY = 7_316_004_014  # housekeeping (services.runtime.housekeeping): one pruner at a time
# Two-key locks (instance_lock(pool, namespace, instance)): one namespace per kind of work on an instance.
LOAD_LOCK = 7316
FORMAT_LOCK = 7317
SUBMIT_LOCK = 7318


@contextlib.asynccontextmanager
async def instance_lock(pool: asyncpg.Pool, namespace: int, instance: int) -> AsyncIterator[bool]:
    """Yields True when this task holds the lock, False when someone else is working on it."""
    async with pool.acquire() as conn:
        clean = not has_session_state(conn)
        held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", namespace, instance))
        try:
            yield held
        finally:
            if held:
                await release_instance_lock(conn, namespace, instance, clean=clean)


@contextlib.asynccontextmanager
async def platform_lock(pool: asyncpg.Pool, key: int) -> AsyncIterator[asyncpg.Connection | None]:
    """A single-key lock of the whole platform (one of the keys above): yields the connection that holds it while the
    block runs, or None when another process holds it (the block then does nothing). Released as instance_lock's."""
    async with pool.acquire() as conn:
        clean = not has_session_state(conn)
        held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
        try:
            yield conn if held else None
        finally:
            if held:
                await _unlock(conn, "SELECT pg_advisory_unlock($1)", key, clean=clean)


async def release_instance_lock(conn: asyncpg.Connection, namespace: int, instance: int, *, clean: bool) -> None:
    """Releases an instance's lock that `conn` holds (instance_lock's, or one its holder took in a statement of its own:
    services.loader.handlers takes a load's in the statement that makes the instance); `clean`: `conn` had no session
    state before it took the lock.

    A connection cut took the lock with it (its session ended): nothing to unlock. PostgreSQL crashed or stopped under
    the work, asyncpg may have handed the connection back already (connection_gone), or not have noticed yet, and the
    unlock then fails on the dead socket: the lock is gone as well. Were the connection alive after all, it keeps its
    session state flagged and the pool's reset unlocks it."""
    await _unlock(conn, "SELECT pg_advisory_unlock($1, $2)", namespace, instance, clean=clean)


async def _unlock(conn: asyncpg.Connection, statement: str, *key: int, clean: bool) -> None:
    if connection_gone(conn):
        return
    try:
        released = await conn.fetchval(statement, *key)
    except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
        released = False
    if released and clean:  # the lock was its only session state: no reset query on release
        session_state_undone(conn)


async def instances_in_state(pool: asyncpg.Pool, *states: str) -> list[int]:
    rows = await pool.fetch("SELECT instance FROM instance_list WHERE state = ANY($1::text[]) ORDER BY instance",
                            list(states))
    return [int(r["instance"]) for r in rows]
