"""Fault tests run the code under test in its own process, on a database of its own, its output in a
file the test measures: a scratch database and a logged child process, each a context manager.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from services.runtime import db
from tests.stack_urls import DATABASE_URL

REPO = Path(__file__).resolve().parents[1]


# The session's migrated template (its URL): made by `migrate` at the first scratch database, then copied by
# PostgreSQL for each one (CREATE DATABASE ... TEMPLATE), the same schema and rows without running the migrations
# again for every test. Dropped at the end of the session (tests/conftest.py pytest_sessionfinish).
_template: str | None = None


async def _migrated_template() -> str:
    global _template
    if _template is None:
        made = await db.create_database(DATABASE_URL, "t_template")
        # no session on it, ever (autovacuum's included): PostgreSQL copies a template only while nobody is connected
        admin = await asyncpg.connect(DATABASE_URL)
        try:
            await admin.execute(f'ALTER DATABASE "{made.rsplit("/", 1)[1]}" WITH ALLOW_CONNECTIONS false')
        finally:
            await admin.close()
        if _template is None:
            _template = made
        else:  # another task of this loop made one meanwhile
            await db.drop_database(DATABASE_URL, made)
    return _template


# The sessions of the connection's database that wait on a lock. pg_stat_activity is read once per transaction: poll
# it from a connection outside any transaction held open, or every poll sees the same rows.
LOCK_WAITERS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"


async def lock_waiters(db: asyncpg.Connection | asyncpg.Pool) -> set[int]:
    """The pids of the sessions of `db`'s database waiting on a lock (LOCK_WAITERS)."""
    return {row["pid"] for row in await db.fetch(LOCK_WAITERS)}


def template_made() -> bool:
    """Whether this session made its template (then drop_template has something to drop)."""
    return _template is not None


async def drop_template() -> None:
    """Drops the session's template, if one was made."""
    global _template
    if _template is not None:
        template, _template = _template, None
        await db.drop_database(DATABASE_URL, template)


@asynccontextmanager
async def scratch_database(prefix: str, keep: bool = False) -> AsyncIterator[str]:
    """A new, migrated database of the test stack (its URL): a copy of the session's template, which `migrate` made;
    dropped afterwards (unless `keep`) with a NEW connection, so a test may restart the server in between."""
    template = (await _migrated_template()).rsplit("/", 1)[1]
    url = await db.create_database(DATABASE_URL, prefix, template=template)
    try:
        yield url
    finally:
        if not keep:
            await db.drop_database(DATABASE_URL, url)


@asynccontextmanager
async def logged_process(log: Path, *args: str, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python ARGS` from the repository, stdout and stderr to `log`; terminated (then killed) at the end."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(sys.executable, *args, cwd=REPO, env=env, stdout=out,
                                                       stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
