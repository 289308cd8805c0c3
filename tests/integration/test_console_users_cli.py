"""`flows users` and `flows access-log` on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from services.cli.main import app
from services.console import auth
from services.console.access import record_access
from services.console.auth import Principal
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.migrations import migrate
from tests.console_support import csrf_of, running_console
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture
def cli_env(fresh_db, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    monkeypatch.setenv("FLOWS_OPERATOR", "tester")
    monkeypatch.setenv("COLUMNS", "220")
    return fresh_db


def flows(*args: str, stdin: str | None = None, code: int = 0) -> str:
    result = runner.invoke(app, list(args), input=stdin)
    assert result.exit_code == code, result.output
    return result.output


def test_users_are_added_listed_and_disabled_and_the_password_is_only_a_hash(cli_env) -> None:  # type: ignore[no-untyped-def]
    out = flows("users", "add", "op.rossi", "--role", "operator", "--ente", "201", "--ente", "202",
                "--password-stdin", stdin="una password lunga\n")
    assert "user op.rossi added (operator: enti 201, 202)" in out
    assert "--ente is for operators only" in flows("users", "add", "aud.1", "--role", "auditor", "--ente", "201",
                                                   "--password-stdin", stdin="una password lunga\n", code=1)
    assert "at least 12 characters" in flows("users", "add", "aud.1", "--role", "auditor", "--password-stdin",
                                             stdin="corta\n", code=1)
    # an ente the platform does not know (a typo of 201): refused, naming it, as for an API key; nothing added
    assert "--ente 209: not an entity of the platform" in " ".join(flows(
        "users", "add", "op.bianchi", "--role", "operator", "--ente", "209", "--password-stdin",
        stdin="una password lunga\n", code=1).split())
    assert "op.bianchi" not in flows("users", "list")
    assert "already exists" in flows("users", "add", "op.rossi", "--role", "operator", "--ente", "201",
                                     "--password-stdin", stdin="una password lunga\n", code=1)
    listed = flows("users", "list")
    assert "op.rossi" in listed and "201, 202" in listed and "active" in listed
    flows("users", "disable", "op.rossi")
    assert "disabled" in flows("users", "list")
    async def stored_hash() -> str:
        conn = await asyncpg.connect(cli_env)
        try:
            return str(await conn.fetchval("SELECT password_hash FROM console_user WHERE name = 'op.rossi'"))
        finally:
            await conn.close()

    stored = asyncio.run(stored_hash())
    assert stored.startswith("$argon2id$") and "una password lunga" not in stored


def test_a_user_is_enabled_again_and_given_a_new_password_which_ends_its_sessions(cli_env) -> None:  # type: ignore[no-untyped-def]
    flows("users", "add", "op.verdi", "--role", "operator", "--ente", "201", "--password-stdin",
          stdin="la prima password\n")

    async def session_then(work: str) -> tuple[int, str | None, str | None]:
        """A session of op.verdi opened before `work` runs; then its sessions left, and who the two passwords
        authenticate."""
        pool = await create_pool(cli_env, min_size=1, max_size=2)
        try:
            await auth.open_session(pool, "op.verdi", 3600)
            await asyncio.to_thread(flows, *work.split(), stdin="una seconda password\n")
            left = int(await pool.fetchval("SELECT count(*) FROM console_session WHERE user_name = 'op.verdi'"))
            first = await auth.authenticate(pool, "op.verdi", "la prima password", "test", max_failures=50,
                                            window_s=60)
            second = await auth.authenticate(pool, "op.verdi", "una seconda password", "test", max_failures=50,
                                             window_s=60)
            return left, first, second
        finally:
            await pool.close()

    flows("users", "disable", "op.verdi")
    assert "disabled" in flows("users", "list")
    assert "user op.verdi enabled" in flows("users", "enable", "op.verdi")
    assert "active" in flows("users", "list") and "disabled" not in flows("users", "list")
    assert "there is no user 'nessuno'" in flows("users", "enable", "nessuno", code=1)
    assert "at least 12 characters" in flows("users", "password", "op.verdi", "--password-stdin", stdin="corta\n",
                                             code=1)
    assert "there is no user 'nessuno'" in flows("users", "password", "nessuno", "--password-stdin",
                                                 stdin="una seconda password\n", code=1)

    left, first, second = asyncio.run(session_then("users password op.verdi --password-stdin"))
    assert left == 0  # the session opened with the old password ended
    assert first is None and second == "op.verdi"

    # Every change is in the record of user administration, by whom, the latest first; never a password, nor its
    # hash; the refused ones are not there. The stream is hash-chained like every other.
    history = flows("users", "history", "--user", "op.verdi")
    changes = [[cell.strip() for cell in line.split("│")[1:-1]] for line in history.splitlines() if "op.verdi" in line]
    assert [c[1] for c in changes] == ["user-password-set", "user-enabled", "user-disabled", "user-added"], history
    assert all(c[3] == "cli:tester" for c in changes), history
    assert "role operator; enti 201" in history

    async def recorded() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(cli_env)
        try:
            return await conn.fetch("SELECT type, actor, data::text AS data FROM events WHERE stream_id = $1 "
                                    "ORDER BY version", auth.USERS_STREAM)
        finally:
            await conn.close()

    rows = asyncio.run(recorded())
    assert [r["type"] for r in rows] == ["console.user-added", "console.user-disabled", "console.user-enabled",
                                         "console.user-password-set"], rows
    assert not any(secret in r["data"] for r in rows for secret in ("la prima", "seconda", "argon2")), rows

    verified = flows("replay", "--all", "--verify")
    assert "replayed 1 stream(s), 4 events" in verified and "every hash chain verifies" in verified, verified


def test_the_access_log_filters_by_user_and_instance(cli_env) -> None:  # type: ignore[no-untyped-def]
    flows("users", "list")  # migrates

    async def two_accesses() -> None:
        pool = await create_pool(cli_env, min_size=1, max_size=2)
        try:
            store = EventStore(pool, source="/test")
            await record_access(store, Principal("op.rossi", "operator", frozenset({"201"})), "file-view", 1947,
                                "10.0.0.7", {"file": "C2_150201_202610_1947.txt"})
            await record_access(store, Principal("aud.1", "auditor"), "feedback-view", 1948, "10.0.0.8")
        finally:
            await pool.close()

    asyncio.run(two_accesses())
    out = flows("access-log", "--user", "op.rossi")
    assert "C2_150201_202610_1947.txt" in out and "10.0.0.7" in out and "aud.1" not in out
    out = flows("access-log", "--instance", "1948")
    assert "feedback-view" in out and "op.rossi" not in out


def test_the_demo_user_is_recorded_added_then_given_its_new_password(cli_env) -> None:  # type: ignore[no-untyped-def]
    """`flows demo` run again gives its user a new password, recorded. A demo user an administrator had disabled is
    active again after it, and the record says that too (it said only the password: the auditor saw a disabled user
    log in)."""
    async def thrice() -> None:
        pool = await create_pool(cli_env, min_size=1, max_size=2)
        try:
            await migrate(pool)
            await auth.set_demo_user(pool, "demo.201", "201", "prima password demo")
            await auth.set_demo_user(pool, "demo.201", "201", "seconda password demo")
            assert await auth.authenticate(pool, "demo.201", "seconda password demo", "test", max_failures=5,
                                           window_s=60) == "demo.201"
            assert await auth.disable_user(pool, "demo.201", by="adm.1")
            await auth.set_demo_user(pool, "demo.201", "201", "terza password demo")
            assert await auth.authenticate(pool, "demo.201", "terza password demo", "test", max_failures=5,
                                           window_s=60) == "demo.201"
        finally:
            await pool.close()

    asyncio.run(thrice())
    history = flows("users", "history")
    changes = [[cell.strip() for cell in line.split("│")[1:-1]] for line in history.splitlines() if "demo.201" in line]
    assert [(c[1], c[3]) for c in changes] == [
        ("user-enabled", "demo"), ("user-password-set", "demo"), ("user-disabled", "adm.1"),
        ("user-password-set", "demo"), ("user-added", "demo")], history


async def test_flows_demo_run_again_closes_the_demo_users_sessions_of_the_old_password(fresh_db, tmp_path,  # type: ignore[no-untyped-def]
                                                                                      monkeypatch) -> None:
    """`flows demo` gives demo.<ente> a new password at every run (services/cli/demo.py `_demo_login`): a browser
    session opened with the previous run's password (printed on a terminal, maybe shared) is refused afterwards, as
    after `flows users password`; the new password opens a new one."""
    from services.cli.demo import _demo_login

    monkeypatch.setenv("DATABASE_URL", fresh_db)
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console:
        first = await _demo_login("201")
        async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
            assert (await console.login(client, "demo.201", first)).status_code == 303
            assert (await client.get(console.url + "/istanze")).status_code == 200
            second = await _demo_login("201")  # `flows demo` run again
            refused = await client.get(console.url + "/istanze")
            assert refused.status_code == 303 and refused.headers["location"].startswith("/login"), refused.text
        assert await console.pool.fetchval("SELECT count(*) FROM console_session WHERE user_name = 'demo.201'") == 0
        async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
            assert (await console.login(client, "demo.201", first)).status_code == 401
            assert (await console.login(client, "demo.201", second)).status_code == 303
            assert (await client.get(console.url + "/istanze")).status_code == 200
        recorded = await auth.user_history(console.pool, "demo.201")
        assert [(r["type"], r["actor"]) for r in recorded] == [("console.user-password-set", "demo"),
                                                               ("console.user-added", "demo")]


def test_api_keys_are_listed_revoked_and_their_issue_and_revocation_recorded_without_the_secret(cli_env) -> None:  # type: ignore[no-untyped-def]
    out = flows("users", "api-key", "sistema-regionale", "--ente", "202", "--ente", "201")
    key = out.strip().splitlines()[-1]
    key_id, secret = key.removeprefix("fk_").split(".")
    assert f"API key {key_id} for sistema-regionale (enti 201, 202)" in " ".join(out.split()), out
    second = flows("users", "api-key", "cruscotto", "--ente", "201").strip().splitlines()[-1]
    second_id = second.removeprefix("fk_").split(".")[0]
    assert "--ente" in flows("users", "api-key", "senza-enti", code=2)  # typer: the option is required
    assert "label" in flows("users", "api-key", " ", "--ente", "201", code=1)
    assert "'2011'" in flows("users", "api-key", "x", "--ente", "2011", code=1)
    assert "--ente 999: not an entity of the platform (known: 201, 202" in " ".join(
        flows("users", "api-key", "x", "--ente", "201", "--ente", "999", code=1).split())

    def listed() -> dict[str, list[str]]:
        lines = flows("users", "api-keys").splitlines()
        cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if "│" in line]
        return {c[0]: c[1:] for c in cells if c and c[0] in (key_id, second_id)}

    keys = listed()
    assert keys[key_id][:2] == ["sistema-regionale", "201, 202"] and keys[key_id][3] == "no", keys
    assert keys[second_id][3] == "no", keys

    assert f"API key {key_id} revoked" in flows("users", "api-key-revoke", key_id)
    keys = listed()
    assert keys[key_id][3] not in ("no", ""), keys  # when it was revoked
    assert keys[second_id][3] == "no", keys
    again = flows("users", "api-key-revoke", f"fk_{key_id}")  # a no-op, as disabling a disabled user: exit 0
    assert f"API key {key_id} is already revoked since {keys[key_id][3]}: nothing changed, nothing recorded" in again
    assert "there is no API key '000000000000'" in flows("users", "api-key-revoke", "000000000000", code=1)
    whole = flows("users", "api-key-revoke", second, code=1)
    assert "not the whole key" in whole and second.split(".")[1] not in whole, whole  # the secret never echoed
    alone = flows("users", "api-key-revoke", second.split(".")[1], code=1)
    assert "12 hexadecimal digits" in alone and second.split(".")[1] not in alone, alone
    assert listed()[second_id][3] == "no"  # refused tries changed nothing

    # The record: issue and revocation by whom, with id, label and enti; with --user api:<id> (the key's name in
    # the access log) only that key's; a user's filter leaves keys out.
    history = flows("users", "history")
    changes = [[c.strip() for c in line.split("│")[1:-1]] for line in history.splitlines() if "api:" in line]
    assert [c[1:4] for c in changes] == [["api-key-revoked", f"api:{key_id}", "cli:tester"],
                                         ["api-key-added", f"api:{second_id}", "cli:tester"],
                                         ["api-key-added", f"api:{key_id}", "cli:tester"]], history
    assert "label sistema-regionale; enti 201, 202" in history
    mine = flows("users", "history", "--user", f"api:{key_id}")
    assert key_id in mine and second_id not in mine, mine
    assert "api:" not in flows("users", "history", "--user", "op.rossi")

    async def recorded() -> tuple[list[asyncpg.Record], list[str]]:
        conn = await asyncpg.connect(cli_env)
        try:
            rows = await conn.fetch("SELECT type, actor, data::text AS data FROM events WHERE stream_id = $1 "
                                    "ORDER BY version", auth.USERS_STREAM)
            hashes = [r["secret_hash"] for r in await conn.fetch("SELECT secret_hash FROM console_api_key")]
            return rows, hashes
        finally:
            await conn.close()

    rows, hashes = asyncio.run(recorded())
    assert [r["type"] for r in rows] == ["console.api-key-added", "console.api-key-added", "console.api-key-revoked"]
    assert {r["actor"] for r in rows} == {"cli:tester"}
    for secret_or_hash in (secret, second.split(".")[1], *hashes):
        assert not any(secret_or_hash in r["data"] for r in rows), rows
    assert [json.loads(r["data"]) for r in rows] == [
        {"key": key_id, "label": "sistema-regionale", "enti": ["201", "202"]},
        {"key": second_id, "label": "cruscotto", "enti": ["201"]}, {"key": key_id}]
    verified = flows("replay", "--all", "--verify")
    assert "replayed 1 stream(s), 3 events" in verified and "every hash chain verifies" in verified, verified


async def test_a_structure_user_added_by_the_cli_sees_its_own_structures_requests_only(fresh_db, tmp_path,  # type: ignore[no-untyped-def]
                                                                                      monkeypatch) -> None:
    """`flows users add NAME --role structure --structure STS11`: the user is bound to its structure, logs in with the
    password the CLI was given, and the console shows it that structure's onboarding requests and no other's (404 on
    another's, as for one that does not exist). --structure is refused for any other role, and required for it."""
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    monkeypatch.setenv("FLOWS_OPERATOR", "tester")
    monkeypatch.setenv("COLUMNS", "220")
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console:
        mine = await console.onboarding_request("ONB-CLI-VESUVIO", "150123")
        theirs = await console.onboarding_request("ONB-CLI-VOMERO", "150321", "Centro Vomero")
        out = await asyncio.to_thread(flows, "users", "add", "lab.vesuvio", "--role", "structure", "--structure",
                                      "150123", "--password-stdin", stdin="la password del laboratorio\n")
        assert "user lab.vesuvio added (structure" in out, out
        refused = await asyncio.to_thread(flows, "users", "add", "op.x", "--role", "operator", "--ente", "201",
                                          "--structure", "150123", "--password-stdin",
                                          stdin="la password del laboratorio\n", code=1)
        assert "--structure is for role structure only" in refused, refused
        missing = await asyncio.to_thread(flows, "users", "add", "lab.x", "--role", "structure", "--password-stdin",
                                          stdin="la password del laboratorio\n", code=1)
        assert "needs --structure" in missing, missing
        row = await console.pool.fetchrow("SELECT role, enti, structure, origin FROM console_user "
                                          "WHERE name = 'lab.vesuvio'")
        assert (row["role"], list(row["enti"]), row["structure"]) == ("structure", [], "150123")
        assert await console.pool.fetchval("SELECT count(*) FROM console_user WHERE name IN ('op.x', 'lab.x')") == 0
        listed = await asyncio.to_thread(flows, "users", "list")
        line = next(line for line in listed.splitlines() if "lab.vesuvio" in line)
        assert "150123" in line and "structure" in line, listed

        async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
            assert (await console.login(client, "lab.vesuvio", "la password del laboratorio")).status_code == 303
            dashboard = await client.get(f"{console.url}/onboarding")
            assert dashboard.status_code == 200
            assert f'href="/onboarding/{mine}"' in dashboard.text
            assert f'href="/onboarding/{theirs}"' not in dashboard.text and "Centro Vomero" not in dashboard.text
            assert (await client.get(f"{console.url}/onboarding/{mine}")).status_code == 200
            assert (await client.get(f"{console.url}/onboarding/{theirs}")).status_code == 404


async def test_disabling_a_disabled_user_or_enabling_an_active_one_says_so_and_records_nothing(  # type: ignore[no-untyped-def]
        fresh_db, tmp_path, monkeypatch) -> None:
    """A second disable (two administrators, a script run twice, a console page left open) used to record a second
    "disabled": the record told the auditor of a change that was none. Now the CLI says the user already is so (exit
    0, as the CLI's other no-ops: `flows audit checkpoint` with nothing new) and the console's page says it in an
    info alert; neither records anything."""
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    monkeypatch.setenv("FLOWS_OPERATOR", "tester")
    monkeypatch.setenv("COLUMNS", "220")

    def cli(*args: str) -> str:  # the CLI runs its own event loop: in a thread, beside the test's
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console:
        await console.add_users()
        await auth.add_user(console.pool, "op.neri", "operator", ["201"], None, "una password lunga", by="test")

        async def recorded() -> list[tuple[str, str]]:
            return [(r["type"], r["actor"]) for r in reversed(await auth.user_history(console.pool, "op.neri"))]

        assert await asyncio.to_thread(cli, "users", "enable", "op.neri") == (
            "user op.neri is already active: nothing changed, nothing recorded")
        assert await asyncio.to_thread(cli, "users", "disable", "op.neri") == (
            "user op.neri disabled; its sessions are closed")
        assert await asyncio.to_thread(cli, "users", "disable", "op.neri") == (
            "user op.neri is already disabled: nothing changed, nothing recorded")
        assert await recorded() == [(auth.USER_ADDED, "test"), (auth.USER_DISABLED, "cli:tester")]

        # The admin's page, sent for a user already so (the page shows no such button, but a page left open while
        # another administrator acted still posts it): said, in an info alert, nothing recorded.
        async with console.client("admin") as client:
            csrf = csrf_of((await client.get(console.url + "/utenti")).text)
            again = await client.post(console.url + "/utenti/op.neri/disabilita", data={"csrf": csrf})
            assert again.status_code == 200, again.text
            assert ('class="alert alert-info" role="status" id="esito">L&#39;utente op.neri è già disattivato: nulla è '
                    "cambiato e nulla è stato registrato.") in again.text, again.text
            enabled = await client.post(console.url + "/utenti/op.neri/riattiva", data={"csrf": csrf})
            assert 'class="alert alert-success" role="status" id="esito">Utente op.neri riattivato.' in enabled.text
            enabled_again = await client.post(console.url + "/utenti/op.neri/riattiva", data={"csrf": csrf})
            assert "L&#39;utente op.neri è già attivo: nulla è cambiato" in enabled_again.text, enabled_again.text
            unknown = await client.post(console.url + "/utenti/nessuno/disabilita", data={"csrf": csrf})
            assert unknown.status_code == 404
        assert await recorded() == [(auth.USER_ADDED, "test"), (auth.USER_DISABLED, "cli:tester"),
                                    (auth.USER_ENABLED, "adm.1")]
        assert await console.pool.fetchval("SELECT disabled FROM console_user WHERE name = 'op.neri'") is False
        assert "user op.neri is already active" in await asyncio.to_thread(cli, "users", "enable", "op.neri")
        assert len(await recorded()) == 3
