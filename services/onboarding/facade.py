"""The onboarding service as its clients see it: the one module the `onboarding` CLI, `flows replay` and the
console's Onboarding pages import (tests/unit/test_onboarding_facade.py holds them to it).

Behind it the service keeps its rooms (domain, handlers, projection, requirements, switch, tracciati) free
to change: a client names the use cases, the request's state and the refusals below, nothing else.

- `connect(pool, files, source)`: what every use case takes (event store with the dashboard projection,
  file store, switch calendar); `prepare(pool)` migrates the database and the dashboard first.
- use cases: `open_request`, `add_document`, `desk_verdict`, `request_switch`, `require`, `dashboard`;
- a request's facts: `required_slots`, `declared_credentials` (the option its formal request declares);
- a declared fact judged by its rule: `broken_rule` (the console's form of facts);
- refusals: `OnboardingError` (the request's state refuses; `RequestNotFound` is one), `RequirementsError`
  (the versioned requirements data is missing or invalid).
"""

from __future__ import annotations

import asyncpg

from contracts.onboarding import SOURCE
from services.onboarding.domain import (
    DocumentState,
    OnboardingError,
    OnboardingRequest,
    RequestNotFound,
    declared_credentials,
    required_slots,
)
from services.onboarding.handlers import (
    Added,
    DocumentNotStored,
    OnboardingDeps,
    add_document,
    desk_verdict,
    new_request_id,
    open_request,
    request_switch,
    require,
    stream_of,
)
from services.onboarding.projection import DashboardProjection, dashboard
from services.onboarding.requirements import (
    DocumentType,
    Requirements,
    RequirementsError,
    broken_rule,
    load_requirements,
)
from services.onboarding.switch import SwitchCalendar, SwitchSlot, SwitchWindow, load_patron_days
from services.runtime.eventstore import EventStore
from services.runtime.filestore import FileStore
from services.runtime.host import prepare_database

__all__ = [
    "Added",
    "DashboardProjection",
    "DocumentNotStored",
    "DocumentState",
    "DocumentType",
    "OnboardingDeps",
    "OnboardingError",
    "OnboardingRequest",
    "RequestNotFound",
    "Requirements",
    "RequirementsError",
    "SwitchCalendar",
    "SwitchSlot",
    "SwitchWindow",
    "add_document",
    "broken_rule",
    "connect",
    "dashboard",
    "declared_credentials",
    "desk_verdict",
    "load_patron_days",
    "load_requirements",
    "new_request_id",
    "open_request",
    "prepare",
    "projections",
    "request_switch",
    "require",
    "required_slots",
    "stream_of",
]


def projections() -> list[DashboardProjection]:
    """The read models the onboarding events feed (appended with them, rebuilt by `flows replay`)."""
    return [DashboardProjection()]


async def prepare(pool: asyncpg.Pool) -> None:
    """Migrates the database and creates the onboarding read models: a client may be the first to write."""
    await prepare_database(pool, projections())


def connect(pool: asyncpg.Pool, files: FileStore, source: str = SOURCE) -> OnboardingDeps:
    """What the use cases take; `source` is the client's CloudEvents source (the CLI writes as the service)."""
    return OnboardingDeps(pool=pool, store=EventStore(pool, source=source, projections=projections()), files=files,
                          calendar=SwitchCalendar(load_patron_days()))
