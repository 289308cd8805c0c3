"""The pool's reset on release (services.runtime.db.reset_if_needed), on the real PostgreSQL: whatever session
state one user of a connection leaves (session advisory locks, SET, set_config, LISTEN) never reaches the next
user; statements that leave none skip the reset query's round trip."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date

import asyncpg
import pytest

from services.runtime.db import (
    TrackedConnection,
    create_pool,
    has_session_state,
    is_tracked,
    reset_if_needed,
    session_state_undone,
)
from services.runtime.locks import instance_lock

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

LOCK = (7316, 424242)


@pytest.fixture
async def one_conn_pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    """One connection: every acquire gets the connection the previous user released."""
    pool = await create_pool(fresh_db, min_size=1, max_size=1)
    try:
        yield pool
    finally:
        await pool.close()


async def _lock_free_elsewhere(url: str) -> bool:
    other = await asyncpg.connect(url)
    try:
        taken = bool(await other.fetchval("SELECT pg_try_advisory_lock($1, $2)", *LOCK))
        if taken:
            await other.execute("SELECT pg_advisory_unlock($1, $2)", *LOCK)
        return taken
    finally:
        await other.close()


async def _pid(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))


@pytest.mark.parametrize("how", ["fetchval", "execute-simple", "execute-args", "in-a-cte"])
async def test_a_leaked_session_advisory_lock_is_released(one_conn_pool: asyncpg.Pool, fresh_db: str,
                                                          how: str) -> None:
    pid = await _pid(one_conn_pool)
    async with one_conn_pool.acquire() as conn:
        if how == "fetchval":
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *LOCK)
        elif how == "execute-simple":
            await conn.execute(f"SELECT 1; SELECT pg_advisory_lock({LOCK[0]}, {LOCK[1]})")
        elif how == "execute-args":
            await conn.execute("SELECT pg_advisory_lock($1, $2)", *LOCK)
        else:
            await conn.fetch("WITH l AS (SELECT PG_ADVISORY_LOCK($1, $2)) SELECT * FROM l", *LOCK)
        assert not await _lock_free_elsewhere(fresh_db)  # held, and no unlock: the user "forgot"
    assert await _lock_free_elsewhere(fresh_db)  # released with the connection
    assert await _pid(one_conn_pool) == pid  # the same session, not a new connection
    async with one_conn_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                   "AND pid = pg_backend_pid()") == 0


# the test releases a connection that still listens, on purpose: asyncpg warns, then the reset must UNLISTEN
@pytest.mark.filterwarnings("ignore:.*active notification listener:asyncpg.exceptions._base.InterfaceWarning")
async def test_session_settings_and_listen_do_not_reach_the_next_user(one_conn_pool: asyncpg.Pool) -> None:
    async with one_conn_pool.acquire() as conn:
        default = await conn.fetchval("SHOW work_mem")
        await conn.execute("SET work_mem = '77MB'")
    async with one_conn_pool.acquire() as conn:
        assert await conn.fetchval("SHOW work_mem") == default
        await conn.fetchval("SELECT set_config('work_mem', '78MB', false)")
    async with one_conn_pool.acquire() as conn:
        assert await conn.fetchval("SHOW work_mem") == default
        await conn.add_listener("flows_test_channel", lambda *a: None)
        await conn.execute("select 1;\n  set statement_timeout = 12345")
    async with one_conn_pool.acquire() as conn:
        assert await conn.fetch("SELECT pg_listening_channels()") == []
        assert await conn.fetchval("SHOW statement_timeout") != "12345ms"


async def test_statements_without_session_state_skip_the_reset(one_conn_pool: asyncpg.Pool) -> None:
    async with one_conn_pool.acquire() as conn:
        raw = conn._con  # the pool's proxy hides the connection; the flag lives on it
        assert is_tracked(raw)
        async with conn.transaction():
            await conn.execute("SET LOCAL work_mem = '64MB'")  # gone at commit: no reset needed
            await conn.execute("CREATE TEMP TABLE t (x int) ON COMMIT DROP")
            await conn.executemany("INSERT INTO t VALUES ($1)", [(1,), (2,)])
            await conn.fetch("UPDATE t SET x = x + 1 RETURNING x")
        await conn.fetchval("SELECT count(*) FROM pg_class")
        assert raw._flows_session_state is False
        await conn.fetchval("SELECT pg_try_advisory_xact_lock(1)")  # xact lock: still flagged (wide pattern)
        assert raw._flows_session_state is True
        raw._flows_session_state = False
        await conn.fetch("UPDATE pg_class\nSET relname = relname WHERE false")  # a line starting with SET: flagged
        assert raw._flows_session_state is True
    async with one_conn_pool.acquire() as conn:
        assert conn._con._flows_session_state is False  # the reset ran and cleared the flag


async def test_a_transaction_local_set_config_skips_the_reset(one_conn_pool: asyncpg.Pool) -> None:
    """set_config(name, value, true) ends with its transaction, like SET LOCAL: the loader marks a checked snapshot
    with one, once per load, and its release needs no reset. Any other set_config is still session state."""
    async with one_conn_pool.acquire() as conn:
        raw = conn._con
        default = await conn.fetchval("SHOW work_mem")
        assert await conn.fetchval("SELECT set_config('work_mem', '65MB', true)") == "65MB"
        assert await conn.fetchval("SELECT set_config($1, $2, true)", "work_mem", "66MB") == "66MB"
        assert raw._flows_session_state is False
        assert await conn.fetchval("SHOW work_mem") == default  # each statement was its own transaction, ended
        # a literal `true` inside a quoted value is not the third argument: session state, reset on release
        assert await conn.fetchval("SELECT set_config('application_name', 'x, true)', false)") == "x, true)"
        assert raw._flows_session_state is True
    async with one_conn_pool.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") != "x, true)"
        assert conn._con._flows_session_state is False


async def test_an_instance_lock_released_by_its_holder_needs_no_reset(one_conn_pool: asyncpg.Pool,
                                                                      fresh_db: str) -> None:
    """instance_lock unlocks its own lock: the release skips the reset query's round trip (a load's or a format's
    path), and the lock is free for the next user of the connection and for every other session."""
    pid = await _pid(one_conn_pool)
    async with instance_lock(one_conn_pool, *LOCK) as held:
        assert held and not await _lock_free_elsewhere(fresh_db)
    other = await asyncpg.connect(fresh_db)
    try:  # the session's last statement is the unlock: no reset query was sent on release
        last = await other.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
    finally:
        await other.close()
    assert "pg_advisory_unlock(" in last and "unlock_all" not in last, last
    async with one_conn_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                   "AND pid = pg_backend_pid()") == 0
    assert await _lock_free_elsewhere(fresh_db)
    assert await _pid(one_conn_pool) == pid


async def test_the_small_loads_checks_statement_is_prepared_once_per_connection(one_conn_pool: asyncpg.Pool) -> None:
    """asyncpg keeps no statement longer than 15 KB by default: it would be parsed and planned at every small load.
    The pool's connections keep the loader's checks of a small load (services/loader/checks.py _small_sql)."""
    from services.loader import checks
    from services.runtime.host import prepare_database
    from services.runtime.read_models import FLOW_PROJECTIONS

    await prepare_database(one_conn_pool, FLOW_PROJECTIONS)
    sql = checks._small_sql(checks.plan_for("FLUSSO_C", "2020", "snapshot_service"))
    assert len(sql) > 15 * 1024  # what the default would not keep
    async with one_conn_pool.acquire() as conn:
        for _ in range(2):
            await conn.fetch(sql, *checks.rule_args(1, "2020", (date(2020, 8, 1), date(2020, 8, 31))))
        kept = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", sql)
    assert kept == 1


async def test_a_plain_connection_is_never_taken_for_a_tracked_one(fresh_db: str) -> None:
    """asyncpg's metaclass answers isinstance(conn, TrackedConnection) True for ANY connection: is_tracked looks at
    the class itself. A plain connection has no flag, so it always counts as having session state, and a pool of
    plain connections given reset_if_needed resets each release (it used to fail on the missing flag, and asyncpg
    then terminated the connection)."""
    plain = await asyncpg.connect(fresh_db)
    try:
        assert not is_tracked(plain)
        assert has_session_state(plain)
        session_state_undone(plain)  # nothing to undo on a plain connection, and no error
        assert has_session_state(plain)
    finally:
        await plain.close()
    tracked = await asyncpg.connect(fresh_db, connection_class=TrackedConnection)
    try:
        assert is_tracked(tracked)
        assert not has_session_state(tracked)
    finally:
        await tracked.close()
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=1, reset=reset_if_needed)
    try:
        async with pool.acquire() as conn:
            assert not is_tracked(conn._con)
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *LOCK)
        assert await _lock_free_elsewhere(fresh_db)  # the reset query ran on release
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same session, not a terminated one
    finally:
        await pool.close()
