"""The pages of the auditor, the operations team and the administrator: the access log, the dead letters and
consumer lag (Esercizio), the users and the API keys (Utenti)."""

from __future__ import annotations

import asyncio
import re
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from fastapi import HTTPException, Response
from fastapi.responses import RedirectResponse

from services.console import auth
from services.console.access import (
    DECIDE_DEAD_LETTER,
    MANAGE_USERS,
    READ_ACCESS_LOG,
    READ_OPS,
    read_access_log,
    record_access,
)
from services.console.labels import GROUP_MARK_LABELS, GROUP_STATE_LABELS, ROLE_LABELS, ROME
from services.console.web import Ctx, console_of, page, pages, route
from services.runtime import deadletters as dl
from services.runtime import ops, outbox

log = structlog.get_logger("console")

# ---------------------------------------------------------------- access log
@route(pages, "GET", "/accessi", READ_ACCESS_LOG, "page")
async def access_log_page(ctx: Ctx, utente: str | None = None, istanza: str | None = None) -> Response:
    request = ctx.request
    istanza = (istanza or "").strip() or None
    # A value that is no instance number is said, not dropped: dropped, the page listed every access as if they were
    # that instance's.
    error = None if istanza is None or istanza.isdigit() else (
        f"Istanza {istanza!r} non valida: indichi il numero dell'istanza (per esempio 1947).")
    pool = console_of(request).pool
    rows = [] if error else await read_access_log(pool, utente or None, int(istanza) if istanza else None)
    # the record of user administration (auth.USERS_STREAM): the changes of the user asked for, or all; an API key's
    # issue and revocation come with its access-log name, api:<key id> (auth.user_history)
    changes = await auth.user_history(pool, utente or None, limit=200)
    return page(ctx, "access_log.html", "Registro degli accessi", active="/accessi", rows=rows, utente=utente,
                istanza=istanza, changes=changes, change_labels=USER_CHANGE_LABELS, error=error)


USER_CHANGE_LABELS = {auth.USER_ADDED: "aggiunto", auth.USER_DISABLED: "disattivato",
                      auth.USER_ENABLED: "riattivato", auth.USER_PASSWORD_SET: "nuova password",
                      auth.API_KEY_ADDED: "chiave API emessa", auth.API_KEY_REVOKED: "chiave API revocata"}


# ---------------------------------------------------------------- Esercizio (ops): dead letters, consumer lag
# The same functions as `flows dlq` and `flows lag` (services/runtime/deadletters.py, ops.py).
KAFKA_WAIT_S = 20
KAFKA_DOWN = "Kafka non risponde entro {s} secondi: i dati di esercizio non sono disponibili ora. Riprovi più tardi."


def _decision_text(event: Any) -> str:
    what = "rilanciato" if event.type == dl.REDRIVEN else "scartato"
    return f"{what} da {event.actor} il {event.recorded_at.astimezone(ROME):%d/%m/%Y %H:%M:%S}"


@route(pages, "GET", "/esercizio", READ_OPS, "page")
async def ops_page(ctx: Ctx) -> Response:
    """Per `.dlq` topic: dead letters and those still pending; the outbox rows the relay parked; per consumer group
    and partition: the lag."""
    console = console_of(ctx.request)
    topics: list[dict[str, Any]] = []
    consumer_groups: list[ops.GroupLag] = []
    error = None
    try:
        async with asyncio.timeout(KAFKA_WAIT_S):
            found = await dl.dlq_topics(console.settings.kafka_bootstrap)
            decided = await dl.decisions(console.store)
            consumer_groups = await ops.consumer_groups(console.settings.kafka_bootstrap)
    except (TimeoutError, KafkaError, OSError):
        error = KAFKA_DOWN.format(s=KAFKA_WAIT_S)
    else:
        for t in found:
            if t.count:
                done = sum(1 for letter_id in decided if t.holds(letter_id))
                topics.append({"topic": t.topic, "count": t.count, "pending": max(t.count - done, 0)})
    # Per group, as `flows lag` shows it: Kafka's state and members beside the offsets, so that a group whose service
    # is stopped (offsets committed, no member) does not look like an idle healthy one.
    groups: dict[str, dict[str, Any]] = {}
    lags: list[tuple[ops.Lag, str | None]] = []  # each partition with the member holding it
    for g in consumer_groups:
        last = max((p.last_commit for p in g.partitions if p.last_commit), default=None)
        mark = g.mark()
        groups[g.group] = {"partitions": len(g.partitions), "lag": g.lag, "last": last,
                           "state": GROUP_STATE_LABELS.get(g.described.state, g.described.state),
                           "members": [m.name for m in g.described.members],
                           "mark": GROUP_MARK_LABELS.get(mark, mark) if mark else None, "urgent": bool(mark and g.lag)}
        for p in g.partitions:
            holder = g.described.holder(p.topic, p.partition)
            lags.append((p, holder.name if holder else None))
    # The parked outbox rows (`flows outbox parked`): PostgreSQL's, shown whether Kafka answers or not. What to do about
    # each stays in the CLI, which the page names.
    parked = await outbox.parked_rows(console.pool)
    oldest = min((row["parked_at"] for row in parked), default=None)
    return page(ctx, "ops.html", "Esercizio: messaggi non elaborabili, eventi fermi e ritardo dei consumatori",
                active="/esercizio", topics=topics, groups=groups, lags=lags, error=error, parked=parked,
                oldest_parked=oldest)


