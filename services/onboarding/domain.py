"""The onboarding request ("richiesta") as an event-sourced aggregate, and the decisions on it.

Pure: state is folded from the contract events; every decision takes the state and plain
values (the time, the findings of an assessment already made) and returns the events to append.
No I/O here: the handlers read files and the store, then call these functions.

Rules (seed 003, "Si precisa che le richieste potranno essere prese in carico esclusivamente a
seguito della trasmissione della documentazione completa, correttamente compilata e conforme"):
- a request is complete only when every required slot holds a document assessed compliant
  (the latest document of a slot is the one that counts);
- once complete it is taken in charge at once, expected completion = complete + 4..6 weeks
  ("tempi medi ... circa 4-6 settimane decorrenti dalla ricezione della documentazione completa e conforme"),
  where the completion day is the day the complete documentation was RECEIVED: the latest received day of the
  required documents, all compliant (`completion_day`), not the day the desk recorded its last verdict;
- a switch request (software house / interoperability) is then judged for its desired slot: the notice runs from
  the later of the completion day and the day the switch is asked (switch.py).

What people read is Italian: the completeness summary (documents by their `document_label`) and every
refusal (`OnboardingError`), which the console shows as the reason a document or a switch was not accepted.
Ids, kinds and field names in them stay as they are: they are what the desk types and the contract names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

from contracts.deadlines import ITALY, italian_today
from contracts.onboarding import (
    KIND_LABELS,
    CompletenessChanged,
    DocumentAssessed,
    DocumentReceived,
    Payload,
    Problem,
    RequestComplete,
    RequestKind,
    RequestOpened,
    SwitchRefused,
    SwitchScheduled,
    TakenInCharge,
    document_label,
)
from services.onboarding.findings import Finding
from services.onboarding.requirements import Requirements
from services.onboarding.switch import CREDENTIALS_TEXT, SwitchCalendar, SwitchSlot, SwitchWindow, judge_switch

ROME = ITALY
HANDLING_WEEKS = (4, 6)  # seed 003: "circa 4-6 settimane" from the complete, compliant documentation
AGGREGATIONS = {RequestKind.NEW_AGGREGATION, RequestKind.AGGREGATOR_REGISTRY_CHANGE}
SUMMARY_PROBLEMS_PER_DOCUMENT = 1  # the summary shows one; the event's `non_compliant` holds them all


class OnboardingError(ValueError):
    """A command or message that the request's state refuses; the message names request and field."""


class RequestNotFound(OnboardingError):
    pass


@dataclass
class DocumentState:
    document_id: str
    document_type: str
    slot: str
    filename: str
    metadata: dict[str, str]
    received_on: date  # the Italian day it was received (received_at): the documentation's completion counts it
    compliant: bool | None = None  # None = not assessed yet
    problems: list[str] = field(default_factory=list)


