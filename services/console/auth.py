"""Local users, server-side sessions, CSRF tokens and the login throttle of the console.

Passwords are argon2id hashes (argon2-cffi's PasswordHasher defaults, RFC 9106 low-memory profile).
A session cookie is 32 random bytes; the database keeps only its SHA-256, so a read of the table
gives nobody a live session. Each session has its own CSRF token, checked on every form.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.loader.catalogue import known_enti
from services.runtime.eventstore import ConcurrencyError, EventStore, NewEvent

ROLES = ("operator", "structure", "desk", "ops", "auditor", "admin")
# The roles that read every ente (Principal.sees_ente, and the SQL that filters a list by what the principal sees).
EVERY_ENTE_ROLES = ("ops", "auditor")
USER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
ENTE = re.compile(r"^[0-9A-Z]{3}$")
_HASHER = PasswordHasher()
# Verified when the user name is unknown, so that a wrong name costs the same time as a wrong password. Written out,
# not hashed at import: an argon2id hash costs 0.1-0.25 s of CPU, and every `flows` command imports this module
# (users, demo). Its parameters are the hasher's own (tests/unit/test_console_auth_hash.py), so verifying it costs
# what verifying a user's hash does.
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$Y6jCsWAQMTkTK8CujIJDzw$WCiipyoCQ334Dsfh0rY5ZpFkJYR0lONSii9qqbdr22o"


class UserInputError(ValueError):
    """A user definition that cannot be stored; the message names the field and the value. `field` and
    `italian` say the same to the console's users page (the CLI prints the message)."""

    def __init__(self, message: str, field: str = "name", italian: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.italian = italian or message


@dataclass(frozen=True)
class Principal:
    """Who is asking: a logged-in user or an API key's machine client."""

    name: str
    role: str
    enti: frozenset[str] = field(default_factory=frozenset)
    structure: str | None = None
    csrf_token: str = ""

    def sees_ente(self, ente: str) -> bool:
        return self.role in EVERY_ENTE_ROLES or (self.role == "operator" and ente in self.enti)

    def acts_on_ente(self, ente: str) -> bool:
        return self.role == "operator" and ente in self.enti


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def _sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def check_user(name: str, role: str, enti: list[str], structure: str | None, password: str) -> None:
    if not USER_NAME.match(name):
        raise UserInputError(f"user name {name!r}: 2-63 characters, lower-case letters, digits, '.', '_', '-'", "name",
                             f"Nome utente {name!r}: da 2 a 63 caratteri tra lettere minuscole, cifre, '.', '_', '-'.")
    if role not in ROLES:
        raise UserInputError(f"--role {role!r}: one of {', '.join(ROLES)}", "role", f"Ruolo {role!r} sconosciuto.")
    check_enti(enti)
    if role == "operator" and not enti:
        raise UserInputError(f"user {name}: an operator needs at least one --ente", "enti",
                             "Un operatore deve avere almeno un ente.")
    if role != "operator" and enti:
        raise UserInputError(f"user {name}: --ente is for operators only, not for role {role}", "enti",
                             "Gli enti si indicano solo per gli operatori.")
    if role == "structure" and not structure:
        raise UserInputError(f"user {name}: a structure user needs --structure (its code)", "structure",
                             "Un utente struttura deve avere il codice della sua struttura.")
    if role != "structure" and structure:
        raise UserInputError(f"user {name}: --structure is for role structure only, not for role {role}",
                             "structure", "La struttura si indica solo per il ruolo struttura.")
    check_password(name, password)


def check_password(name: str, password: str) -> None:
    if len(password) < 12:
        raise UserInputError(f"user {name}: the password must have at least 12 characters", "password",
                             "La password deve avere almeno 12 caratteri.")


# ---------------------------------------------------------------- the record of user administration
# Who added, disabled, enabled a user or set its password, and who issued or revoked an API key, and when: one
# hash-chained stream of the event store (never a password, an API key's secret, nor their hashes), written in the
# same transaction as the change, so no change goes unrecorded. `flows users history` and the auditor's page
# (/accessi) read it; `flows replay --all --verify` verifies it. A user's record has `user`; an API key's has `key`
# (its id) and no user.
USERS_STREAM = "console-users"
USER_ADDED, USER_DISABLED, USER_ENABLED, USER_PASSWORD_SET = (
    "console.user-added", "console.user-disabled", "console.user-enabled", "console.user-password-set")
API_KEY_ADDED, API_KEY_REVOKED = "console.api-key-added", "console.api-key-revoked"
API_KEY_PRINCIPAL = "api:"  # an API key's principal is "api:<key id>": the name the access log records it by


async def _recorded(pool: asyncpg.Pool, conn: asyncpg.Connection, event_type: str, data: dict[str, object],
                    by: str) -> None:
    """Appends the change to USERS_STREAM inside the change's own transaction (`conn`); another administrator's
    change appended meanwhile is waited out (the append's savepoint leaves the transaction usable)."""
    store, event = EventStore(pool, source="/flows/console"), NewEvent(event_type, data, actor=by)
    for attempt in range(20):
        try:
            await store.append(USERS_STREAM, [event], expected_version=None, key=USERS_STREAM, conn=conn,
                               publish=False)
            return
        except ConcurrencyError:
            await asyncio.sleep(0.005 * (attempt + 1))
    subject = data.get("user") or f"API key {data.get('key')}"
    raise RuntimeError(f"the record of user administration could not be written ({event_type}, {subject})")


async def user_history(pool: asyncpg.Pool, user: str | None = None, limit: int = 500) -> list[asyncpg.Record]:
    """The record of user administration, the latest first. `user`: only the changes of that user; an API key's
    records concern no user, so they come with `api:<key id>`, the name the key acts under in the access log (an
    auditor filtering both by the same name sees what the key did and who issued and revoked it)."""
    return await pool.fetch(
        "SELECT recorded_at, type, actor, data FROM events WHERE stream_id = $1 "
        "AND ($2::text IS NULL OR data->>'user' = $2 OR $4 || (data->>'key') = $2) ORDER BY version DESC LIMIT $3",
        USERS_STREAM, user, limit, API_KEY_PRINCIPAL)


async def add_user(pool: asyncpg.Pool, name: str, role: str, enti: list[str], structure: str | None,
                   password: str, *, by: str) -> None:
    """A new local user; `by`: who adds it (an administrator, `cli:<login>`), recorded with it."""
    check_user(name, role, enti, structure, password)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO console_user (name, role, enti, structure, password_hash) "
                               "VALUES ($1, $2, $3, $4, $5)", name, role, sorted(set(enti)), structure,
                               hash_password(password))
            await _recorded(pool, conn, USER_ADDED, {"user": name, "role": role, "enti": sorted(set(enti)),
                                               "structure": structure}, by)
    except asyncpg.UniqueViolationError as exc:
        raise UserInputError(f"user {name!r} already exists", "name", f"L'utente {name!r} esiste già.") from exc


