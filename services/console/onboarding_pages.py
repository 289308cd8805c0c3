"""The onboarding pages: the desk's dashboard, a request's page (documents assessed at once, the desk's
verdicts) and the switch request judged by the onboarding service's own rule."""

from __future__ import annotations

import mimetypes
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import structlog
from fastapi import HTTPException, Response
from fastapi.responses import FileResponse, RedirectResponse
from starlette.datastructures import UploadFile

from contracts.onboarding import DocumentAssessed, SwitchRefused, SwitchScheduled, document_label
from services.console.access import (
    DESK_VERDICT,
    DOWNLOAD_ONBOARDING,
    LIST_ONBOARDING,
    READ_ONBOARDING,
    SWITCH_REQUEST,
    UPLOAD_ONBOARDING,
    record_access,
)
from services.console.instance_pages import attachment_headers
from services.console.labels import CREDENTIALS_OPTIONS, ONBOARDING_STATUS_LABELS, slot_text
from services.console.onboarding_facts import FactField, declared, declared_names, fact_fields, read_facts
from services.console.web import Console, Ctx, console_of, page, pages, read_form, route
from services.onboarding import facade as onboarding  # the onboarding service's one door
from services.onboarding.facade import DashboardProjection, SwitchCalendar, SwitchSlot, SwitchWindow, load_patron_days
from services.onboarding.facade import dashboard as onboarding_rows
from services.runtime.eventstore import EventStore

log = structlog.get_logger("console")

# ---------------------------------------------------------------- onboarding
def _onboarding_deps(console: Console) -> onboarding.OnboardingDeps:
    return onboarding.OnboardingDeps(pool=console.pool, files=console.files,
                                     calendar=SwitchCalendar(load_patron_days()),
                                     store=EventStore(console.pool, source="/flows/console",
                                                      projections=[DashboardProjection()]))


@route(pages, "GET", "/onboarding", LIST_ONBOARDING, "page")
async def onboarding_dashboard(ctx: Ctx, stato: str | None = None) -> Response:
    # A state the dashboard does not know (an old link, a hand-typed URL) is said and not applied, as the instance
    # list does with its filters: applied, it listed no request, as if none were in that state.
    error = None
    if stato and stato not in ONBOARDING_STATUS_LABELS:
        error, stato = f"Stato {stato!r} sconosciuto: sono mostrate tutte le richieste.", None
    rows = await onboarding_rows(console_of(ctx.request).pool, stato or None)
    if ctx.principal.role == "structure":
        rows = [r for r in rows if r["structure_sts11"] == ctx.principal.structure]
    # The requests counted by kind and state (of those listed): the kinds as rows, the states that occur as columns
    # in the order of the dashboard's states.
    counts = Counter((r["kind"], r["status"]) for r in rows)
    kinds = sorted({kind for kind, _ in counts})
    states = [s for s in ONBOARDING_STATUS_LABELS if any(status == s for _, status in counts)]
    states += sorted({status for _, status in counts} - set(states))
    return page(ctx, "onboarding.html", "Onboarding delle strutture", active="/onboarding", rows=rows, stato=stato,
                error=error, counts=counts, count_kinds=kinds, count_states=states,
                kind_totals=Counter(r["kind"] for r in rows))


def _upload_choices(req: onboarding.OnboardingRequest) -> list[str]:
    """What the upload's document select offers: the documents this request requires, the workbook of tracciati
    when it requires a tracciato, and a document required once per SPOKE (the closure or cessation act) once per
    SPOKE that needs it, as its slot: the choice says which SPOKE it is for (add_document declares it), the one fact
    the service needs to file it. Offered as the bare type, it was refused for naming no SPOKE, and the request
    stayed incomplete; another kind's document was accepted by the list, then refused by the service."""
    required = onboarding.required_slots(req, req.requirements)
    wanted = sorted({slot.partition(":")[0] for slot in required})
    tracciati = any(req.requirements.document_type(t).assessment == "tracciato" for t in wanted)
    types = ["tracciati"] if tracciati else []
    for type_id in wanted:
        if req.requirements.document_type(type_id).per_spoke_already_on_cup:
            types += [slot for slot in required if slot.partition(":")[0] == type_id]
        else:
            types.append(type_id)
    return types