@dataclass
class OnboardingRequest:
    opened: RequestOpened
    requirements: Requirements  # the version the request was opened with
    version: int = 0
    documents: dict[str, DocumentState] = field(default_factory=dict)  # by document_id, arrival order
    completeness: CompletenessChanged | None = None
    complete_on: date | None = None
    taken_in_charge: TakenInCharge | None = None
    switch: SwitchScheduled | None = None
    switch_refused: SwitchRefused | None = None

    @property
    def request_id(self) -> str:
        return self.opened.request_id

    @property
    def kind(self) -> RequestKind:
        return self.opened.kind

    @classmethod
    def replay(cls, events: Iterable[Payload], requirements: Requirements) -> OnboardingRequest:
        iterator = iter(events)
        first = next(iterator, None)
        if not isinstance(first, RequestOpened):
            raise OnboardingError(
                f"lo stream di una richiesta deve cominciare con request-opened, non con {type(first).__name__}"
            )
        if first.requirements_version != requirements.version:
            raise OnboardingError(
                f"richiesta {first.request_id}: aperta con i requisiti "
                f"{first.requirements_version}, ricostruita con {requirements.version}"
            )
        state = cls(opened=first, requirements=requirements, version=1)
        for event in iterator:
            state.apply(event)
        return state

    def apply(self, event: Payload) -> None:
        self.version += 1
        if isinstance(event, DocumentReceived):
            slot = self.requirements.slot_of(event.document_type, event.metadata)
            self.documents[event.document_id] = DocumentState(
                event.document_id, event.document_type, slot, event.filename, dict(event.metadata),
                local_date(event.received_at),
            )
        elif isinstance(event, DocumentAssessed):
            doc = self.documents[event.document_id]
            doc.compliant, doc.problems = event.compliant, [p.where() for p in event.problems]
        elif isinstance(event, CompletenessChanged):
            self.completeness = event
        elif isinstance(event, RequestComplete):
            self.complete_on = event.completed_on
        elif isinstance(event, TakenInCharge):
            self.taken_in_charge = event
        elif isinstance(event, SwitchScheduled):
            self.switch, self.switch_refused = event, None
        elif isinstance(event, SwitchRefused):
            self.switch_refused = event

    def clone(self) -> OnboardingRequest:
        return replace(
            self,
            documents={
                k: replace(d, metadata=dict(d.metadata), problems=list(d.problems)) for k, d in self.documents.items()
            },
        )

    def latest_by_slot(self) -> dict[str, DocumentState]:
        latest: dict[str, DocumentState] = {}
        for doc in self.documents.values():  # arrival order: a later document replaces an earlier one
            latest[doc.slot] = doc
        return latest


def local_date(moment: datetime) -> date:
    return italian_today(moment)


# -- decisions ------------------------------------------------------------------------------------


def open_request(
    command: RequestOpened, existing: OnboardingRequest | None, requirements: Requirements
) -> list[Payload]:
    """Opens a request; the same opening twice is a no-op, a different one under the same id is refused."""
    rid = command.request_id
    if existing is not None:
        if existing.opened.model_dump(exclude={"opened_at"}) == command.model_dump(exclude={"opened_at"}):
            return []
        raise OnboardingError(f"richiesta {rid}: già aperta (come {existing.kind}) con altri dati")
    if command.requirements_version != requirements.version:
        raise OnboardingError(
            f"richiesta {rid}: requirements_version {command.requirements_version!r} "
            f"non è la versione dei requisiti in uso {requirements.version!r}"
        )
    requirements.kind(command.kind)
    if command.kind in AGGREGATIONS and not command.spokes:
        raise OnboardingError(
            f"richiesta {rid}: spokes è vuoto; un'aggregazione deve indicare i suoi SPOKE (nota So.Re.Sa.)"
        )
    if command.kind not in AGGREGATIONS and command.spokes:
        raise OnboardingError(
            f"richiesta {rid}: spokes indicati per una richiesta {command.kind} (ammessi solo nelle aggregazioni)"
        )
    stsl = [command.structure_sts11, *(s.sts11 for s in command.spokes)]
    if len(set(stsl)) != len(stsl):
        raise OnboardingError(
            f"richiesta {rid}: in spokes un STS11 è ripetuto o è quello dell'HUB: {', '.join(stsl)}"
        )
    return [command, *_completeness_events(OnboardingRequest.replay([command], requirements), requirements)]