async def set_demo_user(pool: asyncpg.Pool, name: str, ente: str, password: str) -> None:
    """The demo's operator (`flows demo`): created, or given this new password (recorded as done by `demo`). A new
    password closes the user's open sessions, as `set_password` does: a session opened with the password of an
    earlier demo run (printed on a terminal, maybe shared) ends with it. A demo user that was disabled is enabled
    again, and that is recorded too (by `demo`), as `enable_user` records it: the record shows every change."""
    check_user(name, "operator", [ente], None, password)
    async with pool.acquire() as conn, conn.transaction():
        was_disabled = await conn.fetchval("SELECT disabled FROM console_user WHERE name = $1 FOR UPDATE", name)
        added = await conn.fetchval(
            "INSERT INTO console_user (name, role, enti, password_hash) VALUES ($1, 'operator', $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET password_hash = EXCLUDED.password_hash, disabled = false "
            "RETURNING xmax = 0", name, [ente], hash_password(password))
        if added:
            await _recorded(pool, conn, USER_ADDED, {"user": name, "role": "operator", "enti": [ente],
                                                     "structure": None}, "demo")
        else:
            await _close_sessions(conn, name)
            await _recorded(pool, conn, USER_PASSWORD_SET, {"user": name}, "demo")
            if was_disabled:
                await _recorded(pool, conn, USER_ENABLED, {"user": name}, "demo")


async def _close_sessions(conn: asyncpg.Connection, name: str) -> None:
    """Closes every open session of `name`, inside the caller's transaction (a disable, a new password): the next
    request of each is refused, and its open streams end at once (migration 0066's trigger announces each row)."""
    await conn.execute("DELETE FROM console_session WHERE user_name = $1", name)


def _no_user(name: str) -> UserInputError:
    return UserInputError(f"there is no user {name!r}; `flows users list` lists them", "name",
                          f"Non esiste l'utente {name!r}.")


async def disable_user(pool: asyncpg.Pool, name: str, *, by: str) -> bool:
    """Disables `name` and closes its sessions at once; recorded as done `by`. False when it already was disabled:
    nothing changed and nothing is recorded (a second "disabled" in the record told the auditor of a change that
    was none)."""
    return await _set_disabled(pool, name, True, USER_DISABLED, by)