def _fact_fields(req: onboarding.OnboardingRequest, choices: list[str]) -> dict[str, list[FactField]]:
    """The facts each offered document's rules ask for (a tracciato's none: it is read cell by cell)."""
    fields = {}
    for choice in choices:
        if choice == "tracciati":
            continue
        type_id, named = req.requirements.slot_document(choice)
        asked = fact_fields(choice, req.requirements.document_type(type_id), named)
        if asked:
            fields[choice] = asked
    return fields


def _declares(ctx: Ctx) -> bool:
    """Who declares a document's facts on the upload: whoever may give the desk's verdict. Declared facts ARE a
    verdict (the service judges the document on them at once): a structure saying "signed: yes" of its own document
    would pass it. A structure's upload waits for the desk, as before."""
    return ctx.principal.role in DESK_VERDICT.roles


async def _onboarding_view(ctx: Ctx, message: str | None = None, level: str = "info",
                           switch: dict[str, Any] | None = None,
                           upload: dict[str, Any] | None = None) -> dict[str, Any]:
    assert ctx.row is not None
    deps = _onboarding_deps(console_of(ctx.request))
    request_id = str(ctx.row["request_id"])
    req = await onboarding.require(deps, request_id)
    history = await deps.store.read_stream(onboarding.stream_of(request_id))
    findings: dict[str, list[dict[str, Any]]] = {}
    received_by: dict[str, str] = {}
    for event in history:
        if event.type == "onboarding.document-assessed":
            findings[event.data["document_id"]] = list(event.data.get("problems") or [])
        elif event.type == "onboarding.document-received":
            received_by[event.data["document_id"]] = str(event.data.get("received_by") or event.actor)
    latest = req.latest_by_slot()
    required = onboarding.required_slots(req, req.requirements)
    types = _upload_choices(req)
    slots = []
    for slot in required:
        doc = latest.get(slot)
        state = ("mancante" if doc is None else "da valutare" if doc.compliant is None
                 else "conforme" if doc.compliant else "non conforme")
        # the facts the document was judged on, and who declared them (the event's actor: the desk's user, or the
        # CLI's), so the structure reads what its document was held to
        facts = declared(doc.metadata, req.requirements.document_type(doc.document_type),
                         req.requirements.slot_document(slot)[1]) if doc else []
        slots.append({"slot": slot, "state": state, "doc": doc,
                      "findings": findings.get(doc.document_id, []) if doc else [],
                      "facts": facts, "declared_by": received_by.get(doc.document_id) if doc and facts else None})
    can_declare = _declares(ctx)
    return {"row": ctx.row, "req": req, "slots": slots, "message": message, "level": level,
            "types": types, "per_spoke": any(":" in t for t in types),
            "can_upload": ctx.principal.role in UPLOAD_ONBOARDING.roles,
            "can_download": ctx.principal.role in DOWNLOAD_ONBOARDING.roles,
            # the facts form is the desk's: a fieldset per document choice whose rules ask for facts
            "facts": _fact_fields(req, types) if can_declare else {},
            # said to a structure's user: what it uploads other than a tracciato waits for the desk
            "desk_judges": not can_declare and any(
                req.requirements.document_type(req.requirements.slot_document(t)[0]).assessment == "metadata"
                for t in types if t != "tracciati"),
            "upload": upload or {"tipo": None, "values": {}, "errors": {}},
            # the form is offered where the service would judge a slot (its rule still decides)
            "can_switch": ctx.principal.role in SWITCH_REQUEST.roles and req.complete_on is not None
            and req.requirements.kind(req.kind).switch,
            "switch": switch or {"form": {"data": "", "dalle": "09:00", "alle": "11:00", "credenziali": ""},
                                 "errors": {}, "proposal": None},
            # declared in the formal request, the option is the request's: said, not offered (the service refuses
            # another); otherwise the form asks for it
            "declared_credentials": CREDENTIALS_OPTIONS.get(onboarding.declared_credentials(req) or ""),
            "credentials_options": CREDENTIALS_OPTIONS,
            "is_desk": ctx.principal.role in DESK_VERDICT.roles}


