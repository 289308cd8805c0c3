"""The onboarding service: Kafka intake of onboarding requests and documents.

Subscriptions: request-opened, document-received, document-assessed, request-complete,
taken-in-charge, switch-scheduled, each in its own consumer group `onboarding.<event>`: the
topics are independent (no order holds across topics anyway), and one group per topic spares
the six subscribers the cascade of rebalances one shared group costs at every start (~1 min
measured on the local stack). Messages our own outbox published are
recognised by their ce_source and skipped (see handlers). Every subscription dead-letters to
`<topic>.dlq` after `max_attempts` (services.runtime.broker.consume): a refused message (unknown
request, document type not required, an outside "complete" claim our state contradicts) ends
there with the reason in the `dlq_reason` header.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from contracts.topics import by_name
from services.onboarding import handlers
from services.onboarding.projection import DashboardProjection
from services.onboarding.switch import SwitchCalendar, load_patron_days
from services.runtime.broker import consume
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


def wire(rt: Runtime, group: str = GROUP) -> handlers.OnboardingDeps:
    deps = handlers.OnboardingDeps(
        pool=rt.pool, store=rt.store, files=rt.files, calendar=SwitchCalendar(load_patron_days())
    )
    for topic_name, handler in SUBSCRIPTIONS.items():
        consume(
            rt.broker,
            by_name(topic_name),
            group_id=f"{group}.{topic_name.removeprefix('onboarding.')}",
            handler=functools.partial(handler, deps=deps),
            max_attempts=rt.settings.max_attempts,
        )
    return deps


async def main(settings: Settings | None = None, stop: asyncio.Event | None = None) -> None:
    settings = settings or Settings()
    async with runtime(settings, name="onboarding", projections=[DashboardProjection()]) as rt:
        wire(rt)
        await serve(rt, stop=stop)
