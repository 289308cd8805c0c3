"""What happens, for the CLI and for Kafka intake alike: load the request, decide, append.

Each use case is a plain async function taking its input and `OnboardingDeps`. Appends use the
stream version read (optimistic concurrency); on `ConcurrencyError` the whole load-decide-append
is retried, because the decision may change with the other writer's events.

Kafka intake (`on_*`) differs in two ways only:
- a message whose `ce_source` is our own (`/onboarding`) is our outbox echoing an event we
  already recorded: it is acknowledged and ignored;
- the message id (`ce_id`) is recorded in the same transaction as the appended events, so a
  redelivered message changes nothing. An error raises: the broker helper retries, then dead-letters.

Refusals (`OnboardingError`) and the findings about a document are Italian: the console shows them to the
structure and the desk as the reason (see domain.py); a dead letter keeps the same reason.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

from contracts.onboarding import (
    EVENT_TYPES,
    TYPE_OF,
    DocumentAssessed,
    DocumentReceived,
    Payload,
    Problem,
    RequestComplete,
    RequestOpened,
    SwitchScheduled,
    TakenInCharge,
)
from services.onboarding import domain, tracciati
from services.onboarding.domain import OnboardingError, OnboardingRequest, RequestNotFound
from services.onboarding.findings import Finding
from services.onboarding.requirements import PER_SPOKE_KEY, Requirements, check_metadata, load_requirements
from services.onboarding.switch import SwitchCalendar, SwitchSlot, SwitchWindow
from services.runtime.broker import Incoming
from services.runtime.eventstore import ConcurrencyError, EventStore, NewEvent
from services.runtime.filestore import FileStore, StoreFull

CONSUMER = "onboarding"
CONCURRENCY_ATTEMPTS = 5
T = TypeVar("T")


@dataclass
class OnboardingDeps:
    pool: asyncpg.Pool
    store: EventStore
    files: FileStore
    calendar: SwitchCalendar
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    _requirements: dict[str, Requirements] = field(default_factory=dict)

    def requirements(self, version: str | None = None) -> Requirements:
        """A version of the requirements data (the latest when None), loaded once."""
        key = version or "latest"
        if key not in self._requirements:
            loaded = load_requirements(version)
            self._requirements[key] = self._requirements[loaded.version] = loaded
        return self._requirements[key]


def stream_of(request_id: str) -> str:
    return f"onboarding-{request_id}"


async def load(deps: OnboardingDeps, request_id: str) -> OnboardingRequest | None:
    stored = await deps.store.read_stream(stream_of(request_id))
    if not stored:
        return None
    events = [EVENT_TYPES[e.type].model_validate(e.data) for e in stored]
    first = events[0]
    if not isinstance(first, RequestOpened):
        raise OnboardingError(
            f"richiesta {request_id}: lo stream comincia con {stored[0].type}, non con request-opened"
        )
    return OnboardingRequest.replay(events, deps.requirements(first.requirements_version))


async def require(deps: OnboardingDeps, request_id: str) -> OnboardingRequest:
    request = await load(deps, request_id)
    if request is None:
        raise RequestNotFound(f"richiesta {request_id}: non trovata")
    return request


async def _append(
    deps: OnboardingDeps,
    request_id: str,
    version: int,
    events: Sequence[Payload],
    actor: str,
    conn: asyncpg.Connection | None = None,
    causation: str | None = None,
) -> None:
    if not events:
        return
    meta = {"causation_id": causation} if causation else {}
    new = [NewEvent(type=TYPE_OF[type(e)], data=e.model_dump(mode="json"), actor=actor, metadata=meta) for e in events]
    await deps.store.append(stream_of(request_id), new, expected_version=version, key=request_id, conn=conn)


async def _retrying(attempt: Callable[[], Awaitable[T]]) -> T:
    for n in range(1, CONCURRENCY_ATTEMPTS + 1):
        try:
            return await attempt()
        except ConcurrencyError:
            if n == CONCURRENCY_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


# -- use cases ----------------------------------------------------------------------------------


async def open_request(
    deps: OnboardingDeps,
    command: RequestOpened,
    actor: str,
    conn: asyncpg.Connection | None = None,
    causation: str | None = None,
) -> list[Payload]:
    async def attempt() -> list[Payload]:
        existing = await load(deps, command.request_id)
        events = domain.open_request(command, existing, deps.requirements(command.requirements_version))
        await _append(deps, command.request_id, 0, events, actor, conn, causation)
        return events

    return await _retrying(attempt)


def assess_content(request: OnboardingRequest, received: DocumentReceived, content: bytes) -> list[Finding] | None:
    """The automatic assessment of one document, or None when only the desk can judge it."""
    doc_type = request.requirements.document_type(received.document_type)
    if doc_type.assessment == "metadata":
        # The SPOKE a closure act is for says which slot it fills, not a fact of the document: with nothing else
        # declared (a structure's upload on the console declares nothing), the desk judges it, as any other
        # document without facts.
        declared = {key for key in received.metadata if key != PER_SPOKE_KEY}
        return check_metadata(doc_type, received.metadata) if declared else None
    layouts = tracciati.load_layouts(request.requirements.tracciati_version)
    layout = layouts[doc_type.sheet or ""]
    try:
        tables = tracciati.read_tables(received.filename, content)
    except ValueError as exc:  # its message names the file already
        return [Finding(str(exc), sheet=layout.name)]
    except Exception as exc:  # a corrupt workbook is a finding about the document, not a crash
        return [Finding(f"{received.filename}: non è leggibile come foglio di calcolo: {type(exc).__name__}: {exc}")]
    wanted = received.metadata.get("sheet")
    table = next((t for t in tables if t.sheet == wanted), None) if wanted else tracciati.pick_table(tables, layout)
    if table is None:
        names = ", ".join(t.sheet for t in tables)
        missing = f"nessun foglio {layout.name!r} in {received.filename} (fogli presenti: {names})"
        return [Finding(missing, sheet=layout.name)]
    return tracciati.assess_table(table, layout, context_of(request))


def context_of(request: OnboardingRequest) -> tracciati.TracciatoContext:
    opened = request.opened
    return tracciati.TracciatoContext(
        structure_sts11=opened.structure_sts11,
        aggregation=request.requirements.kind(request.kind).iup_ssa_code == "hub",
        spokes=tuple(s.sts11 for s in opened.spokes),
        other_structures=tuple(opened.other_structures),
    )


async def record_document(
    deps: OnboardingDeps,
    received: DocumentReceived,
    actor: str,
    conn: asyncpg.Connection | None = None,
    causation: str | None = None,
) -> list[Payload]:
    """A document already in the file store (by sha256): assess it and record it."""
    content = _read(deps.files, received)

    async def attempt() -> list[Payload]:
        request = await require(deps, received.request_id)
        findings = assess_content(request, received, content)
        events = domain.receive_document(request, received, findings, request.requirements, deps.clock(), deps.calendar)
        await _append(deps, received.request_id, request.version, events, actor, conn, causation)
        return events

    return await _retrying(attempt)


class DocumentNotStored(OnboardingError):
    """The file store is full (ENOSPC): the document was not stored and nothing of it was recorded (the store
    removed its partial bytes); whoever is uploading tries again once space is freed. Not a finding about the
    document, and nothing the service retries by itself: the person uploading is there, and told at once."""

    def __init__(self, request_id: str, filename: str, size: int, cause: StoreFull) -> None:
        super().__init__(f"richiesta {request_id}, documento {filename}: non salvato, l'archivio dei documenti è "
                         f"pieno ({cause}); non è stato registrato nulla: inviarlo di nuovo quando si sarà liberato "
                         "spazio")
        self.request_id, self.filename, self.size, self.path = request_id, filename, size, cause.root


@dataclass(frozen=True)
class Added:
    events: list[Payload]
    ignored_sheets: list[str]


async def add_document(
    deps: OnboardingDeps,
    request_id: str,
    filename: str,
    content: bytes,
    document_type: str,
    metadata: Mapping[str, str],
    actor: str,
) -> Added:
    """CLI intake: store the file, then record it; type `tracciati` = a workbook of several sheets, a slot
    (`spoke-closure-act:<STS11>`) = that type for that SPOKE (metadata `spoke_sts11`).
    A full file store raises DocumentNotStored before anything is recorded."""
    request = await require(deps, request_id)
    requirements = request.requirements
    document_type, named = requirements.slot_document(document_type)
    for key, value in named.items():
        if metadata.get(key, value).strip().upper() != value:
            raise OnboardingError(
                f"richiesta {request_id}, documento {filename}: il documento è indicato per lo SPOKE {value}, "
                f"il dato {key} dice {metadata[key]!r}"
            )
    metadata = {**metadata, **named}
    try:
        # off the event loop: a document of megabytes and its fsync would stall every other request meanwhile
        sha256, size = await asyncio.to_thread(deps.files.put_bytes, content)
    except StoreFull as exc:
        raise DocumentNotStored(request_id, filename, len(content), exc) from exc
    stored_at = str(deps.files.path(sha256).relative_to(deps.files.root))
    now = deps.clock()

    def received(doc_type: str, extra: Mapping[str, str]) -> DocumentReceived:
        meta = {**metadata, **extra}
        slot = requirements.slot_of(doc_type, meta) if doc_type in requirements.document_types else doc_type
        # Deterministic id: the same file for the same slot is the same document (a no-op when re-sent).
        return DocumentReceived(
            request_id=request_id,
            document_id=f"{slot.replace(':', '-')}-{sha256[:10]}",
            document_type=doc_type,
            filename=filename,
            sha256=sha256,
            size=size,
            stored_at=stored_at,
            metadata=meta,
            received_at=now,
            received_by=actor,
        )

    if document_type != "tracciati":
        return Added(await record_document(deps, received(document_type, {}), actor), [])
    required = domain.required_slots(request, requirements)
    events: list[Payload] = []
    ignored = []
    for table in tracciati.read_tables(filename, content):
        type_id = requirements.tracciato_type_for_sheet(table.sheet)
        if type_id is None or type_id not in required:
            ignored.append(table.sheet)
            continue
        events += await record_document(deps, received(type_id, {"sheet": table.sheet}), actor)
    if not events and not ignored:
        raise OnboardingError(f"richiesta {request_id}, documento {filename}: la cartella di lavoro non ha fogli")
    return Added(events, ignored)


async def assess(
    deps: OnboardingDeps,
    assessed: DocumentAssessed,
    actor: str,
    conn: asyncpg.Connection | None = None,
    causation: str | None = None,
) -> list[Payload]:
    async def attempt() -> list[Payload]:
        request = await require(deps, assessed.request_id)
        events = domain.assess_document(request, assessed, request.requirements, deps.clock(), deps.calendar)
        await _append(deps, assessed.request_id, request.version, events, actor, conn, causation)
        return events

    return await _retrying(attempt)


async def desk_verdict(
    deps: OnboardingDeps, request_id: str, document: str, compliant: bool, reasons: Sequence[str], actor: str
) -> list[Payload]:
    """`onboarding assess`: `document` is a document id or a slot (its latest document)."""
    request = await require(deps, request_id)
    doc = request.documents.get(document) or request.latest_by_slot().get(document)
    if doc is None:
        known = ", ".join(request.documents) or "nessuno"
        raise OnboardingError(f"richiesta {request_id}: nessun documento {document!r} (documenti: {known})")
    verdict = DocumentAssessed(
        request_id=request_id,
        document_id=doc.document_id,
        document_type=doc.document_type,
        compliant=compliant,
        problems=[Problem(message=r) for r in reasons],
        assessed_by=actor,
        assessed_at=deps.clock(),
    )
    return await assess(deps, verdict, actor)


async def request_switch(
    deps: OnboardingDeps,
    request_id: str,
    slot: SwitchSlot,
    credentials: str | None,
    actor: str,
    conn: asyncpg.Connection | None = None,
    causation: str | None = None,
) -> list[Payload]:
    async def attempt() -> list[Payload]:
        request = await require(deps, request_id)
        events = domain.schedule_switch(request, slot, credentials, deps.calendar, domain.local_date(deps.clock()))
        await _append(deps, request_id, request.version, events, actor, conn, causation)
        return events

    return await _retrying(attempt)


# -- Kafka intake -------------------------------------------------------------------------------


async def _intake(
    deps: OnboardingDeps, incoming: Incoming, work: Callable[[asyncpg.Connection], Awaitable[Any]]
) -> None:
    if incoming.envelope.source == deps.store.source:
        return  # our own outbox echo: already recorded

    async def attempt() -> None:
        async with deps.pool.acquire() as conn, conn.transaction():
            async with deps.store.first_delivery(conn, consumer=CONSUMER, message_id=incoming.message_id) as fresh:
                if fresh:
                    await work(conn)

    await _retrying(attempt)


def _actor(incoming: Incoming) -> str:
    return f"kafka:{incoming.envelope.source}"


async def on_request_opened(payload: RequestOpened, incoming: Incoming, deps: OnboardingDeps) -> None:
    await _intake(deps, incoming, lambda c: open_request(deps, payload, _actor(incoming), c, incoming.message_id))


async def on_document_received(payload: DocumentReceived, incoming: Incoming, deps: OnboardingDeps) -> None:
    await _intake(deps, incoming, lambda c: record_document(deps, payload, _actor(incoming), c, incoming.message_id))


async def on_document_assessed(payload: DocumentAssessed, incoming: Incoming, deps: OnboardingDeps) -> None:
    await _intake(deps, incoming, lambda c: assess(deps, payload, _actor(incoming), c, incoming.message_id))


async def on_switch_scheduled(payload: SwitchScheduled, incoming: Incoming, deps: OnboardingDeps) -> None:
    """A portal asks for a switch slot: judged like the CLI's; refused with a proposal when invalid."""
    slot = SwitchSlot(payload.switch_date, SwitchWindow.parse(f"{payload.window_start}-{payload.window_end}"))
    await _intake(
        deps,
        incoming,
        lambda c: request_switch(
            deps, payload.request_id, slot, payload.credentials.value, _actor(incoming), c, incoming.message_id
        ),
    )


