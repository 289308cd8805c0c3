"""Who may use which route, and the access log of personal data.

Every route of the console is declared through `routed` with one `Rule`; the app refuses to start
with a route that has none (`check_every_route_has_a_rule`), and tests/integration/test_console_authz.py
walks the same table: every route x every role x own and other entity.

A denied object answers 404 whether it exists or not, and so does a route the role may not use:
nobody learns what is there by being refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.console.auth import ROLES, Principal
from services.runtime.eventstore import ConcurrencyError, EventStore, NewEvent


@dataclass(frozen=True)
class Rule:
    """`roles` may use the route; `scope` says which entity check follows:
    none      - no object (a page of the role's own, e.g. the list filtered in SQL by its enti)
    instance  - the `{instance}` of the path must belong to an ente the principal sees
    act       - the same, for an ente the principal acts on (operators of that ente only)
    request   - the `{request}` of the path is an onboarding request the principal sees (a structure
                user: its own structure's only)
    """

    name: str
    roles: frozenset[str]
    scope: str = "none"

    def __post_init__(self) -> None:
        if not self.roles <= set(ROLES) or self.scope not in ("none", "instance", "act", "request"):
            raise ValueError(f"rule {self.name}: unknown role or scope")


READERS = frozenset({"operator", "ops", "auditor"})
ANY_USER = Rule("any logged-in user", frozenset(ROLES))
LIST_INSTANCES = Rule("instance list (rows of the principal's enti)", READERS)
READ_INSTANCE = Rule("one instance of an ente the principal sees", READERS, "instance")
ACT_ON_INSTANCE = Rule("an action on an instance of the operator's ente", frozenset({"operator"}), "act")
REQUEST_LOAD = Rule("a load request for one of the operator's enti", frozenset({"operator"}))
READ_ACCESS_LOG = Rule("the access log", frozenset({"auditor"}))
ONBOARDING_READERS = frozenset({"structure", "desk", "ops", "auditor"})
LIST_ONBOARDING = Rule("onboarding dashboard (a structure: its own requests)", ONBOARDING_READERS)
READ_ONBOARDING = Rule("one onboarding request the principal sees", ONBOARDING_READERS, "request")
UPLOAD_ONBOARDING = Rule("a document for a request (desk, or its own structure)", frozenset({"structure", "desk"}),
                         "request")
DESK_VERDICT = Rule("the desk's verdict on a document", frozenset({"desk"}), "request")
SWITCH_REQUEST = Rule("a switch request for a request (desk, or its own structure)", frozenset({"structure", "desk"}),
                      "request")
DOWNLOAD_ONBOARDING = Rule("a request's document, downloaded (desk, or its own structure)",
                           frozenset({"structure", "desk"}), "request")
MANAGE_USERS = Rule("the users page: list, add, disable (admin)", frozenset({"admin"}))
# The ops page: dead letters, parked outbox rows and consumer lag are no entity's (a dead letter may be malformed beyond
# telling whose it is), so the role is the whole check. The auditor reads them; admin manages users only.
READ_OPS = Rule("the ops page: dead letters, parked outbox rows, consumer lag", frozenset({"ops", "auditor"}))
DECIDE_DEAD_LETTER = Rule("a redrive or discard of a dead letter (actor = the user)", frozenset({"ops"}))


@dataclass(frozen=True)
class RouteRule:
    method: str
    path: str
    rule: Rule
    kind: str  # page, download, stream, action, api


ROUTE_TABLE: dict[tuple[str, str], RouteRule] = {}
# Routes open without login: the login form itself, the probes, the static assets.
PUBLIC_PATHS = frozenset({"/login", "/login/oidc", "/login/oidc/callback", "/healthz", "/readyz", "/static"})


def routed(router: Any, method: str, path: str, rule: Rule, kind: str, plain: bool = False,
           **kw: Any) -> Callable[[Any], Any]:
    """Registers `path` on `router` AND its rule in ROUTE_TABLE: the only way a guarded route is declared.
    `plain`: a Starlette route, `fn(request)`, without FastAPI's parameter and dependency handling (the route
    calls its guard itself: app.route)."""
    def register(fn: Any) -> Any:
        full = getattr(router, "prefix", "") + path
        if (method, full) in ROUTE_TABLE:
            raise RuntimeError(f"route {method} {full} is declared twice")
        ROUTE_TABLE[(method, full)] = RouteRule(method, full, rule, kind)
        if plain:
            router.add_route(path, fn, methods=[method], include_in_schema=False, **kw)
            return fn
        return router.api_route(path, methods=[method], **kw)(fn)
    return register


def every_route(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every route below `routes` with its full path, those of included routers too. FastAPI (0.165 here) keeps an
    included router as one entry of the app's list (its `original_router`, the include's own prefix in
    `include_context`) instead of copying the router's routes into it: a walk of `app.routes` alone sees none of
    the console's routes, and checked nothing."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            extra = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            yield from every_route(included.routes, prefix + extra)
        else:
            yield prefix + getattr(route, "path", ""), route


def check_every_route_has_a_rule(routes: list[Any]) -> int:
    """Raises for a route (of the app, or of a router it includes) that is neither public nor in ROUTE_TABLE; the
    number of (method, path) pairs checked against the table."""
    checked = 0
    for path, route in every_route(routes):
        if path in PUBLIC_PATHS or path.startswith("/static") or path in ("/openapi.json", "/docs"):
            continue
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD" and (method, path) not in ROUTE_TABLE:
                raise RuntimeError(f"route {method} {path} has no authorization rule (services/console/access.py)")
            checked += method != "HEAD"
    return checked


def may(principal: Principal, rule: Rule, ente: str | None) -> bool:
    """The one decision: role first, then the entity the object belongs to (for an onboarding
    request, `ente` is its structure's STS11)."""
    if principal.role not in rule.roles:
        return False
    if rule.scope == "request":
        return ente is not None and (principal.role != "structure" or ente == principal.structure)
    if rule.scope == "instance":
        return ente is not None and principal.sees_ente(ente)
    if rule.scope == "act":
        return ente is not None and principal.acts_on_ente(ente)
    return True


# ---------------------------------------------------------------- access log
# One log for both ways personal data is read: the console's pages and API (channel "console", user = the
# logged-in user or api:<key id>, address = the client's) and the `flows` commands that show or write it (channel
# "cli", user = cli:<FLOWS_OPERATOR or login>, as the record of user administration names a shell's actor, no role,
# address = the host the command ran on, `command` = the command). Records written before the channel was kept have
# none: they are the console's. The auditor reads both on /accessi and with `flows access-log`.
ACCESS_EVENT = "console.personal-data-accessed"
CONSOLE, CLI = "console", "cli"


def access_stream(when: datetime) -> str:
    """One hash-chained stream per day: appends of different days never contend."""
    return f"access-{when.astimezone(UTC):%Y%m%d}"


async def record_access(store: EventStore, principal: Principal, what: str, instance: int | None, address: str,
                        detail: dict[str, Any] | None = None) -> None:
    """Appends who read which personal data, when and from where. Raises if it cannot be written:
    the page is not shown without its record."""
    data: dict[str, Any] = {"user": principal.name, "role": principal.role, "what": what, "instance": instance,
                            "address": address, "channel": CONSOLE, **(detail or {})}
    await _append_access(store, data, principal.name)


async def record_cli_access(store: EventStore, user: str, what: str, instance: int | None, host: str,
                            command: str, detail: dict[str, Any] | None = None) -> None:
    """The same record for a `flows` command that shows or writes personal data (services/cli/personal.py); raises
    if it cannot be written: the command then shows nothing."""
    data: dict[str, Any] = {"user": user, "role": None, "what": what, "instance": instance, "address": host,
                            "channel": CLI, "command": command, **(detail or {})}
    await _append_access(store, data, user)


async def _append_access(store: EventStore, data: dict[str, Any], actor: str) -> None:
    event = NewEvent(ACCESS_EVENT, data, id=uuid.uuid4(), actor=actor)
    for attempt in range(20):
        stream = access_stream(datetime.now(UTC))
        try:
            await store.append(stream, [event], expected_version=None, key=stream, publish=False)
            return
        except ConcurrencyError:
            await asyncio.sleep(0.005 * (attempt + 1))
    raise RuntimeError(f"the access log could not be written ({data['what']}, instance {data['instance']})")


def access_detail(data: dict[str, Any]) -> str:
    """What else a record names besides its kind and instance, in one line (`flows access-log`'s detail column): the
    file(s), the dead letter and its topic, the onboarding request, the topics followed, the entity, where it was
    written, the API, the command."""
    named = [str(data[k]) for k in ("file", "dead_letter") if data.get(k)]
    named += [f"{k} {data[k]}" for k in ("topic", "request", "topics", "ente", "out") if data.get(k)]
    named += ["via api"] if data.get("via") == "api" else []
    named += [str(data["command"])] if data.get("command") else []
    return "; ".join(named)


async def read_access_log(pool: asyncpg.Pool, user: str | None, instance: int | None,
                          limit: int = 500) -> list[asyncpg.Record]:
    return await pool.fetch(
        """SELECT stream_id, version, recorded_at, actor, data FROM events
           WHERE stream_id LIKE 'access-%' AND type = $1
             AND ($2::text IS NULL OR actor = $2)
             AND ($3::bigint IS NULL OR (data->>'instance')::bigint = $3)
           ORDER BY recorded_at DESC, stream_id DESC, version DESC LIMIT $4""",
        ACCESS_EVENT, user, instance, limit)
