"""Per-instance work locks: PostgreSQL session advisory locks.

A service holds the lock while it works on an instance (load, format, submit). If the process
dies, PostgreSQL releases the lock with the session, and the instance, still Running or
Formatting in progress, is picked up by the next `resume` pass of any replica.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg


@contextlib.asynccontextmanager
async def instance_lock(pool: asyncpg.Pool, namespace: int, instance: int) -> AsyncIterator[bool]:
    """Yields True when this task holds the lock, False when someone else is working on it."""
    async with pool.acquire() as conn:
        held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", namespace, instance))
        try:
            yield held
        finally:
            if held:
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", namespace, instance)


async def instances_in_state(pool: asyncpg.Pool, *states: str) -> list[int]:
    rows = await pool.fetch("SELECT instance FROM instance_list WHERE state = ANY($1::text[]) ORDER BY instance",
                            list(states))
    return [int(r["instance"]) for r in rows]
