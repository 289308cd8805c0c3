"""The onboarding service: Kafka intake of onboarding requests and documents.

Subscriptions: request-opened, document-received, document-assessed, request-complete,
taken-in-charge, switch-scheduled, each in its own consumer group `onboarding.<event>`: the
topics are independent (no order holds across topics anyway), and one group per topic spares
the six subscribers the cascade of rebalances one shared group costs at every start (~1 min
measured on the local stack). Messages our own outbox published are
recognised by their ce_source and skipped (see handlers). A message the request's state refuses
(document type not required, an outside "complete" claim our state contradicts) is dead-lettered at
once to `<topic>.dlq` with the reason in `dlq_reason`; one for an unknown request is retried
`max_attempts` times first (it may have overtaken its request-opened), then dead-lettered.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from contracts.topics import by_name
from services.onboarding import handlers
from services.onboarding.domain import OnboardingError, RequestNotFound
from services.onboarding.projection import DashboardProjection
from services.onboarding.switch import SwitchCalendar, load_patron_days
from services.runtime.broker import Refused, consume
from services.runtime.host import Runtime, runtime, serve
from services.runtime.settings import Settings

GROUP = "onboarding"
SUBSCRIPTIONS: dict[str, Callable[..., Awaitable[None]]] = {
    "onboarding.request-opened": handlers.on_request_opened,
    "onboarding.document-received": handlers.on_document_received,
    "onboarding.document-assessed": handlers.on_document_assessed,
    "onboarding.request-complete": handlers.on_request_complete,
    "onboarding.taken-in-charge": handlers.on_taken_in_charge,
    "onboarding.switch-scheduled": handlers.on_switch_scheduled,
}


def _refusing(handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A refusal the request's state decides is final: dead-lettered at once, not retried. An unknown
    request is retried: its document may have overtaken its request-opened on another topic."""

    @functools.wraps(handler)
    async def wrapped(*args: Any, **kwargs: Any) -> None:
        try:
            await handler(*args, **kwargs)
        except RequestNotFound:
            raise
        except OnboardingError as exc:
            raise Refused(str(exc)) from exc

    return wrapped


def wire(rt: Runtime, group: str = GROUP) -> handlers.OnboardingDeps:
    deps = handlers.OnboardingDeps(
        pool=rt.pool, store=rt.store, files=rt.files, calendar=SwitchCalendar(load_patron_days())
    )
    for topic_name, handler in SUBSCRIPTIONS.items():
        consume(
            rt.broker,
            by_name(topic_name),
            group_id=f"{group}.{topic_name.removeprefix('onboarding.')}",
            handler=functools.partial(_refusing(handler), deps=deps),
            max_attempts=rt.settings.max_attempts,
            probe=rt.probe_database,
        )
    return deps


async def main(settings: Settings | None = None, stop: asyncio.Event | None = None) -> None:
    settings = settings or Settings()
    async with runtime(settings, name="onboarding", projections=[DashboardProjection()]) as rt:
        wire(rt)
        await serve(rt, stop=stop)