def _request_title(row: Any) -> str:
    """A request's page title: "Richiesta di onboarding ONB-...", not a bare "Richiesta" (the instance pages have
    theirs: "Richiesta inviata")."""
    return f"Richiesta di onboarding {row['request_id']}"


@route(pages, "GET", "/onboarding/{request}", READ_ONBOARDING, "page")
async def onboarding_request(ctx: Ctx) -> Response:
    assert ctx.row is not None
    return page(ctx, "onboarding_request.html", _request_title(ctx.row), active="/onboarding",
                **await _onboarding_view(ctx))


async def _add_uploaded(ctx: Ctx, request_id: str,
                        form: Any) -> tuple[int, str | None, str, dict[str, Any] | None]:
    """The uploaded document given to the onboarding service with the facts declared of it, as the CLI's
    `add-document --meta`: (status, message, level, the upload form again when it is refused for its facts)."""
    upload, doc_type = form.get("documento"), str(form.get("tipo") or "")
    values = {name: str(form.get(name) or "") for name in form if name.startswith("dato:")}
    if values and not _declares(ctx):
        # the page offers a structure no facts; these were sent some other way: refused, not silently dropped
        if declared_names(values):
            return 422, ("Documento non accettato, non è stato registrato nulla: i dati del documento (protocollo, "
                         "firma...) li dichiara lo sportello di onboarding quando lo valuta. Lo carichi senza "
                         "dati."), "danger", None
        values = {}
    metadata: dict[str, str] = {}
    if values:
        req = await onboarding.require(_onboarding_deps(console_of(ctx.request)), request_id)
        metadata, errors = read_facts(values, doc_type, _fact_fields(req, _upload_choices(req)))
        if errors:
            message = ("Documento non caricato, non è stato registrato nulla: corregga i dati indicati. "
                       + " ".join(errors.values()))
            return 422, message, "danger", {"tipo": doc_type, "values": values, "errors": errors}
    if not isinstance(upload, UploadFile) or not upload.filename:
        return 422, "Scelga il file da caricare.", "danger", {"tipo": doc_type, "values": values, "errors": {}}
    name = Path(upload.filename).name
    content = await upload.read()
    try:
        added = await onboarding.add_document(_onboarding_deps(console_of(ctx.request)), request_id,
                                              name, content, doc_type, metadata, ctx.principal.name)
    except onboarding.DocumentNotStored as exc:
        log.warning("store.full", path=str(exc.path), request=request_id, document=name, bytes=exc.size,
                    error=str(exc.__cause__), step="onboarding document")
        return 507, (f"Documento {name} non salvato: spazio su disco esaurito nell'archivio dei documenti. Non è "
                     "stato registrato nulla: riprovi più tardi (se il problema continua, avvisi l'esercizio)."), \
            "danger", {"tipo": doc_type, "values": values, "errors": {}}
    except (onboarding.OnboardingError, ValueError) as exc:
        return 422, f"Documento non accettato: {exc}", "danger", {"tipo": doc_type, "values": values, "errors": {}}
    # Only a tracciato or a document whose facts were declared is judged at once; any other document waits for the
    # desk's verdict: "valutato" would have said otherwise.
    level = "success"
    if not added.events and added.ignored_sheets:
        message = f"Documento {name}: nessuno dei suoi fogli è un tracciato richiesto, non è stato registrato nulla."
        level = "warning"
    elif any(isinstance(e, DocumentAssessed) for e in added.events):
        message = f"Documento {name} ricevuto e valutato: l'esito è nella tabella dei documenti."
    elif not added.events:
        # the same file for the same document: the service's no-op. Said, since facts declared now change nothing
        # (the desk's verdict does): "ricevuto" would have said it was recorded again.
        message = (f"Documento {name} già ricevuto: non è stato registrato di nuovo, né valutato con i dati indicati "
                   "ora. Per cambiarne l'esito registri il verdetto dello sportello.")
    else:
        message = f"Documento {name} ricevuto: lo valuterà lo sportello di onboarding."
    if added.ignored_sheets:
        message += f" Fogli non richiesti, ignorati: {', '.join(added.ignored_sheets)}."
    return 200, message, level, None