def receive_document(
    request: OnboardingRequest,
    received: DocumentReceived,
    findings: Sequence[Finding] | None,
    requirements: Requirements,
    now: datetime,
    calendar: SwitchCalendar,
) -> list[Payload]:
    """Records a document and, when `findings` is not None, its automatic assessment."""
    rid = request.request_id
    if received.document_id in request.documents:
        known = request.documents[received.document_id]
        if known.filename == received.filename and known.document_type == received.document_type:
            return []  # the same document delivered twice
        if received.document_id.endswith(f"-{received.sha256[:10]}"):  # the handlers' id: slot and content
            raise OnboardingError(
                f"richiesta {rid}: documento {received.filename} non registrato: lo stesso file è già stato "
                f"caricato come {known.filename} per «{document_label(known.slot)}»; non serve caricarlo di nuovo"
            )
        raise OnboardingError(  # an id an outside publisher gave twice
            f"richiesta {rid}: documento {received.filename} non registrato: il suo identificativo "
            f"{received.document_id} è già quello di {known.filename}; ogni documento ne ha uno suo"
        )
    requirements.document_type(received.document_type)
    slot = requirements.slot_of(received.document_type, received.metadata)
    required = required_slots(request, requirements)
    if slot not in required:
        hint = (
            " (il dato spoke_sts11 deve indicare uno SPOKE già presente sul CUP)"
            if received.document_type == "spoke-closure-act"
            else ""
        )
        # The structure reads this on the console: the documents by their names, the kind by the note's; the ids
        # in brackets for the CLI and the desk.
        raise OnboardingError(
            f"richiesta {rid}, documento {received.filename}: «{document_label(received.document_type)}» non è tra "
            f"i documenti di una richiesta «{KIND_LABELS.get(request.kind, request.kind)}» (document_type "
            f"{received.document_type!r}, tipo {request.kind}){hint}; richiesti: {_labels(required)}"
        )
    if request.taken_in_charge is not None:
        raise OnboardingError(
            f"richiesta {rid}: già presa in carico il {request.taken_in_charge.taken_on:%d/%m/%Y}; "
            f"il documento {received.filename} non è accettato"
        )
    events: list[Payload] = [received]
    if findings is not None:
        events.append(assessment(received, findings, "automatic", now))
    return _then(request, events, requirements, now, calendar)


def assessment(received: DocumentReceived, findings: Sequence[Finding], by: str, now: datetime) -> DocumentAssessed:
    problems = [Problem(message=f.message, sheet=f.sheet, row=f.row, column=f.column, cell=f.cell) for f in findings]
    return DocumentAssessed(
        request_id=received.request_id,
        document_id=received.document_id,
        document_type=received.document_type,
        compliant=not problems,
        problems=problems,
        assessed_by=by,
        assessed_at=now,
    )


def assess_document(
    request: OnboardingRequest,
    assessed: DocumentAssessed,
    requirements: Requirements,
    now: datetime,
    calendar: SwitchCalendar,
) -> list[Payload]:
    """A desk operator's (or an outside tool's) verdict on a document already received."""
    rid = request.request_id
    doc = request.documents.get(assessed.document_id)
    if doc is None:
        raise OnboardingError(f"richiesta {rid}: il document_id {assessed.document_id} non è mai stato ricevuto")
    if doc.document_type != assessed.document_type:
        raise OnboardingError(
            f"richiesta {rid}, documento {assessed.document_id}: il document_type "
            f"{assessed.document_type!r} non è quello ricevuto, {doc.document_type!r}"
        )
    if not assessed.compliant and not assessed.problems:
        raise OnboardingError(
            f"richiesta {rid}, documento {assessed.document_id}: problems è vuoto; "
            "un esito di non conformità deve indicarne il motivo"
        )
    if request.taken_in_charge is not None:
        raise OnboardingError(f"richiesta {rid}: già presa in carico; le valutazioni sono chiuse")
    if doc.compliant == assessed.compliant and doc.problems == [p.where() for p in assessed.problems]:
        return []
    return _then(request, [assessed], requirements, now, calendar)


