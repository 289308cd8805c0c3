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

from services.runtime import db
from tests.stack_urls import DATABASE_URL

REPO = Path(__file__).resolve().parents[1]


@asynccontextmanager
async def scratch_database(prefix: str, keep: bool = False) -> AsyncIterator[str]:
    """A new, migrated database of the test stack (its URL); dropped afterwards (unless `keep`) with a NEW
    connection, so a test may restart the server in between."""
    async with db.scratch_database(DATABASE_URL, prefix, keep=keep) as url:
        yield url


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
