"""The authorization matrix, generated from the console's route table: every route x every role x
an instance of the user's own ente (201) and of another (202), on the real app, PostgreSQL and Kafka.

Denied answers 404 (page, download, stream, action, API alike) whether the object exists or not;
allowed answers what the route does. A route added without a rule fails `test_every_route_has_a_rule`
(and the app refuses to start), and a rule this matrix does not know how to exercise fails the matrix.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, FastAPI

from services.console import web as console_web
from services.console.access import ROUTE_TABLE, RouteRule, check_every_route_has_a_rule
from services.console.auth import ROLES, add_user
from services.formatter.layouts import LayoutRegistry
from tests.console_support import PASSWORD, ROLE_USERS, STRUCTURE, RunningConsole, csrf_of
from tests.stack_urls import KAFKA

MISSING_LETTER = "flows.load-requested.dlq:0:999999999"
VICTIM, NOBODY = "vittima.1", "nessuno.tale"  # the user the admin's disable route acts on; one that does not exist
DOCUMENT = "suap-authorisation-5d07f8af1f"  # the same bytes in the same slot: the same id in both requests
# a layout of the folder, whose page (/tipi-di-flusso/{tipo}/{versione}) the readers of instances see
LAYOUT = next((f, v) for f, v in LayoutRegistry().available() if f == "FLUSSO_C")

pytestmark = pytest.mark.integration

FEEDBACK = b"record_key;field;code;severity;message\nS1@P1/01;patient_cf;CF_CHECK_CHAR;warning;RSSMRA80A01H501U\n"


# Where "/" sends each role.
LANDING = {"operator": "/istanze", "ops": "/istanze", "auditor": "/istanze", "desk": "/onboarding",
           "structure": "/onboarding", "admin": "/utenti"}


async def _waiting_feedback_instance(c: RunningConsole, ente: str) -> int:
    """An instance with a feedback and a file, in Waiting feedback: no action is allowed in that state,
    so an allowed action answers 409 and sends nothing."""
    feedback = c.file_ref("esito.csv", "feedback", FEEDBACK, 1, "text/csv")
    errors = c.file_ref("errori.csv", "ts-errors", FEEDBACK, 1, "text/csv")
    return await c.instance(ente, [
        ("flows.load-checked", {"source_instance": 1, "counts": {"services": 1}, "warnings": 1, "feedback": feedback}),
        ("flows.formatting-started", {}),
        ("flows.formatted", {"files": [errors]}),
        ("flows.ts-submitted", {"part": 1, "parts": 1, "protocollo": "P1"}),
    ])


async def _keyless_dead_letter() -> str:
    """A dead letter as a consumer writes one, but without a key: the ops routes can read it, and an
    allowed redrive is refused (409: a keyed topic's message without its key) so nothing is re-published."""
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA)
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            "flows.load-requested.dlq", b'{"not": "a load request"}', partition=0,
            headers=[("dlq_reason", b"authz matrix probe"), ("dlq_original_topic", b"flows.load-requested"),
                     ("ce_id", str(uuid.uuid4()).encode())])
    finally:
        await producer.stop()
    return f"flows.load-requested.dlq:0:{meta.offset}"


def test_every_route_has_a_rule() -> None:
    probe = FastAPI(docs_url=None, redoc_url=None)
    probe.include_router(console_web.pages)
    probe.include_router(console_web.api)
    # The table as it is: passes, having checked every route of the table (those of the included routers: FastAPI
    # keeps an included router as one entry of the app's routes, and a walk of that list alone checked none).
    assert check_every_route_has_a_rule(probe.routes) == len(ROUTE_TABLE)

    # A route declared on a router the app includes, as the console's own are, without `route(...)`: refused.
    extra = APIRouter()

    @extra.post("/utenti/chiavi/nuova-azione-senza-regola")
    async def unguarded_action() -> dict[str, str]:
        return {}

    included = FastAPI(docs_url=None, redoc_url=None)
    included.include_router(console_web.pages)
    included.include_router(extra, prefix="/dentro")
    with pytest.raises(RuntimeError, match="POST /dentro/utenti/chiavi/nuova-azione-senza-regola has no "
                                           "authorization rule"):
        check_every_route_has_a_rule(included.routes)

    @probe.get("/istanze/{instance}/nuova-pagina-senza-regola")
    async def unguarded() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="nuova-pagina-senza-regola has no authorization rule"):
        check_every_route_has_a_rule(probe.routes)


