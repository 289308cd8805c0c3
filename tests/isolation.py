"""Fault tests run the code under test in its own process, on a database of its own, its output in a
file the test measures: a scratch database and a logged child process, each a context manager.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from tests.stack_urls import DATABASE_URL

REPO = Path(__file__).resolve().parents[1]


@asynccontextmanager
async def scratch_database(prefix: str, keep: bool = False) -> AsyncIterator[str]:
    """A new, migrated database (its URL); dropped afterwards (unless `keep`) with a NEW connection, so
    a test may restart the server in between."""
    from services.runtime.migrations import migrate

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(DATABASE_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = DATABASE_URL.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    try:
        yield url
    finally:
        if not keep:
            admin = await asyncpg.connect(DATABASE_URL)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


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