async def enable_user(pool: asyncpg.Pool, name: str, *, by: str) -> bool:
    """A disabled user active again (disabled by mistake, back from leave): it logs in with its own password. False
    when it already was active: nothing changed, nothing recorded."""
    return await _set_disabled(pool, name, False, USER_ENABLED, by)


async def _set_disabled(pool: asyncpg.Pool, name: str, disabled: bool, event_type: str, by: str) -> bool:
    """Sets the user's disabled flag and records the change, only when the flag changes. Two administrators at once:
    the second UPDATE waits for the first's row lock, then finds the flag already set and changes nothing."""
    async with pool.acquire() as conn, conn.transaction():
        done = await conn.execute("UPDATE console_user SET disabled = $2 WHERE name = $1 AND disabled <> $2",
                                  name, disabled)
        if done == "UPDATE 0":
            if await conn.fetchval("SELECT 1 FROM console_user WHERE name = $1", name) is None:
                raise _no_user(name)
            return False
        if disabled:
            await _close_sessions(conn, name)
        await _recorded(pool, conn, event_type, {"user": name}, by)
        return True


async def set_password(pool: asyncpg.Pool, name: str, password: str, *, by: str) -> None:
    """A new password for `name` (forgotten, or maybe known to someone else), stored as an argon2id hash; the
    user's open sessions are closed at once, as with a disable, so a session opened with the old one ends too.
    Recorded as done `by` (the record never holds the password nor its hash)."""
    check_password(name, password)
    async with pool.acquire() as conn, conn.transaction():
        done = await conn.execute("UPDATE console_user SET password_hash = $2 WHERE name = $1", name,
                                  hash_password(password))
        if done == "UPDATE 0":
            raise _no_user(name)
        await _close_sessions(conn, name)
        await _recorded(pool, conn, USER_PASSWORD_SET, {"user": name}, by)


async def list_users(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT name, role, enti, structure, disabled, created_at FROM console_user ORDER BY name")


class Throttled(Exception):
    """Too many failed logins for this user name or address in the window."""


async def authenticate(pool: asyncpg.Pool, name: str, password: str, address: str, *, max_failures: int,
                       window_s: int) -> str | None:
    """The user's name when the password is right; None when not. Raises Throttled before any check
    once the user name (max_failures) or the address (4 x max_failures) failed too often."""
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    by_user, by_address = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE user_name = $1), count(*) FILTER (WHERE address = $2) "
        "FROM console_login_failure WHERE failed_at > $3", name, address, since)
    if by_user >= max_failures or by_address >= 4 * max_failures:
        raise Throttled(name)
    row = await pool.fetchrow("SELECT password_hash FROM console_user WHERE name = $1 AND NOT disabled", name)
    try:
        ok = _HASHER.verify(row["password_hash"] if row else _DUMMY_HASH, password) and row is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if not ok:
        await pool.execute("INSERT INTO console_login_failure (user_name, address) VALUES ($1, $2)", name, address)
        return None
    await pool.execute("DELETE FROM console_login_failure WHERE user_name = $1 OR failed_at < $2", name, since)
    return name


async def open_session(pool: asyncpg.Pool, user: str, ttl_s: int, replaces: str | None = None) -> str:
    """A new session token for `user` (always new: a token set before login is never promoted)."""
    token = secrets.token_urlsafe(32)
    async with pool.acquire() as conn, conn.transaction():
        if replaces:
            await conn.execute("DELETE FROM console_session WHERE token_sha256 = $1", _sha256(replaces))
        await conn.execute("INSERT INTO console_session (token_sha256, user_name, csrf_token, expires_at) "
                           "VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
                           _sha256(token), user, secrets.token_urlsafe(32), float(ttl_s))
    return token


async def close_session(pool: asyncpg.Pool, token: str) -> None:
    await pool.execute("DELETE FROM console_session WHERE token_sha256 = $1", _sha256(token))


SESSION_COLUMNS = ("u.name", "u.role", "u.enti", "u.structure", "s.csrf_token")  # what principal_of reads


def session_sql(token: str) -> str:
    """The live session of the cookie whose SHA-256 is the parameter `token` (e.g. "$1"): its user's name, role,
    enti, structure and the session's CSRF token; no row when the session is unknown, expired or its user
    disabled. Checked in the database on every request (no cache to outlive a logout or a disable); a page that
    needs one more query runs it in the same statement as this one (instance_pages.py: the instance list)."""
    return (f"SELECT {', '.join(SESSION_COLUMNS)} FROM console_session s "
            "JOIN console_user u ON u.name = s.user_name "
            f"WHERE s.token_sha256 = {token} AND s.expires_at > now() AND NOT u.disabled")