@route(pages, "GET", "/esercizio/scarti", READ_OPS, "page")
async def dead_letters_page(ctx: Ctx, coda: str | None = None, da_decidere: bool = False) -> Response:
    """The dead letters of one `.dlq` topic (or of all), oldest first, with what was decided about each."""
    console = console_of(ctx.request)
    rows: list[dict[str, Any]] = []
    error = None
    try:
        async with asyncio.timeout(KAFKA_WAIT_S):
            letters = await dl.list_letters(console.settings.kafka_bootstrap, coda or None)
    except (TimeoutError, KafkaError, OSError):
        error, letters = KAFKA_DOWN.format(s=KAFKA_WAIT_S), []
    decided = await dl.decisions(console.store)
    for letter in letters:
        decision = decided.get(letter.id)
        if da_decidere and decision is not None:
            continue
        rows.append({"letter": letter, "status": _decision_text(decision) if decision else "da decidere"})
    if rows:
        # a reason quotes the value a service refused (`patient_cf: ... (got '...')`): a list of them is a read of
        # personal data, recorded as `flows dlq list` records it (services/cli/personal.py)
        await record_access(console.store, ctx.principal, "dead-letter-list", None, ctx.address,
                            {"topic": dl.dlq_topic(coda) if coda else None})
    title = f"Messaggi non elaborabili di {dl.dlq_topic(coda)}" if coda else "Messaggi non elaborabili"
    return page(ctx, "dead_letters.html", title, active="/esercizio", rows=rows, coda=coda or "",
                da_decidere=da_decidere, error=error)


async def _letter(ctx: Ctx, letter: str) -> dl.DeadLetter:
    """The dead letter the path names, or 404 (a malformed id, a topic, partition or offset that does not exist)."""
    try:
        dl.parse_id(letter)
    except ValueError:
        raise HTTPException(404) from None
    try:
        async with asyncio.timeout(KAFKA_WAIT_S):
            return await dl.fetch(console_of(ctx.request).settings.kafka_bootstrap, letter)
    except ValueError:
        raise HTTPException(404) from None
    except (TimeoutError, KafkaError, OSError):
        raise HTTPException(503, KAFKA_DOWN.format(s=KAFKA_WAIT_S)) from None


async def _letter_page(ctx: Ctx, letter: dl.DeadLetter, status: int = 200, message: str | None = None,
                       level: str = "info") -> Response:
    console = console_of(ctx.request)
    # A dead letter's body is a message as it was sent: a source record names its patient, so showing it
    # is a view of personal data, recorded like a file view.
    await record_access(console.store, ctx.principal, "dead-letter-view", None, ctx.address,
                        {"dead_letter": letter.id, "topic": letter.original_topic})
    decision = await dl.decision_about(console.store, letter.id)
    return page(ctx, "dead_letter.html", f"Messaggio non elaborabile {letter.id}", status=status, active="/esercizio",
                letter=letter, decision=decision, decision_text=_decision_text(decision) if decision else None,
                can_decide=ctx.principal.role in DECIDE_DEAD_LETTER.roles and decision is None,
                message=message, level=level)


