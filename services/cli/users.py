"""`flows users add|list|disable|enable|password|history|api-key|api-keys|api-key-revoke` (the console's local
users, the API keys of machine clients, and the record of their administration) and `flows access-log` (who viewed
or downloaded personal data, in the console or with a `flows` command)."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import asyncpg
import typer

from contracts.deadlines import italian_time
from services.cli.common import (
    UserError,
    console,
    database,
    interactive,
    operator_name,
    run,
    table,
    user_errors,
)
from services.console import auth
from services.console.access import access_detail, read_access_log
from services.runtime.migrations import migrate

T = TypeVar("T")
users_app = typer.Typer(help="The console's users (local accounts) and API keys.", no_args_is_help=True)


def _password(name: str, from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not interactive():
        raise UserError("--password-stdin is needed when not on a terminal (the password is never an argument)")
    first = getpass.getpass(f"password for {name}: ")
    if getpass.getpass("again: ") != first:
        raise UserError("the two passwords differ")
    return first


def _by() -> str:
    """Who administers users from the shell, as the record of user administration names them."""
    return f"cli:{operator_name()}"


def _with_users(work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Runs `work` on the migrated database; the console's refusals become one clear line."""
    async def go() -> T:
        async with database() as pool:
            await migrate(pool)
            return await work(pool)

    try:
        return run(go())
    except auth.UserInputError as exc:
        raise UserError(str(exc)) from exc


@users_app.command("add")
@user_errors
def users_add(name: str,
              role: Annotated[str, typer.Option(help=" | ".join(auth.ROLES))],
              ente: Annotated[list[str] | None, typer.Option(help="an operator's entity (repeatable)")] = None,
              structure: Annotated[str | None, typer.Option(help="private structure code (role structure)")] = None,
              password_stdin: Annotated[bool, typer.Option(help="read the password from standard input")] = False,
              ) -> None:
    """Add a console user; the password is asked (or read from stdin) and stored as an argon2id hash."""
    try:
        auth.check_user(name, role, ente or [], structure, "x" * 12)
    except auth.UserInputError as exc:
        raise UserError(str(exc)) from exc
    password = _password(name, password_stdin)

    _with_users(lambda pool: auth.add_user(pool, name, role, ente or [], structure, password, by=_by()))
    console.print(f"user [bold]{name}[/] added ({role}{': enti ' + ', '.join(ente) if ente else ''})")


@users_app.command("list")
@user_errors
def users_list() -> None:
    """The console's users (never their password hashes)."""
    users = _with_users(auth.list_users)
    console.print(table("Console users", ["name", "role", "enti", "structure", "state", "created"],
                        [(r["name"], r["role"], ", ".join(r["enti"]), r["structure"],
                          "disabled" if r["disabled"] else "active", italian_time(r["created_at"], "%Y-%m-%d"))
                         for r in users]))


@users_app.command("disable")
@user_errors
def users_disable(name: str) -> None:
    """Disable a user and end its sessions at once."""
    if _with_users(lambda pool: auth.disable_user(pool, name, by=_by())):
        console.print(f"user {name} disabled; its sessions are closed")
    else:  # a no-op, as `flows audit checkpoint` with nothing new: said, exit 0, nothing recorded
        console.print(f"user {name} is already disabled: nothing changed, nothing recorded")


@users_app.command("enable")
@user_errors
def users_enable(name: str) -> None:
    """Make a disabled user active again (it logs in with its own password)."""
    if _with_users(lambda pool: auth.enable_user(pool, name, by=_by())):
        console.print(f"user {name} enabled")
    else:
        console.print(f"user {name} is already active: nothing changed, nothing recorded")


@users_app.command("password")
@user_errors
def users_password(name: str,
                   password_stdin: Annotated[bool, typer.Option(help="read the password from standard input")] = False,
                   ) -> None:
    """Set a new password for a user (asked, or read from stdin; stored as an argon2id hash); its sessions end."""
    password = _password(name, password_stdin)
    _with_users(lambda pool: auth.set_password(pool, name, password, by=_by()))
    console.print(f"user {name}: new password set; its sessions are closed")


