"""services.runtime.db.fused_transaction: a transaction whose BEGIN travels with its opening statements and whose
COMMIT with the statements left for it, on the real PostgreSQL. What it must keep of a transaction: all or nothing
(an error inside, a failing statement that travels with the COMMIT, a failing opening statement), and the error
that ended it is the one raised, also when the session itself is killed under it."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.runtime.db import fused_transaction

pytestmark = pytest.mark.integration


@pytest.fixture
async def table(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute("CREATE TABLE t (n int PRIMARY KEY)")
    return conn


async def _rows(conn: asyncpg.Connection) -> list[int]:
    return [r["n"] for r in await conn.fetch("SELECT n FROM t ORDER BY n")]


async def test_the_opening_answers_and_the_statements_at_commit_commit_with_the_rest(table: asyncpg.Connection) -> None:
    conn = table
    await conn.execute("INSERT INTO t VALUES (1)")
    async with fused_transaction(conn, "SET LOCAL work_mem = '7MB'; SELECT FROM t WHERE n = 1 FOR SHARE") as fused:
        assert fused.status == "SELECT 1"
        assert conn.is_in_transaction()
        assert await conn.fetchval("SELECT current_setting('work_mem')") == "7MB"
        await conn.execute("INSERT INTO t VALUES ($1)", 2)
        fused.at_commit = "UPDATE t SET n = 3 WHERE n = 2"
    assert not conn.is_in_transaction()
    assert await _rows(conn) == [1, 3]
    assert await conn.fetchval("SELECT current_setting('work_mem')") != "7MB"  # SET LOCAL ended with it
    async with fused_transaction(conn, "SELECT FROM t WHERE n = 2 FOR SHARE") as fused:
        assert fused.status == "SELECT 0"


async def test_an_error_inside_rolls_everything_back(table: asyncpg.Connection) -> None:
    conn = table
    with pytest.raises(ZeroDivisionError):
        async with fused_transaction(conn, "SET LOCAL work_mem = '7MB'"):
            await conn.execute("INSERT INTO t VALUES (1)")
            raise ZeroDivisionError
    assert not conn.is_in_transaction()
    assert await _rows(conn) == []


async def test_a_failing_statement_at_commit_rolls_back_instead_of_committing(table: asyncpg.Connection) -> None:
    conn = table
    with pytest.raises(asyncpg.UniqueViolationError):
        async with fused_transaction(conn, "SELECT 1") as fused:
            await conn.execute("INSERT INTO t VALUES (1), (2)")
            fused.at_commit = "UPDATE t SET n = 1 WHERE n = 2"  # the primary key refuses it: the COMMIT never runs
    assert not conn.is_in_transaction()
    assert await _rows(conn) == []


async def _held_lock(other: asyncpg.Connection, key: int) -> bool:
    return bool(await other.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 "
                                     "AND objsubid = 1 AND granted", key))


async def test_after_commit_runs_once_committed_and_never_when_the_commit_fails(fresh_db: str,
                                                                                table: asyncpg.Connection) -> None:
    """The loader lets an instance's lock go this way: after the outcome's COMMIT, never when it did not commit."""
    conn = await asyncpg.connect(fresh_db)
    try:
        await conn.execute("SELECT pg_advisory_lock(42)")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with fused_transaction(conn, "SELECT 1") as fused:
                await conn.execute("INSERT INTO t VALUES (1), (2)")
                fused.at_commit = "UPDATE t SET n = 1 WHERE n = 2"
                fused.after_commit = "SELECT pg_advisory_unlock(42)"
        assert await _held_lock(table, 42), "let go although nothing committed"
        async with fused_transaction(conn, "SELECT 1") as fused:
            await conn.execute("INSERT INTO t VALUES (3)")
            fused.after_commit = "SELECT pg_advisory_unlock(42)"
        assert not await _held_lock(table, 42)
        assert not conn.is_in_transaction()
    finally:
        await conn.close()
    assert await _rows(table) == [3]


async def test_a_failing_opening_leaves_no_transaction_open(table: asyncpg.Connection) -> None:
    conn = table
    with pytest.raises(asyncpg.UndefinedTableError):
        async with fused_transaction(conn, "SELECT FROM missing FOR SHARE"):
            pytest.fail("the block must not run")
    assert not conn.is_in_transaction()
    await conn.execute("INSERT INTO t VALUES (1)")  # usable, and autocommit again
    assert await _rows(conn) == [1]


async def test_inside_a_transaction_it_refuses_rather_than_commit_the_callers(table: asyncpg.Connection) -> None:
    conn = table
    async with conn.transaction():
        await conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(RuntimeError, match="in one already"):
            async with fused_transaction(conn, "SELECT 1"):
                pytest.fail("the block must not run")
        assert conn.is_in_transaction()
    assert await _rows(conn) == [1]


async def test_a_session_killed_inside_raises_its_own_error_and_commits_nothing(fresh_db: str,
                                                                                table: asyncpg.Connection) -> None:
    """The session is terminated while a statement of the transaction runs (pg_terminate_backend, as an operator or a
    PostgreSQL shutdown does): that statement's error is the one raised, the rollback on the dead connection adds
    none, and the row inserted before it is gone."""
    victim = await asyncpg.connect(fresh_db)
    try:
        pid = victim.get_server_pid()

        async def terminate_while_it_sleeps() -> None:
            while not await table.fetchval("SELECT true FROM pg_stat_activity WHERE pid = $1 AND state = 'active' "
                                           "AND query LIKE '%pg_sleep%'", pid):
                await asyncio.sleep(0.01)
            assert await table.fetchval("SELECT pg_terminate_backend($1)", pid)

        killer = asyncio.create_task(terminate_while_it_sleeps())
        with pytest.raises(asyncpg.ConnectionDoesNotExistError, match="administrator command"):
            async with fused_transaction(victim, "SET LOCAL synchronous_commit = off"):
                await victim.execute("INSERT INTO t VALUES (1)")
                await victim.execute("SELECT pg_sleep(30)")
        await killer
        assert victim.is_closed()
    finally:
        await victim.close()
    assert await _rows(table) == []