def schedule_switch(
    request: OnboardingRequest, slot: SwitchSlot, credentials: str | None, calendar: SwitchCalendar, today: date
) -> list[Payload]:
    """Judges a (new) desired switch slot for a complete switch request, asked `today` (in Italy): the notice runs
    from today when the request was complete before."""
    rid = request.request_id
    if request.complete_on is None:
        raise OnboardingError(
            f"richiesta {rid}: non ancora completa ({_summary_of(request)}); "
            "lo switch si fissa quando la richiesta è completa"
        )
    # The option the formal protocolled request declares is the request's (seed 003: "indicazione dell'opzione
    # desiderata in merito alle credenziali OAuth2.0"): it decides the notice, and a form cannot override it.
    declared = declared_credentials(request)
    if declared is not None and credentials and credentials != declared:
        source = request.requirements.kind(request.kind).credentials_from or ""
        raise OnboardingError(
            f"richiesta {rid}: «{document_label(source)}» dichiara {_credentials_text(declared)} ({declared}), lo "
            f"switch è chiesto con {_credentials_text(credentials)} ({credentials}); vale l'opzione dichiarata: "
            "chieda lo switch con quella, oppure, per cambiarla, invii una nuova richiesta formale protocollata"
        )
    chosen = declared or credentials
    if not chosen:
        raise OnboardingError(
            f"richiesta {rid}: la richiesta non dichiara l'opzione delle credenziali; indichi se aggiornare le sole "
            "credenziali Basic (basic) o chiedere nuove credenziali OAuth2.0 (new-oauth2)"
        )
    return [_switch_event(request, slot, chosen, calendar, today, today)]


def required_slots(request: OnboardingRequest, requirements: Requirements) -> list[str]:
    on_cup = [s.sts11 for s in request.opened.spokes if s.already_on_cup]
    return requirements.slots_for(request.kind, on_cup)


def completeness(request: OnboardingRequest, requirements: Requirements) -> CompletenessChanged:
    required = required_slots(request, requirements)
    latest = request.latest_by_slot()
    missing = [s for s in required if s not in latest]
    pending = [s for s in required if s in latest and latest[s].compliant is None]
    bad = {s: latest[s].problems for s in required if s in latest and latest[s].compliant is False}
    compliant = sum(1 for s in required if s in latest and latest[s].compliant)
    present = len(required) - len(missing)
    parts = [f"{present} di {len(required)} presenti"]
    if bad:
        shown = []
        for slot, problems in bad.items():
            more = len(problems) - SUMMARY_PROBLEMS_PER_DOCUMENT
            extra = "; e un altro rilievo" if more == 1 else f"; e altri {more} rilievi" if more > 1 else ""
            first = "; ".join(problems[:SUMMARY_PROBLEMS_PER_DOCUMENT])
            shown.append(f"{document_label(slot)} ({first}{extra})")
        parts.append(f"{len(bad)} {'non conforme' if len(bad) == 1 else 'non conformi'}: {', '.join(shown)}")
    if pending:
        parts.append(f"{len(pending)} in attesa di valutazione: {_labels(pending)}")
    if missing:
        parts.append(f"{'manca' if len(missing) == 1 else 'mancano'}: {_labels(missing)}")
    if not missing and not pending and not bad:
        parts.append("tutti conformi")
    return CompletenessChanged(
        request_id=request.request_id,
        required=len(required),
        present=present,
        compliant=compliant,
        missing=missing,
        pending=pending,
        non_compliant=bad,
        summary=", ".join(parts),
    )


def _labels(slots: Iterable[str]) -> str:
    return ", ".join(document_label(slot) for slot in slots)


def declared_credentials(request: OnboardingRequest) -> str | None:
    """The credentials option the request's formal protocolled request declares: the metadata `credentials` of the
    latest document of the kind's `credentials_from` slot, when compliant. No other document declares it (a
    `credentials` key on the endpoint form or the switch date is not the request's choice)."""
    source = request.requirements.kind(request.kind).credentials_from
    doc = request.latest_by_slot().get(source or "")
    if doc is None or not doc.compliant:
        return None
    return doc.metadata.get("credentials") or None


def _credentials_text(credentials: str) -> str:
    return CREDENTIALS_TEXT.get(credentials, credentials)


def declared_switch_slot(request: OnboardingRequest, requirements: Requirements) -> SwitchSlot | None:
    source = requirements.kind(request.kind).switch_from
    doc = request.latest_by_slot().get(source or "")
    if doc is None or not doc.metadata.get("switch_date") or not doc.metadata.get("switch_window"):
        return None
    return SwitchSlot(
        date.fromisoformat(doc.metadata["switch_date"]), SwitchWindow.parse(doc.metadata["switch_window"])
    )


