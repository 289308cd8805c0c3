"""`onboarding`: the desk's CLI for requests of private accredited structures (seed 003).

It runs the service's use cases in this process through their one door, services/onboarding/facade.py, and
writes to the event store directly; the events reach Kafka through the outbox.

    onboarding requirements [KIND]
    onboarding open --kind new-aggregation --name "..." --sts11 150123 --municipality 063049 \\
                    --spoke 150456:"Lab Partenope":on-cup
    onboarding add-document REQ FILE --type tracciato-prestazioni
    onboarding add-document REQ annex-a1.xlsx --type tracciati          # every sheet of the workbook
    onboarding add-document REQ delibera.pdf --type accreditation-resolution --meta protocol=2026/77 ...
    onboarding assess REQ DOC --non-compliant --reason "unsigned"
    onboarding switch REQ --date 2026-10-12 --window 09:00-11:00 [--credentials basic]
    onboarding status [REQ]
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import typer

from contracts.onboarding import SOURCE, Payload, RequestKind, RequestOpened, Spoke
from services.cli.common import (
    UserError,
    console,
    database,
    operator_name,
    run,
    settings,
    table,
    user_errors,
    validation_message,
)
from services.onboarding import facade as onboarding
from services.runtime.filestore import FileStore

T = TypeVar("T")
app = typer.Typer(
    help="Onboarding of private accredited structures: requests, documents, switch dates.", no_args_is_help=True
)


def _actor(by: str | None) -> str:
    """Who acts, as the request's history records them: --by, else `cli:` and the shared operator name of every
    `flows` command (FLOWS_OPERATOR, or the login), so a shell's actor is named the same way everywhere."""
    return by or f"cli:{operator_name()}"


@asynccontextmanager
async def _deps() -> AsyncIterator[onboarding.OnboardingDeps]:
    cfg = settings()
    async with database(cfg) as pool:
        await onboarding.prepare(pool)
        cfg.files_dir.mkdir(parents=True, exist_ok=True)
        yield onboarding.connect(pool, FileStore(cfg.files_dir), source=SOURCE)


def _print_events(events: list[Payload]) -> None:
    if not events:
        console.print("nothing changed (already recorded)")
    for event in events:
        name = type(event).__name__
        d = event.model_dump(mode="json")
        if name == "DocumentAssessed":
            verdict = "[green]compliant[/]" if d["compliant"] else "[red]NON-COMPLIANT[/]"
            console.print(f"{d['document_type']} ({d['document_id']}): {verdict}")
            for problem in event.problems:  # type: ignore[attr-defined]
                console.print(f"  - {problem.where()}")
        elif name == "CompletenessChanged":
            console.print(f"[bold]{d['summary']}[/]")
        elif name == "TakenInCharge":
            console.print(
                f"[green]taken in charge[/] on {d['taken_on']}, expected completion "
                f"{d['expected_completion_from']} .. {d['expected_completion_to']}"
            )
        elif name == "SwitchScheduled":
            console.print(
                f"[green]switch scheduled[/] {d['switch_date']} {d['window_start']}-{d['window_end']}"
                + (f" (warning: {d['warning']})" if d["warning"] else "")
            )
        elif name == "SwitchRefused":
            console.print(
                f"[red]switch refused[/] {d['switch_date']} {d['window_start']}-{d['window_end']}: "
                + "; ".join(d["reasons"])
            )
            console.print(
                f"  earliest valid slot: {d['proposed_date']} {d['proposed_window_start']}-{d['proposed_window_end']}"
            )
        elif name == "RequestComplete":
            console.print(f"[green]request complete[/] on {d['completed_on']}")


@app.command("requirements")
@user_errors
def requirements_cmd(kind: RequestKind | None = typer.Argument(None), version: str | None = None) -> None:
    """The documents each kind of request needs (from the versioned data): each by its Italian name, and what is
    checked of it (the tracciato's sheet, or the facts declared with --meta and their rules)."""
    req = onboarding.load_requirements(version)
    kinds = [kind.value] if kind else list(req.kinds)
    for k in kinds:
        spec = req.kind(k)
        rows = [(t, req.document_type(t).title, req.document_type(t).assessment, _checks(req.document_type(t)))
                for t in spec.documents]
        console.print(
            table(
                f"{k}: {spec.title} (annex {spec.annex}, requirements {req.version})",
                ["document type", "name", "assessed by", "checks"],
                rows,
            )
        )


def _checks(doc: onboarding.DocumentType) -> str:
    """What the requirements check of a document type, from their data: `sheet Prestazioni`, or the declared facts
    and their rules (`protocol present, signed yes`), once per SPOKE already on the CUP where so required."""
    if doc.sheet is not None:
        return f"sheet {doc.sheet}"
    facts = ", ".join(f"{key} {rule}" for key, rule in doc.meta.items())
    return facts + ("; one per SPOKE already on the CUP" if doc.per_spoke_already_on_cup else "")