def token_sha256(token: str) -> bytes:
    return _sha256(token)


def principal_of(row: asyncpg.Record) -> Principal:
    """The principal of a row of `session_sql`."""
    return Principal(name=row["name"], role=row["role"], enti=frozenset(row["enti"]), structure=row["structure"],
                     csrf_token=row["csrf_token"])


_SESSION = session_sql("$1")


async def session_principal(pool: asyncpg.Pool, token: str) -> Principal | None:
    row = await pool.fetchrow(_SESSION, _sha256(token))
    return None if row is None else principal_of(row)


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(expected) and given is not None and secrets.compare_digest(expected, given)


# ---------------------------------------------------------------- API keys of machine clients
# A key is "fk_<id>.<secret>" with 32 random bytes of secret: the table keeps the SHA-256 of the
# secret (a high-entropy token needs no slow hash), and the enti the key is bound to. Issue and revocation are
# recorded in USERS_STREAM (id, label, enti; never the secret nor its hash); a revoked key is refused at once,
# as the table is read on every request.
API_KEY_ID = re.compile(r"^[0-9a-f]{12}$")
API_KEY_LABEL_MAX = 100


def check_api_key(label: str, enti: list[str]) -> None:
    """A key's label and enti as `flows users api-key` and the console's users page take them: the refusal names
    the field, in English (the CLI) and Italian (the page). An ente must be one the platform knows (those of
    contracts/data/structures.csv, as a load's): a key bound to another could never read nor load anything."""
    if not label.strip() or len(label) > API_KEY_LABEL_MAX or not label.isprintable():
        raise UserInputError(f"API key label {label[:API_KEY_LABEL_MAX]!r}: 1-{API_KEY_LABEL_MAX} printable "
                             "characters, e.g. the client system's name", "label",
                             f"Etichetta: da 1 a {API_KEY_LABEL_MAX} caratteri stampabili, per esempio il nome del "
                             "sistema che userà la chiave.")
    if not enti:
        raise UserInputError(f"API key {label!r}: bind it to at least one --ente", "enti",
                             "Una chiave API deve avere almeno un ente.")
    check_enti(enti)


def check_enti(enti: list[str]) -> None:
    """The enti of an operator or of an API key: each one the platform knows (those of contracts/data/structures.csv,
    as a load's). An operator or a key bound to another could never read nor load anything, and a typo would pass
    unnoticed until someone asked why the list is empty."""
    known = known_enti()
    for ente in enti:
        if not ENTE.match(ente):
            raise UserInputError(f"--ente {ente!r}: an entity code of three digits or capitals, e.g. 201", "enti",
                                 f"Ente {ente!r}: un codice di tre cifre o maiuscole, per esempio 201.")
        if ente not in known:
            raise UserInputError(f"--ente {ente}: not an entity of the platform (known: {', '.join(sorted(known))}; "
                                 "contracts/data/structures.csv)", "enti",
                                 f"Ente {ente} sconosciuto: gli enti della piattaforma sono "
                                 f"{', '.join(sorted(known))}.")


class ApiKeyAlreadyIssued(Exception):
    """The request (the console's form) that asked for a key already issued one: that key's id, label and time of
    issue; never its secret, which was shown once and is not kept."""

    def __init__(self, key_id: str, label: str, created_at: datetime) -> None:
        super().__init__(f"API key {key_id} ({label}) was already issued for this request")
        self.key_id, self.label, self.created_at = key_id, label, created_at


def api_key_secret() -> str:
    """A key's secret: 32 random bytes, URL-safe base64, never beginning with '-'. One in 64 would, and a secret
    pasted alone on a command line (`flows users api-key-revoke <secret>`, a mistake `api_key_id` answers with what
    to give instead) would then be read as an option ("No such option: -k"). Drawn again when it does: the first
    character has 63 values instead of 64 (0.02 of 256 bits)."""
    while (secret := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return secret


async def add_api_key(pool: asyncpg.Pool, label: str, enti: list[str], *, by: str,
                      request_id: str | None = None) -> str:
    """A new key bound to `enti`, returned once (only its secret's SHA-256 is kept); recorded as issued `by`.
    `request_id`: the one-time id of the request asking for it (the console's form, migration 0075); a request
    that already issued a key issues no other: ApiKeyAlreadyIssued names the first. Two at once: the unique index
    makes the second wait for the first, then find its key."""
    check_api_key(label, enti)
    key_id, secret = secrets.token_hex(6), api_key_secret()
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            "INSERT INTO console_api_key (key_id, secret_hash, label, enti, request_id) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (request_id) DO NOTHING RETURNING key_id",
            key_id, _sha256(secret).hex(), label, sorted(set(enti)), request_id)
        if inserted is None:
            first = await conn.fetchrow("SELECT key_id, label, created_at FROM console_api_key WHERE request_id = $1",
                                        request_id)
            if first is None:  # keys are never deleted: the row that conflicted is there
                raise RuntimeError(f"API key request {request_id!r}: taken, yet no key has it")
            raise ApiKeyAlreadyIssued(first["key_id"], first["label"], first["created_at"])
        await _recorded(pool, conn, API_KEY_ADDED, {"key": key_id, "label": label, "enti": sorted(set(enti))}, by)
    return f"fk_{key_id}.{secret}"