@route(pages, "POST", "/onboarding/{request}/documenti", UPLOAD_ONBOARDING, "action")
async def onboarding_upload(ctx: Ctx) -> Response:
    """A document, assessed at once: a tracciato's findings come back with sheet, row, column and rule.

    A full disk answers 507 at once with nothing stored or recorded (the file store removes a partial file), and
    the person uploading tries again later: the file store's disk (the page names the document), or this server's
    temporary folder, where a large upload is spooled while it arrives (read_form: the name is not known yet).
    Each refusal is a `store.full` warning for the operators."""
    assert ctx.row is not None
    status, message, level, upload = await _add_uploaded(ctx, str(ctx.row["request_id"]),
                                                         await read_form(ctx.request))
    ctx.row = await console_of(ctx.request).pool.fetchrow("SELECT * FROM onboarding_dashboard WHERE request_id = $1",
                                                        ctx.row["request_id"])
    return page(ctx, "onboarding_request.html", _request_title(ctx.row), status=status,
                active="/onboarding", **await _onboarding_view(ctx, message, level, upload=upload))


@route(pages, "GET", "/onboarding/{request}/documenti/{document}", DOWNLOAD_ONBOARDING, "download")
async def onboarding_document(ctx: Ctx, document: str) -> Response:
    """A document of the request as it was received (a workbook of several tracciati: the whole workbook),
    recorded in the access log: a structure's documents name people (its staff, its users)."""
    assert ctx.row is not None
    console = console_of(ctx.request)
    request_id = str(ctx.row["request_id"])
    received = [e for e in await console.store.read_stream(onboarding.stream_of(request_id))
                if e.type == "onboarding.document-received" and e.data.get("document_id") == document]
    if not received:  # the id is only ever looked up in the request's own history, never a path
        raise HTTPException(404)
    doc = received[-1].data
    if not console.files.exists(doc["sha256"]):
        raise HTTPException(503, "Il documento è registrato ma il suo file non è nell'archivio: avvisi l'esercizio.")
    await record_access(console.store, ctx.principal, "onboarding-document-download", None, ctx.address,
                        {"request": request_id, "document": document, "file": doc["filename"]})
    media_type = mimetypes.guess_type(doc["filename"])[0] or "application/octet-stream"
    return FileResponse(console.files.path(doc["sha256"]), media_type=media_type,
                        headers=attachment_headers(doc["filename"]))