# the fields of RequestOpened as the options of `open` name them
OPEN_OPTIONS = {"structure_sts11": "--sts11", "municipality_istat": "--municipality", "structure_name": "--name",
                "request_id": "--id", "spokes": "--spoke", "other_structures": "--other-structure",
                "opened_by": "--by", "kind": "--kind"}


@app.command("open")
@user_errors
def open_cmd(
    kind: RequestKind = typer.Option(..., help="Kind of request."),
    name: str = typer.Option(..., help="Requesting entity (ente)."),
    sts11: str = typer.Option(..., help="STS11 of the structure (the HUB for aggregations)."),
    municipality: str = typer.Option(..., help="ISTAT code of the structure's municipality."),
    spoke: list[str] = typer.Option([], help="SPOKE as STS11:NAME, or STS11:NAME:on-cup when already on the CUP."),
    other_structure: list[str] = typer.Option([], help="STS11 of another structure of the entity."),
    request_id: str | None = typer.Option(None, "--id", help="Request id (generated when omitted)."),
    by: str | None = typer.Option(None, help="Who opens it (default cli:<FLOWS_OPERATOR or login>)."),
) -> None:
    """Open a request; prints its id and what it requires."""
    spokes = []
    for text in spoke:
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "on-cup"):
            raise UserError(f"--spoke {text!r}: write STS11:NAME or STS11:NAME:on-cup")
        spokes.append(Spoke(sts11=parts[0], name=parts[1], already_on_cup=len(parts) == 3))
    req = onboarding.load_requirements()
    try:
        command = RequestOpened(
            request_id=request_id or onboarding.new_request_id(),
            kind=kind,
            structure_name=name,
            structure_sts11=sts11,
            municipality_istat=municipality,
            spokes=spokes,
            other_structures=other_structure,
            requirements_version=req.version,
            opened_at=datetime.now(UTC),
            opened_by=_actor(by),
        )
    except pydantic.ValidationError as exc:
        raise UserError(f"open: {validation_message(exc, OPEN_OPTIONS)}") from exc
    except ValueError as exc:
        raise UserError(f"open: {exc}") from exc

    async def go() -> list[Payload]:
        async with _deps() as deps:
            return await onboarding.open_request(deps, command, _actor(by))

    events = _guard(go)
    console.print(f"request [bold]{command.request_id}[/] ({kind.value})")
    _print_events(events)


def _parse_meta(meta: list[str]) -> dict[str, str]:
    parsed = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--meta {item!r}: write key=value")
        parsed[key.strip()] = value.strip()
    return parsed


@app.command("add-document")
@user_errors
def add_document_cmd(
    request: str = typer.Argument(..., help="Request id."),
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    type_: str = typer.Option(..., "--type", help="Document type id, a SPOKE's slot (spoke-closure-act:150456), "
                                                  "or `tracciati` for a workbook of sheets."),
    meta: list[str] = typer.Option([], help="Declared fact key=value (protocol, signed, credentials...)."),
    by: str | None = typer.Option(None),
) -> None:
    """Add a document: assessed at once (tracciati cell by cell, others by --meta) or left to the desk."""
    metadata = _parse_meta(meta)
    content = file.read_bytes()

    async def go() -> onboarding.Added:
        async with _deps() as deps:
            return await onboarding.add_document(deps, request, file.name, content, type_, metadata, _actor(by))

    added = _guard(go)
    _print_events(added.events)
    if added.ignored_sheets:
        console.print(f"sheets not required for this request, ignored: {', '.join(added.ignored_sheets)}")


@app.command("assess")
@user_errors
def assess_cmd(
    request: str = typer.Argument(...),
    document: str = typer.Argument(..., help="Document id, or a document type (its latest document)."),
    compliant: bool = typer.Option(..., "--compliant/--non-compliant"),
    reason: list[str] = typer.Option([], help="Why it is not compliant (repeatable)."),
    by: str | None = typer.Option(None),
) -> None:
    """A desk operator's verdict on a document."""

    async def go() -> list[Payload]:
        async with _deps() as deps:
            return await onboarding.desk_verdict(deps, request, document, compliant, reason, _actor(by))

    _print_events(_guard(go))


@app.command("switch")
@user_errors
def switch_cmd(
    request: str = typer.Argument(...),
    on: str = typer.Option(..., "--date", help="Desired day, YYYY-MM-DD."),
    window: str = typer.Option(..., help="Desired window HH:MM-HH:MM within 08:30-17:00."),
    credentials: str | None = typer.Option(None, help="basic or new-oauth2, when the formal request declares none "
                                                      "(another than the declared option is refused)."),
    by: str | None = typer.Option(None),
) -> None:
    """Ask for a (new) switch slot; refused with the earliest valid slot when a rule is broken."""
    try:
        day = date.fromisoformat(on)
    except ValueError:  # Python's own words ("month must be in 1..12") named neither the option nor the value
        raise typer.BadParameter(f"{on!r} is not a day: give YYYY-MM-DD, e.g. 2026-12-21",
                                 param_hint="--date") from None
    try:
        slot = onboarding.SwitchSlot(day, onboarding.SwitchWindow.parse(window))
    except ValueError as exc:
        raise UserError(f"switch: {exc}") from exc

    async def go() -> list[Payload]:
        async with _deps() as deps:
            return await onboarding.request_switch(deps, request, slot, credentials, _actor(by))

    _print_events(_guard(go))