@route(pages, "GET", "/esercizio/scarti/{letter}", READ_OPS, "page")
async def dead_letter_page(ctx: Ctx, letter: str) -> Response:
    """One dead letter: its reason, where it came from, its original headers and body, its decision."""
    return await _letter_page(ctx, await _letter(ctx, letter))


def _refused(letter_id: str, exc: dl.AlreadyDecided) -> str:
    done = (f"è già stato {_decision_text(exc.decision)}" if exc.decision
            else "è appena stato trattato da un altro utente")
    return (f"Il messaggio {letter_id} {done}: un messaggio non elaborabile si rilancia o si scarta una volta sola. "
            "Nessuna nuova azione è stata eseguita.")


# Why a dead letter cannot be redriven (deadletters.NotRedrivable's cause), as the page says it.
_NOT_REDRIVABLE = {
    "no-key": "non ha una chiave, e il suo argomento è partizionato per chiave",
    "not-json": "il suo contenuto non è JSON: nessun consumatore potrebbe leggerlo",
    "corrupt-batch": "è un blocco di record danneggiato su un broker, non un messaggio: i suoi record vanno inviati "
                     "di nuovo da chi li ha prodotti",
}


@route(pages, "POST", "/esercizio/scarti/{letter}/rilancia", DECIDE_DEAD_LETTER, "action")
async def dead_letter_redrive(ctx: Ctx, letter: str) -> Response:
    """Re-publishes the message to its original topic (original key, a new ce id) once; the user is the actor."""
    found = await _letter(ctx, letter)
    console = console_of(ctx.request)
    try:
        await dl.redrive(console.pool, console.store, found, ctx.principal.name)
    except dl.AlreadyDecided as exc:
        return await _letter_page(ctx, found, 409, _refused(found.id, exc), "danger")
    except dl.NotRedrivable as exc:
        why = _NOT_REDRIVABLE.get(exc.cause, _NOT_REDRIVABLE["not-json"])
        return await _letter_page(ctx, found, 409, f"Il messaggio {found.id} non si può rilanciare: {why}. "
                                                   "Lo scarti indicandone il motivo.", "danger")
    return RedirectResponse(f"/esercizio/scarti/{urllib.parse.quote(found.id, safe='')}", status_code=303)


@route(pages, "POST", "/esercizio/scarti/{letter}/scarta", DECIDE_DEAD_LETTER, "action")
async def dead_letter_discard(ctx: Ctx, letter: str) -> Response:
    """Marks the message as not to be processed, with the reason; the user is the actor."""
    found = await _letter(ctx, letter)
    reason = str((await ctx.request.form()).get("motivo") or "").strip()
    if not reason:
        return await _letter_page(ctx, found, 422, "Indichi il motivo per cui il messaggio va scartato.", "danger")
    try:
        await dl.discard(console_of(ctx.request).store, found.id, found.original_topic, reason, ctx.principal.name)
    except dl.AlreadyDecided as exc:
        return await _letter_page(ctx, found, 409, _refused(found.id, exc), "danger")
    return RedirectResponse(f"/esercizio/scarti/{urllib.parse.quote(found.id, safe='')}", status_code=303)


# ---------------------------------------------------------------- Utenti (admin)
# The same functions as `flows users add|list|disable|password` and `flows users api-key|api-keys|api-key-revoke`
# (services/console/auth.py): the same checks, the same records in the `console-users` stream, by the admin's name.
USER_FIELDS = ("name", "role", "enti", "structure", "password")


def _enti_field(text: str) -> list[str]:
    """The enti typed in a form's field, separated by spaces or commas (upper-cased: codes like 9A1)."""
    return [e.upper() for e in text.replace(",", " ").split()]


