"""Shared fixtures. Integration and e2e tests run against the REAL local stack (Kafka + PostgreSQL):
`stack` starts it if needed (or uses DATABASE_URL) and raises, failing the test, when it can't.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.runtime.settings import Settings
from tests import stack_urls  # noqa: F401  (sets the test stack's folder and ports before anything starts)


@pytest.fixture(scope="session", autouse=True)
def stack(request):  # type: ignore[no-untyped-def]
    """The test stack, started once per session when any integration or e2e test is collected."""
    needs = any("/integration/" in str(i.path) or "/e2e/" in str(i.path) for i in request.session.items)
    if not needs:
        return None
    from deploy import localstack

    return localstack.up(progress=lambda line: None)


@pytest.fixture(scope="session")
def settings(stack, tmp_path_factory) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(database_url=stack.database_url, kafka_bootstrap=stack.bootstrap_servers,
                    files_dir=tmp_path_factory.mktemp("files"), log_format="console")


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
async def fresh_db(stack) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    """A new, migrated database for one test; dropped afterwards (kept with FLOWS_KEEP_TEST_DB)."""
    from tests.isolation import scratch_database

    async with scratch_database("t", keep=bool(os.environ.get("FLOWS_KEEP_TEST_DB"))) as url:
        yield url


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    """The runtime's pool (services.runtime.db: jsonb as text, as the services use it) on `fresh_db`.
    A module that needs another pool defines its own `pool`, which takes precedence."""
    from services.runtime.db import create_pool

    pool = await create_pool(fresh_db, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()