def api_key_id(given: str) -> str:
    """The key id an operator gave (`flows users api-keys` shows it; `fk_<id>` is taken too). A whole key (id and
    secret) is refused without being repeated: the message would carry the secret into a terminal's scrollback or
    a log."""
    head, dot, _ = given.partition(".")
    key_id = head.removeprefix("fk_")
    if dot:
        raise UserInputError(f"give the key id ({key_id if API_KEY_ID.match(key_id) else 'see flows users api-keys'})"
                             ", not the whole key: its secret is not needed to revoke it", "key",
                             "Indichi l'identificativo della chiave, non la chiave intera: per revocarla non serve "
                             "il suo segreto.")
    if not API_KEY_ID.match(key_id):
        # A short value is a mistyped id, shown back; a long one may be a secret pasted alone: not repeated.
        shown = repr(given) if len(given) <= 16 else f"of {len(given)} characters"
        mostrato = repr(given) if len(given) <= 16 else f"di {len(given)} caratteri"
        raise UserInputError(f"API key id {shown}: 12 hexadecimal digits, as `flows users api-keys` lists them", "key",
                             f"Identificativo di chiave {mostrato}: 12 cifre esadecimali, come nell'elenco delle "
                             "chiavi.")
    return key_id


@dataclass(frozen=True)
class Revocation:
    """What `revoke_api_key` did: `done` (revoked now, recorded) or not (it already was: nothing changed, nothing
    recorded); `revoked_at`: when the key was revoked (None for a key revoked before the time was kept)."""

    done: bool
    revoked_at: datetime | None


async def revoke_api_key(pool: asyncpg.Pool, key_id: str, *, by: str) -> Revocation:
    """Revokes the key (refused from the next request on, 401 as an unknown key); recorded as done `by`. Already
    revoked (another administrator, a stale page, a command run twice): a no-op, as disabling a disabled user is,
    said by the Revocation (a second record would tell the auditor of a change that was none). Unknown:
    UserInputError naming it."""
    key_id = api_key_id(key_id)
    async with pool.acquire() as conn, conn.transaction():
        revoked_at = await conn.fetchval("UPDATE console_api_key SET revoked = true, revoked_at = now() "
                                         "WHERE key_id = $1 AND NOT revoked RETURNING revoked_at", key_id)
        if revoked_at is None:
            row = await conn.fetchrow("SELECT revoked_at FROM console_api_key WHERE key_id = $1", key_id)
            if row is None:
                raise UserInputError(f"there is no API key {key_id!r}; `flows users api-keys` lists them", "key",
                                     f"Non esiste la chiave API {key_id!r}.")
            return Revocation(False, row["revoked_at"])
        await _recorded(pool, conn, API_KEY_REVOKED, {"key": key_id}, by)
        return Revocation(True, revoked_at)


async def list_api_keys(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Every key, the oldest first: id, label, enti, created_at, revoked, revoked_at (never its secret's hash)."""
    return await pool.fetch("SELECT key_id, label, enti, created_at, revoked, revoked_at FROM console_api_key "
                            "ORDER BY created_at, key_id")


async def api_key_principal(pool: asyncpg.Pool, key: str) -> Principal | None:
    head, _, secret = key.partition(".")
    if not head.startswith("fk_") or not secret:
        return None
    row = await pool.fetchrow("SELECT key_id, secret_hash, enti FROM console_api_key WHERE key_id = $1 "
                              "AND NOT revoked", head[3:])
    if row is None or not secrets.compare_digest(row["secret_hash"], _sha256(secret).hex()):
        return None
    return Principal(name=f"{API_KEY_PRINCIPAL}{row['key_id']}", role="operator", enti=frozenset(row["enti"]))