async def on_request_complete(payload: RequestComplete, incoming: Incoming, deps: OnboardingDeps) -> None:
    """Completeness is ours to compute: an outside claim is accepted only when our state agrees."""

    async def check(_conn: asyncpg.Connection) -> None:
        request = await require(deps, payload.request_id)
        if request.complete_on is None:
            summary = request.completeness.summary if request.completeness else "nessun documento"
            raise OnboardingError(f"richiesta {payload.request_id}: non completa ({summary})")

    await _intake(deps, incoming, check)


async def on_taken_in_charge(payload: TakenInCharge, incoming: Incoming, deps: OnboardingDeps) -> None:
    """Requests are taken in charge automatically once complete; an outside claim must agree."""

    async def check(_conn: asyncpg.Connection) -> None:
        request = await require(deps, payload.request_id)
        if request.taken_in_charge is None:
            summary = request.completeness.summary if request.completeness else "nessun documento"
            raise OnboardingError(
                f"richiesta {payload.request_id}: non può essere presa in carico, non è completa ({summary})"
            )

    await _intake(deps, incoming, check)


def _read(files: FileStore, received: DocumentReceived) -> bytes:
    with files.open(received.sha256) as fh:
        content = fh.read()
    if len(content) != received.size:
        raise OnboardingError(
            f"richiesta {received.request_id}, documento {received.document_id}: size è {received.size}, "
            f"il file archiviato ha {len(content)} byte"
        )
    return content


def new_request_id(now: datetime | None = None) -> str:
    """ONB-<the Italian day>-<6 hex>: the day the desk and the structure read in it is Italy's, not the host's (a
    request opened at 00:30 in Rome on New Year's Day is of the new year, while a host in UTC is still in the old)."""
    day = (now or datetime.now(UTC)).astimezone(domain.ROME)
    return f"ONB-{day:%Y%m%d}-{uuid.uuid4().hex[:6].upper()}"