async def _users_page(ctx: Ctx, status: int = 200, form: dict[str, str] | None = None,
                      errors: dict[str, str] | None = None, message: str | None = None,
                      reset: dict[str, str] | None = None, reset_errors: dict[str, str] | None = None,
                      key_form: dict[str, str] | None = None, key_errors: dict[str, str] | None = None,
                      revoke_error: str | None = None, issued: dict[str, Any] | None = None,
                      repeated: str | None = None, level: str = "success") -> Response:
    """The users page: the users and the API keys, each with its forms. `issued`: a key just issued, whose whole
    key (with its secret) this answer shows, the only time it is ever shown. `repeated`: why a key form sent
    again issued nothing. `level`: the alert's colour for `message` (info: nothing was done). Every rendering gives
    the key form a new one-time request id (KEY_REQUEST)."""
    pool = console_of(ctx.request).pool
    users, keys = await auth.list_users(pool), await auth.list_api_keys(pool)
    return page(ctx, "users.html", "Utenti della console", status=status, active="/utenti", users=users,
                roles=auth.ROLES, form=form or {"name": "", "role": "operator", "enti": "", "structure": ""},
                errors=errors or {}, message=message, level=level, reset=reset or {"name": ""},
                reset_errors=reset_errors or {},
                keys=keys, key_form=key_form or {"label": "", "enti": ""}, key_errors=key_errors or {},
                revoke_error=revoke_error, issued=issued, repeated=repeated, label_max=auth.API_KEY_LABEL_MAX,
                key_request=secrets.token_urlsafe(KEY_REQUEST_BYTES))


@route(pages, "GET", "/utenti", MANAGE_USERS, "page")
async def users_page(ctx: Ctx) -> Response:
    return await _users_page(ctx)


@route(pages, "POST", "/utenti", MANAGE_USERS, "action")
async def user_add(ctx: Ctx) -> Response:
    """A local user, checked and stored by auth.add_user (argon2id), as `flows users add`. The password
    the administrator types is never shown back nor logged."""
    raw = await ctx.request.form()
    form = {k: str(raw.get(k) or "").strip() for k in ("name", "role", "enti", "structure")}
    password = str(raw.get("password") or "")
    enti = _enti_field(form["enti"])
    try:
        await auth.add_user(console_of(ctx.request).pool, form["name"], form["role"], enti, form["structure"] or None,
                            password, by=ctx.principal.name)
    except auth.UserInputError as exc:
        return await _users_page(ctx, 422, form, {exc.field: exc.italian})
    return await _users_page(ctx, message=f"Utente {form['name']} aggiunto ({ROLE_LABELS[form['role']]}).")


@route(pages, "POST", "/utenti/{user}/disabilita", MANAGE_USERS, "action")
async def user_disable(ctx: Ctx, user: str) -> Response:
    """Disables the user and closes its sessions at once (auth.disable_user, as `flows users disable`)."""
    if user == ctx.principal.name:
        raise HTTPException(409, "Non può disattivare il suo stesso utente: lo chieda a un altro amministratore.")
    return await _changed_user(ctx, user, auth.disable_user, f"Utente {user} disattivato; le sue sessioni sono chiuse.",
                               f"L'utente {user} è già disattivato: nulla è cambiato e nulla è stato registrato.")


@route(pages, "POST", "/utenti/{user}/riattiva", MANAGE_USERS, "action")
async def user_enable(ctx: Ctx, user: str) -> Response:
    """A disabled user active again (auth.enable_user, as `flows users enable`): it logs in with its own password."""
    return await _changed_user(ctx, user, auth.enable_user, f"Utente {user} riattivato.",
                               f"L'utente {user} è già attivo: nulla è cambiato e nulla è stato registrato.")


async def _changed_user(ctx: Ctx, user: str, change: Callable[..., Awaitable[bool]], message: str,
                        unchanged: str) -> Response:
    """An administrator's change of `user` (one of auth's, recorded as done by the administrator); the users page
    with `message`, or `unchanged` when the user already was so (a page left open while another administrator
    acted: nothing recorded), or 404 for a user that does not exist."""
    try:
        changed = await change(console_of(ctx.request).pool, user, by=ctx.principal.name)
    except auth.UserInputError:
        raise HTTPException(404) from None
    return await _users_page(ctx, message=message if changed else unchanged, level="success" if changed else "info")


@route(pages, "POST", "/utenti/password", MANAGE_USERS, "action")
async def user_password(ctx: Ctx) -> Response:
    """A new password the administrator gives a user (auth.set_password, as `flows users password`): stored as an
    argon2id hash, never shown back nor logged; the user's open sessions are closed. The user is a field of the
    form (a select of the users): no script needed."""
    raw = await ctx.request.form()
    user, password = str(raw.get("name") or "").strip(), str(raw.get("password") or "")
    try:
        await auth.set_password(console_of(ctx.request).pool, user, password, by=ctx.principal.name)
    except auth.UserInputError as exc:
        return await _users_page(ctx, 422, reset={"name": user}, reset_errors={exc.field: exc.italian})
    return await _users_page(ctx, message=f"Nuova password impostata per {user}; le sue sessioni sono chiuse.")