@route(pages, "POST", "/onboarding/{request}/switch", SWITCH_REQUEST, "action")
async def onboarding_switch(ctx: Ctx) -> Response:
    """A (new) switch slot, judged by the onboarding service's own rule (onboarding.request_switch, as the
    `onboarding switch` command): scheduled, or refused with the earliest valid slot proposed."""
    assert ctx.row is not None
    raw = await ctx.request.form()
    form = {k: str(raw.get(k) or "").strip() for k in ("data", "dalle", "alle", "credenziali")}
    errors: dict[str, str] = {}
    day = window = None
    try:
        day = date.fromisoformat(form["data"])
    except ValueError:
        errors["data"] = f"Data non valida ({form['data']!r}): attesa AAAA-MM-GG."
    try:
        window = SwitchWindow.parse(f"{form['dalle']}-{form['alle']}")
    except ValueError:
        errors["alle"] = f"Fascia oraria non valida ({form['dalle']}-{form['alle']}): attesa OO:MM - OO:MM."
    if form["credenziali"] not in ("", *CREDENTIALS_OPTIONS):
        errors["credenziali"] = f"Credenziali {form['credenziali']!r} sconosciute: basic o new-oauth2."
    status, message, level, proposal = 200, None, "success", None
    if errors:
        status, message, level = 422, "Lo switch non è stato chiesto: corregga i campi indicati.", "danger"
    else:
        assert day is not None and window is not None
        try:
            events = await onboarding.request_switch(_onboarding_deps(console_of(ctx.request)),
                                                     str(ctx.row["request_id"]), SwitchSlot(day, window),
                                                     form["credenziali"] or None, ctx.principal.name)
        except (onboarding.OnboardingError, ValueError) as exc:
            status, message, level = 409, f"Switch non accettato: {exc}", "danger"
        else:
            decision = events[-1]
            if isinstance(decision, SwitchScheduled):
                chosen = slot_text(decision.switch_date, decision.window_start, decision.window_end)
                message = f"Switch pianificato per {chosen}" + (f" (attenzione: {decision.warning})."
                                                                if decision.warning else ".")
            elif isinstance(decision, SwitchRefused):
                level = "warning"
                proposal = {"data": decision.proposed_date.isoformat(), "dalle": decision.proposed_window_start,
                            "alle": decision.proposed_window_end,
                            "testo": slot_text(decision.proposed_date, decision.proposed_window_start,
                                                decision.proposed_window_end)}
                asked = slot_text(decision.switch_date, decision.window_start, decision.window_end)
                message = (f"Lo switch richiesto per {asked} non è possibile: {'; '.join(decision.reasons)}. "
                           f"Prima data valida: {proposal['testo']}.")
    ctx.row = await console_of(ctx.request).pool.fetchrow("SELECT * FROM onboarding_dashboard WHERE request_id = $1",
                                                        ctx.row["request_id"])
    switch = {"form": form, "errors": errors, "proposal": proposal}
    return page(ctx, "onboarding_request.html", _request_title(ctx.row), status=status,
                active="/onboarding", **await _onboarding_view(ctx, message, level, switch))


@route(pages, "POST", "/onboarding/{request}/verdetto", DESK_VERDICT, "action")
async def onboarding_verdict(ctx: Ctx) -> Response:
    assert ctx.row is not None
    form = await ctx.request.form()
    document, verdict = str(form.get("documento") or ""), str(form.get("esito") or "")
    reason = str(form.get("motivo") or "").strip()
    if verdict not in ("conforme", "non-conforme") or (verdict == "non-conforme" and not reason):
        # the request's page again, saying which document's verdict was not recorded (its form is still there)
        view = await _onboarding_view(ctx, level="danger")
        known = view["req"].documents.get(document)
        named = f" per «{document_label(known.slot)}» ({known.filename})" if known is not None else ""
        view["message"] = (f"Esito non registrato{named}: indichi l'esito e, se il documento non è conforme, il "
                           "motivo.")
        return page(ctx, "onboarding_request.html", _request_title(ctx.row), status=422, active="/onboarding",
                    **view)
    try:
        await onboarding.desk_verdict(_onboarding_deps(console_of(ctx.request)), str(ctx.row["request_id"]), document,
                                    verdict == "conforme", [reason] if reason else [], ctx.principal.name)
    except onboarding.OnboardingError as exc:
        raise HTTPException(409, f"Esito non registrato: {exc}") from exc
    return RedirectResponse(f"/onboarding/{ctx.row['request_id']}", status_code=303)