def _allowed(route: RouteRule, role: str, own: bool) -> bool:
    rule = route.rule
    if role not in rule.roles:
        return False
    if rule.scope == "instance":
        return own or role in ("ops", "auditor")
    if rule.scope == "act":
        return own
    if rule.scope == "request":
        return own or role != "structure"
    return True


async def _call(client: httpx.AsyncClient, c: RunningConsole, route: RouteRule, target: int | str, own: bool,
                csrf: str) -> tuple[int, str]:
    path = route.path.replace("{instance}", str(target)).replace("{name}", "errori.csv").replace("{request}",
                                                                                                  str(target))
    path = path.replace("{letter}", str(target)).replace("{document}", DOCUMENT).replace("{user}", str(target))
    path = path.replace("{tipo}", LAYOUT[0]).replace("{versione}", LAYOUT[1])
    url = c.url + path
    if route.kind == "stream":
        async with client.stream("GET", url) as response:
            first = b""
            if response.status_code == 200:
                async for chunk in response.aiter_bytes():
                    first = chunk
                    break
            return response.status_code, first.decode()
    if route.method == "GET":
        response = await client.get(url)
        return response.status_code, response.text
    data: dict[str, Any] = {"csrf": csrf}
    if route.path == "/istanze/nuova":
        # Own ente with a period that ends before it starts (refused at the field, nothing sent);
        # the other ente: refused at the ente field.
        data.update(tipo="FLUSSO_C", ente="201" if own else "202", dal="2026-10-31", al="2026-10-01")
    response = await client.post(url, data=data)
    return response.status_code, response.text