@app.command("status")
@user_errors
def status_cmd(
    request: str | None = typer.Argument(None, help="A request id; all requests when omitted."),
    state: str | None = typer.Option(None, "--status", help="Dashboard filter, e.g. non-compliant."),
) -> None:
    """What is missing, what is non-compliant, the dates: one request, or the dashboard of all."""
    from services.console.labels import ONBOARDING_STATUS_LABELS  # the dashboard's states (a unit test keeps them)

    # An unknown state is refused naming the known ones: applied, it printed "onboarding requests (0)" as if none
    # were in it.
    if state is not None and state not in ONBOARDING_STATUS_LABELS:
        raise typer.BadParameter(f"{state!r} is not a dashboard state: one of {', '.join(ONBOARDING_STATUS_LABELS)}",
                                 param_hint="--status")

    async def one() -> None:
        async with _deps() as deps:
            req = await onboarding.require(deps, request or "")
            _print_request(req)

    async def all_() -> None:
        async with _deps() as deps:
            rows = await onboarding.dashboard(deps.pool, state)
        console.print(
            table(
                f"onboarding requests ({len(rows)})",
                [
                    "request",
                    "kind",
                    "structure",
                    "status",
                    "present",
                    "compliant",
                    "taken in charge",
                    "expected",
                    "switch",
                ],
                [
                    (
                        r["request_id"],
                        r["kind"],
                        f"{r['structure_name']} ({r['structure_sts11']})",
                        r["status"],
                        f"{r['present']}/{r['required']}",
                        f"{r['compliant']}/{r['required']}",
                        r["taken_on"],
                        _span(r["expected_from"], r["expected_to"]),
                        _switch(r),
                    )
                    for r in rows
                ],
            )
        )

    _guard(one if request else all_)


def _span(start: object, end: object) -> str:
    return f"{start} .. {end}" if start else ""


def _switch(row: Mapping[str, Any]) -> str:
    """The dashboard's switch column from the row's data: the scheduled slot, or a refusal's earliest valid slot
    (its reasons are the onboarding service's Italian sentences: `onboarding status REQUEST` prints them)."""
    scheduled = " ".join(str(x) for x in (row["switch_date"], row["switch_window"]) if x)
    if row["proposed_date"] is None:
        return scheduled
    refused = f"refused; earliest valid {row['proposed_date']} {row['proposed_window']}"
    # a refused new slot leaves a switch already scheduled as it was
    return f"{scheduled}; a new slot {refused}" if scheduled else refused


def _print_request(req: onboarding.OnboardingRequest) -> None:
    o = req.opened
    console.print(
        f"[bold]{o.request_id}[/] {o.kind.value}: {o.structure_name} ({o.structure_sts11}), "
        f"municipality {o.municipality_istat}, requirements {o.requirements_version}"
    )
    latest = req.latest_by_slot()
    rows = []
    for slot in onboarding.required_slots(req, req.requirements):
        doc = latest.get(slot)
        if doc is None:
            rows.append((slot, "MISSING", "", ""))
        elif doc.compliant is None:
            rows.append((slot, "awaiting assessment", doc.filename, ""))
        elif doc.compliant:
            rows.append((slot, "compliant", doc.filename, ""))
        else:
            rows.append((slot, "NON-COMPLIANT", doc.filename, "\n".join(doc.problems)))
    console.print(table(None, ["required document", "state", "file", "problems"], rows))
    if req.completeness:
        console.print(req.completeness.summary)
    if req.taken_in_charge:
        t = req.taken_in_charge
        console.print(
            f"complete on {req.complete_on}; taken in charge on {t.taken_on}; expected completion "
            f"{t.expected_completion_from} .. {t.expected_completion_to}"
        )
    if req.switch:
        s = req.switch
        console.print(
            f"switch: {s.switch_date} {s.window_start}-{s.window_end} ({s.credentials.value})"
            + (f"; warning: {s.warning}" if s.warning else "")
        )
    if req.switch_refused:  # the last slot asked was refused (a switch already scheduled stays)
        r = req.switch_refused
        console.print(
            f"{'new slot refused' if req.switch else 'switch refused'}: {'; '.join(r.reasons)}; earliest valid "
            f"slot {r.proposed_date} {r.proposed_window_start}-{r.proposed_window_end}"
        )


def _guard(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Runs the coroutine; refusals of the domain become one clear line."""
    try:
        return run(make())
    except (onboarding.OnboardingError, onboarding.RequirementsError) as exc:
        raise UserError(str(exc)) from exc