@users_app.command("history")
@user_errors
def users_history(user: Annotated[str | None, typer.Option(help="only the changes of this user")] = None,
                  limit: Annotated[int, typer.Option()] = 500) -> None:
    """Who added, disabled, enabled a user or set its password, who issued or revoked an API key, and when (the
    latest first; never a password nor a key's secret). An API key is named api:<key id>, as in the access log."""
    rows = _with_users(lambda pool: auth.user_history(pool, user, limit))
    console.print(table("Console user administration", ["when", "change", "user or key", "by", "details"],
                        [(italian_time(r["recorded_at"]), r["type"].removeprefix("console."),
                          _subject(r["data"]), r["actor"], _details(r["data"])) for r in rows]))


def _subject(data: dict[str, object]) -> str:
    """The user a record is about, or the API key as the access log names it (api:<key id>)."""
    return str(data["user"]) if data.get("user") else f"{auth.API_KEY_PRINCIPAL}{data['key']}"


def _details(data: dict[str, object]) -> str:
    """A user's role, enti and structure as recorded at its creation, an API key's label and enti at its issue ('' for
    the other changes)."""
    values = ((k, data.get(k)) for k in ("role", "label", "enti", "structure"))
    return "; ".join(f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in values if v)


@users_app.command("api-key")
@user_errors
def users_api_key(label: str,
                  ente: Annotated[list[str], typer.Option(help="an entity the key may read and act on (repeatable)")],
                  ) -> None:
    """A new API key for a machine client, bound to its enti; printed once, stored hashed; its issue is recorded."""
    key = _with_users(lambda pool: auth.add_api_key(pool, label, ente, by=_by()))
    key_id = key.partition(".")[0].removeprefix("fk_")
    console.print(f"API key {key_id} for {label} (enti {', '.join(sorted(set(ente)))}); it is shown only now:")
    print(key)


@users_app.command("api-keys")
@user_errors
def users_api_keys() -> None:
    """The API keys: id, label, enti, when issued, whether and when revoked (never a secret nor its hash)."""
    keys = _with_users(auth.list_api_keys)
    console.print(table("API keys", ["id", "label", "enti", "created", "revoked"],
                        [(r["key_id"], r["label"], ", ".join(r["enti"]),
                          italian_time(r["created_at"], "%Y-%m-%d %H:%M"), _revoked(r)) for r in keys]))
    if not keys:
        console.print("no API key yet (`flows users api-key LABEL --ente E` issues one)")


def _revoked(row: asyncpg.Record) -> str:
    if not row["revoked"]:
        return "no"
    return italian_time(row["revoked_at"], "%Y-%m-%d %H:%M") if row["revoked_at"] else "yes"


@users_app.command("api-key-revoke")
@user_errors
def users_api_key_revoke(key_id: Annotated[str, typer.Argument(help="the key's id, as `flows users api-keys` "
                                                                     "lists it (not the key itself)")]) -> None:
    """Revoke an API key (leaked, or its client retired): the API refuses it from the next request on; recorded."""
    try:
        key_id = auth.api_key_id(key_id)
    except auth.UserInputError as exc:
        raise UserError(str(exc)) from exc
    revocation = _with_users(lambda pool: auth.revoke_api_key(pool, key_id, by=_by()))
    if revocation.done:
        console.print(f"API key {key_id} revoked: the API refuses it from now on")
    else:  # a no-op, as disabling a disabled user: said, exit 0, nothing recorded
        since = f" since {italian_time(revocation.revoked_at, '%Y-%m-%d %H:%M')}" if revocation.revoked_at else ""
        console.print(f"API key {key_id} is already revoked{since}: nothing changed, nothing recorded")


@user_errors
def access_log(user: Annotated[str | None, typer.Option(help="only this user's accesses (a command's reader: "
                                                              "cli:<name>)")] = None,
               instance: Annotated[int | None, typer.Option(help="only accesses to this instance")] = None,
               limit: Annotated[int, typer.Option()] = 500) -> None:
    """Who viewed or downloaded personal data, in the console or with a `flows` command: when,
    what, from where."""
    async def rows() -> list:
        async with database() as pool:
            return await read_access_log(pool, user, instance, limit)

    found = run(rows())
    console.print(table("Access log", ["time", "user", "role", "channel", "what", "instance", "detail", "address"],
                        [(italian_time(r["recorded_at"]), r["data"]["user"], r["data"]["role"] or "-",
                          r["data"].get("channel") or "console", r["data"]["what"], r["data"]["instance"],
                          access_detail(r["data"]), r["data"]["address"]) for r in found]))
    if not found:
        console.print("no access recorded for this filter")