async def test_every_route_every_role_own_and_other_entity(console: RunningConsole) -> None:
    own = await _waiting_feedback_instance(console, "201")
    other = await _waiting_feedback_instance(console, "202")
    missing = other + 1000
    own_request = await console.onboarding_request("ONB-OWN", STRUCTURE)
    other_request = await console.onboarding_request("ONB-OTHER", "150321", "Centro Vomero")
    letter = await _keyless_dead_letter()
    await add_user(console.pool, VICTIM, "desk", [], None, PASSWORD, by="test")
    victim_hash = await console.pool.fetchval("SELECT password_hash FROM console_user WHERE name = $1", VICTIM)
    for request in (own_request, other_request):
        assert await console.onboarding_document(request, "suap.pdf", b"%PDF-1.4 authz probe") == DOCUMENT
    checked = denied_cross = 0
    for role in ROLES:
        user, _ = ROLE_USERS[role]
        async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
            assert (await console.login(client, user)).status_code == 303
            home = await client.get(console.url + "/", follow_redirects=True)
            # "/" lands each role on its first page (none on a page with nothing but the menu)
            assert home.url.path == LANDING[role], (role, home.url)
            csrf = csrf_of(home.text)  # the session's token, from the logout form every page carries
            # The lists carry only the rows of the principal's enti.
            if role in ("operator", "ops", "auditor"):
                page = (await client.get(console.url + "/istanze")).text
                listed = (await client.get(console.url + "/api/istanze")).json()["items"]
                sees_other = role != "operator"
                assert (f'href="/istanze/{other}"' in page) == sees_other, role
                assert (other in [i["instance"] for i in listed]) == sees_other, role
                assert f'href="/istanze/{own}"' in page
            routes = sorted(ROUTE_TABLE.values(), key=lambda r: r.path == "/logout")  # logout last
            for route in routes:
                targets: list[tuple[int | str, bool]] = [(own, True)]
                if "{instance}" in route.path:
                    targets = [(own, True), (other, False), (missing, False)]
                elif "{request}" in route.path:
                    targets = [(own_request, True), (other_request, False), ("ONB-MISSING", False)]
                elif "{letter}" in route.path:  # no entity: the role is the whole check
                    targets = [(letter, True), (MISSING_LETTER, False)]
                elif "{user}" in route.path:
                    targets = [(VICTIM, True), (NOBODY, False)]
                elif route.path == "/istanze/nuova" and route.method == "POST":
                    targets = [(own, True), (other, False)]
                for target, is_own in targets:
                    status, body = await _call(client, console, route, target, is_own, csrf)
                    where = f"{route.method} {route.path} as {role} on {'own' if is_own else 'other'} ({target})"
                    exists = target not in (missing, "ONB-MISSING", MISSING_LETTER, NOBODY)
                    allowed = exists and _allowed(route, role, is_own)
                    if route.path.startswith("/utenti") and role != "admin":
                        # The users page and its actions (users, passwords, API keys) are the admin's alone, whatever
                        # rule the table holds: a route there declared with a wider rule fails here.
                        assert status == 404, f"{where}: {status} (only admin manages users and API keys)"
                    if route.path == "/istanze/nuova" and route.method == "POST" and role in route.rule.roles:
                        assert status == 422, where
                        assert ("solo tra i suoi enti" in body) == (not is_own), where
                        assert "viene prima del suo inizio" in body, where
                    elif not allowed:
                        assert status == 404, f"{where}: {status}"
                        if not is_own and ("{instance}" in route.path or "{request}" in route.path):
                            denied_cross += 1
                    elif route.kind == "api" and route.method == "POST":
                        assert status == 422, f"{where}: {status}"  # authorized; a form is no JSON body
                    elif route.rule.scope == "request" and route.method == "POST":
                        assert status == 422, f"{where}: {status}"  # authorized; no file, no verdict given
                    elif route.path in ("/utenti", "/utenti/password") and route.method == "POST":
                        assert status == 422, f"{where}: {status}"  # authorized; a user without a name
                    elif route.path in ("/utenti/chiavi", "/utenti/chiavi/revoca"):
                        assert status == 422, f"{where}: {status}"  # authorized; a key without a label, or an id
                    elif "{letter}" in route.path and route.method == "POST":
                        # authorized; a keyless message cannot be redriven, a discard needs its reason
                        assert status == (409 if route.path.endswith("/rilancia") else 422), f"{where}: {status}"
                    elif route.rule.scope == "act":
                        assert status == 409, f"{where}: {status}"  # authorized, refused by the state machine
                    elif route.kind == "stream":
                        assert status == 200 and "event: ready" in body, where
                    else:
                        assert status in (200, 303), f"{where}: {status}"
                    checked += 1
    assert checked > 150 and denied_cross > 40, (checked, denied_cross)
    # Nothing of the other ente was ever acted on: its history is what it was.
    assert await console.pool.fetchval("SELECT state FROM instance_list WHERE instance = $1", other) == \
        "Waiting feedback"
    # Only the admin's allowed disable, then re-enable, took effect: the victim is active again, nobody else was
    # disabled, and no password changed (the password form without a user and a password is refused).
    assert await console.pool.fetchval("SELECT disabled FROM console_user WHERE name = $1", VICTIM) is False
    assert await console.pool.fetchval("SELECT count(*) FROM console_user WHERE disabled") == 0
    assert await console.pool.fetchval("SELECT password_hash FROM console_user WHERE name = $1", VICTIM) == \
        victim_hash
    # No API key was issued nor revoked (the admin's forms without a label, or without a key id, are refused).
    assert await console.pool.fetchval("SELECT count(*) FROM console_api_key") == 0
    assert await console.pool.fetchval("SELECT count(*) FROM events WHERE stream_id = 'console-users' AND type LIKE "
                                       "'console.api-key-%'") == 0