# -- internals ------------------------------------------------------------------------------------


def advance(request: OnboardingRequest, events: Sequence[Payload]) -> OnboardingRequest:
    """The state after `events`, leaving `request` untouched."""
    state = request.clone()
    for event in events:
        state.apply(event)
    return state


def _completeness_events(request: OnboardingRequest, requirements: Requirements) -> list[Payload]:
    current = completeness(request, requirements)
    return [] if request.completeness == current else [current]


def _then(
    request: OnboardingRequest,
    events: list[Payload],
    requirements: Requirements,
    now: datetime,
    calendar: SwitchCalendar,
) -> list[Payload]:
    """After a change: completeness, and when complete, taken in charge and the switch decision."""
    state = advance(request, events)
    news = _completeness_events(state, requirements)
    state = advance(state, news)
    events += news
    current = state.completeness
    if current is None or state.complete_on is not None or current.compliant != current.required:
        return events
    today = local_date(now)
    completed_on = completion_day(state, requirements, today)
    rid = request.request_id
    done: list[Payload] = [
        RequestComplete(request_id=rid, completed_on=completed_on),
        TakenInCharge(  # taken in charge today; the handling time runs from the documentation's completion
            request_id=rid,
            taken_on=today,
            expected_completion_from=completed_on + timedelta(weeks=HANDLING_WEEKS[0]),
            expected_completion_to=completed_on + timedelta(weeks=HANDLING_WEEKS[1]),
        ),
    ]
    state = advance(state, done)
    events += done
    if requirements.kind(request.kind).switch:
        slot = declared_switch_slot(state, requirements)
        credentials = declared_credentials(state)
        if slot is not None and credentials is not None:
            # declared in the documents: asked when they were complete, judged today (a day past by now is refused)
            events.append(_switch_event(state, slot, credentials, calendar, today, completed_on))
    return events


def completion_day(request: OnboardingRequest, requirements: Requirements, today: date) -> date:
    """The day the documentation was complete and compliant as received (seed 003: "decorrenti dalla ricezione della
    documentazione completa e conforme"): the latest day a required slot's document, the one that counts, arrived.
    A desk's verdict days later does not move it; a corrected document received later does. Never after `today`
    (a received_at in the future, from an outside publisher's clock, is not a day that has come)."""
    latest = request.latest_by_slot()
    received = [latest[slot].received_on for slot in required_slots(request, requirements) if slot in latest]
    return min(max(received, default=today), today)


def _switch_event(
    request: OnboardingRequest,
    slot: SwitchSlot,
    credentials: str,
    calendar: SwitchCalendar,
    today: date,
    asked_on: date,
) -> Payload:
    assert request.complete_on is not None
    decision = judge_switch(slot, credentials, request.complete_on, request.opened.municipality_istat, calendar,
                            today=today, asked_on=asked_on)
    rid = request.request_id
    if decision.accepted:
        return SwitchScheduled(
            request_id=rid,
            switch_date=slot.day,
            window_start=f"{slot.window.start:%H:%M}",
            window_end=f"{slot.window.end:%H:%M}",
            credentials=credentials,  # type: ignore[arg-type]
            warning="; ".join(decision.warnings) or None,
        )
    proposal = decision.proposal
    return SwitchRefused(
        request_id=rid,
        switch_date=slot.day,
        window_start=f"{slot.window.start:%H:%M}",
        window_end=f"{slot.window.end:%H:%M}",
        reasons=[*decision.reasons, *decision.warnings],
        proposed_date=proposal.day,
        proposed_window_start=f"{proposal.window.start:%H:%M}",
        proposed_window_end=f"{proposal.window.end:%H:%M}",
    )


def _summary_of(request: OnboardingRequest) -> str:
    return request.completeness.summary if request.completeness else "nessun documento"