# The key form's one-time request id: random, made when the page is rendered, kept with the key it issues
# (auth.add_api_key, migration 0075). The same form sent again (a refresh of the answer re-sends the POST; a double
# click; a browser restoring the form on Back) issues nothing: the answer names the key it issued, whose secret was
# shown once.
KEY_REQUEST_BYTES = 16
KEY_REQUEST = re.compile(r"^[A-Za-z0-9_-]{22}$")  # secrets.token_urlsafe(KEY_REQUEST_BYTES)
KEY_REQUEST_MISSING = ("Il modulo non ha il suo identificativo (una pagina di una versione precedente?): invii di "
                       "nuovo il modulo qui sotto.")


@route(pages, "POST", "/utenti/chiavi", MANAGE_USERS, "action")
async def api_key_add(ctx: Ctx) -> Response:
    """A new API key for a regional system, bound to its enti (auth.add_api_key, as `flows users api-key`; recorded
    as issued by the administrator). The whole key is in this answer only: not a redirect (a URL would carry it),
    no-store like every answer, never logged, never in the record (which has its id, label and enti). One form
    issues one key at most: sent again, it answers 409 naming the key it issued, without any secret."""
    raw = await ctx.request.form()
    form = {k: str(raw.get(k) or "").strip() for k in ("label", "enti")}
    request_id = str(raw.get("request") or "")
    enti = _enti_field(form["enti"])
    if not KEY_REQUEST.match(request_id):
        return await _users_page(ctx, 422, key_form=form, key_errors={"request": KEY_REQUEST_MISSING})
    try:
        key = await auth.add_api_key(console_of(ctx.request).pool, form["label"], enti, by=ctx.principal.name,
                                     request_id=request_id)
    except auth.UserInputError as exc:
        return await _users_page(ctx, 422, key_form=form, key_errors={exc.field: exc.italian})
    except auth.ApiKeyAlreadyIssued as exc:
        return await _users_page(ctx, 409, repeated=(
            f"Questo modulo ha già emesso la chiave API {exc.key_id} per {exc.label} il "
            f"{exc.created_at.astimezone(ROME):%d/%m/%Y %H:%M}: nessuna nuova chiave è stata emessa. La chiave intera "
            "è stata mostrata una sola volta, nella risposta a quell'invio, e non può essere mostrata di nuovo (la "
            f"console ne conserva solo l'impronta). Se non è stata copiata, revochi la chiave {exc.key_id} e ne "
            "emetta un'altra con il modulo qui sotto."))
    key_id = key.partition(".")[0].removeprefix("fk_")
    enti = sorted(set(enti))
    return await _users_page(ctx, message=f"Chiave API {key_id} emessa per {form['label']} (enti {', '.join(enti)}).",
                             issued={"id": key_id, "label": form["label"], "enti": enti, "key": key})


@route(pages, "POST", "/utenti/chiavi/revoca", MANAGE_USERS, "action")
async def api_key_revoke(ctx: Ctx) -> Response:
    """Revokes the key whose id the form carries (auth.revoke_api_key, as `flows users api-key-revoke`; recorded as
    done by the administrator): the API answers 401 to it from the next request on. An unknown id or a whole key
    given is refused, said above the keys' table (a whole key or a long value is never repeated: it may be a
    secret). A key already revoked (another administrator, a stale page) is what was asked: said as information,
    nothing recorded."""
    given = str((await ctx.request.form()).get("key") or "").strip()
    try:
        key_id = auth.api_key_id(given)
        revocation = await auth.revoke_api_key(console_of(ctx.request).pool, key_id, by=ctx.principal.name)
    except auth.UserInputError as exc:
        return await _users_page(ctx, 422, revoke_error=exc.italian)
    if not revocation.done:
        since = f" dal {revocation.revoked_at.astimezone(ROME):%d/%m/%Y %H:%M}" if revocation.revoked_at else ""
        return await _users_page(ctx, message=f"La chiave API {key_id} era già revocata{since}: nulla è cambiato.",
                                 level="info")
    return await _users_page(ctx, message=f"Chiave API {key_id} revocata: l'API la rifiuta da ora.")


