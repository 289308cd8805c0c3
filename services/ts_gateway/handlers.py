"""What the gateway does with a `flows.ts-submission-requested`: send every 730 zip of a Formatted
instance to Sistema TS, record each protocollo (Waiting feedback), poll the outcomes, and record the
instance's outcome (Confirmed / Confirmed with errors / Rejected) with the per-document errors as
its feedback file.

The credentials arrive sealed to the gateway's key. The request is recorded in the instance's
stream WITHOUT the box (who asked, the transmission date, and `sealed_to_key`, the id of the key
the box was sealed to): the hash-chained history is never erased, and a box in it would stay
openable as long as the key exists. The box goes to table ts_sealed_credentials (boxes.py) in the
same transaction, so a restarted gateway can unseal it again and finish the work, and is deleted in
the transaction that records the instance outcome (Confirmed / Confirmed with errors / Rejected);
the resume pass deletes the box of a request superseded by a newer one or abandoned (instance
deleted). A pending request whose box cannot be had or opened (key removed) ends Rejected, naming
why, and can be sent again. Clear values live only in this process's memory, inside a
`Credentials` whose repr hides them. The gateway's keys (current and retired) are in keys.py.

The Kafka handler only checks and records the request (one short transaction), then hands the
instance to the `SubmissionWorker`: sending and polling take minutes to hours (TS processes files
asynchronously), and a consumer that held its partition that long would be thrown out of its group.
The worker runs one task per instance, under a PostgreSQL advisory lock (one replica works on an
instance at a time); its `resume` pass, every few seconds, restarts whatever has a request and no
outcome: after a crash, after a restart, after a failure, or when a transmission date arrives.

A new request on a Rejected instance (the operator fixed the credentials, or TS discarded a file)
reopens only the rejected parts; confirmed parts are never sent again. TS answering 401 (user or
password refused) ends the submission Rejected at once, and a 401 while polling stops every call
for that request until a new one arrives: retrying a wrong password locks the TS account.

A full file store (ENOSPC) while keeping a part's feedback (the per-document errors CSV, the PDF receipt) is the
platform's condition, not TS's outcome: the instance stays Waiting feedback, nothing is appended, and the resume
pass tries again backed off, or at once when space grows (services.runtime.filestore.SpaceWaits: one `store.full`
warning per attempt naming the store and the instance; flows_file_store_waiting on /metrics, alert FileStoreFull).
The send itself never touches the disk: a part is never marked sent or failed by it. The part's outcome is
already in the ledger by then (polling recorded it): a part with an outcome from TS that the history has not
announced (a full store, or a crash, came between) has its errors and receipt fetched from TS again, which keeps
them, so the outcome is never announced without its errors file.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

import asyncpg

from contracts import flows
from contracts.deadlines import italian_today
from contracts.instance import FlowInstance, SubmissionRequest
from contracts.states import SENDABLE_FLOW_TYPES, Actor, InstanceState
from services.runtime.backoff import INTERRUPTED_CAP_S, Interruptions
from services.runtime.broker import Incoming, Refused
from services.runtime.filestore import SpaceWaits, is_full
from services.runtime.instances import ServiceDeps
from services.runtime.locks import SUBMIT_LOCK, instance_lock
from services.runtime.logging import get_logger
from services.ts_gateway import boxes
from services.ts_gateway.client import TsError
from services.ts_gateway.keys import GatewayKeys
from services.ts_gateway.receipts import feedback_csv
from services.ts_gateway.sealing import Credentials, SealError, sealed_key_id
from services.ts_gateway.submission import FINAL_STATES, PartKey, PartState, SubmissionPart, file_name_for
from services.ts_gateway.submission import instance_outcome as combine
from services.ts_gateway.submitter import PollingBlocked, SubmissionRunner

CONSUMER = "ts-gateway"
log = get_logger("ts-gateway")

Outcome = Literal["confirmed", "confirmed_with_errors", "rejected"]
_OUTCOME: dict[PartState, Outcome] = {
    PartState.CONFIRMED: "confirmed", PartState.CONFIRMED_WITH_ERRORS: "confirmed_with_errors",
    PartState.REJECTED: "rejected", PartState.UNRESOLVED: "rejected"}


RESUME_PASS_S = 10.0  # the resume pass's period (app.py)


def interruptions(initial_s: float | None = None, cap_s: float = INTERRUPTED_CAP_S) -> Interruptions:
    """The backoff of interrupted submissions: Sistema TS unreachable or answering 500 past the runner's own
    retries, PostgreSQL cut under the work. The first retry at the next resume pass, doubling to 5 minutes: a
    national service that is down is not asked again every 10 s for every instance. `ts.submission.interrupted`
    / `ts.submission.recovered` lines; flows_work_interrupted{service="ts_gateway"} and the WorkInterrupted alert
    (the same instance interrupted for 15 minutes)."""
    return Interruptions(log, initial_s=initial_s or RESUME_PASS_S, cap_s=cap_s, service="ts_gateway",
                         work="ts.submission")


@dataclass
class GatewayDeps(ServiceDeps):
    ACTOR = Actor.TS_GATEWAY
    CONSUMER = CONSUMER
    runner: SubmissionRunner
    keys: GatewayKeys
    today: Any = field(default=italian_today)  # () -> date, in TS's time zone
    space: SpaceWaits = field(default_factory=lambda: SpaceWaits(log))  # instances waiting for a full store
    interrupted: Interruptions = field(default_factory=interruptions)  # submissions TS or PG cut
    worker: SubmissionWorker = field(init=False)

    def __post_init__(self) -> None:
        self.worker = SubmissionWorker(self)


class SubmissionWorker:
    """One task per instance being submitted; `start` is idempotent while a task runs."""

    def __init__(self, deps: GatewayDeps) -> None:
        self._deps = deps
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # requests whose credentials TS refused while polling: no more calls until a new request
        self.blocked_requests: set[str] = set()

    def start(self, instance: int) -> None:
        running = self._tasks.get(instance)
        if running is not None and not running.done():
            return
        self._tasks[instance] = asyncio.create_task(self._run(instance), name=f"ts-submit-{instance}")

    def running(self) -> list[int]:
        return [instance for instance, task in self._tasks.items() if not task.done()]

    async def _run(self, instance: int) -> None:
        log_ = log.bind(aggregate_id=str(instance))
        began = time.monotonic()
        deps = self._deps
        try:
            await submit_instance(instance, deps)
        except Exception as exc:
            if is_full(exc):  # a feedback file did not fit: the instance waits (Waiting feedback), backed off
                deps.space.failed(instance, exc, step="ts feedback files")
                deps.interrupted.done(instance)  # TS answered this attempt: what it waits for now is space
            elif isinstance(exc, PollingBlocked):
                self.blocked_requests.add(exc.request_id)
                deps.interrupted.forget(instance)  # no retry until a new request: not a backoff
                log_.error("ts.submission_blocked", error=str(exc))
            elif isinstance(exc, TsError | asyncpg.PostgresError | OSError):
                # a later resume pass tries again, backed off (sends reconcile first: nothing goes twice)
                deps.interrupted.failed(instance, exc, ran_s=time.monotonic() - began)
            else:
                # not foreseen (a defect, data the code did not expect): one error line per attempt, and the
                # attempts backed off like an interruption, not repeated at every 10 s pass with a line each time;
                # the same figure and alert (WorkInterrupted) show an instance that keeps failing so
                deps.interrupted.failed(instance, exc, ran_s=time.monotonic() - began, line="ts.submission_failed",
                                        level="error")
        else:
            deps.space.done(instance)
            deps.interrupted.done(instance)
        finally:
            self._tasks.pop(instance, None)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


async def handle_submission_requested(cmd: flows.TsSubmissionRequested, msg: Incoming, deps: GatewayDeps) -> None:
    async with deps.instances.handling(msg) as handling:
        if handling is None:
            return
        earlier = await handling.repeats(cmd.instance, flows.TsSubmissionRequested, cmd.seen_version)
        if earlier is not None:
            # asked again while the first request waited: that one sends (or sent), and a rejection it gets is
            # the operator's to read before the instance goes again. The box is dropped unopened.
            log.info("ts.request_repeated", instance=cmd.instance, requested_by=cmd.requested_by,
                     seen_version=cmd.seen_version, earlier_request_version=earlier)
            return
        current = await handling.read(cmd.instance)
        if current.flow_type not in SENDABLE_FLOW_TYPES:
            raise Refused(f"instance {cmd.instance} is {current.flow_type}: only the 730 is sent to "
                          "Sistema TS by this platform")
        handling.check(current, [(flows.TsSubmissionRequested, Actor.OPERATOR)], refusal="cannot be sent")
        try:
            _, sealed_to = deps.keys.open(cmd.sealed_credentials)
        except SealError as exc:
            raise Refused(f"instance {cmd.instance}: the credentials cannot be opened by this gateway ({exc})") from exc
        recorded = await handling.append(current, cmd, actor=cmd.requested_by, publish=False,
                                         data=recorded_request(cmd, sealed_to))
        assert recorded.request is not None
        await boxes.keep(handling.conn, cmd.instance, recorded.request.id, sealed_to, cmd.sealed_credentials)
        if current.state is InstanceState.REJECTED:
            # a resend: the rejected parts go again, the confirmed ones never do
            await deps.runner.ledger.reopen_rejected(cmd.instance, conn=handling.conn)
    deps.worker.start(cmd.instance)


def recorded_request(cmd: flows.TsSubmissionRequested, sealed_to: str) -> dict[str, Any]:
    """What the instance's history keeps of a request: everything but the box, and the key id it was
    sealed to (not secret: 16 hex digits of the public key's hash)."""
    return {**cmd.model_dump(mode="json", exclude={"sealed_credentials"}), "sealed_to_key": sealed_to}


async def submit_instance(instance: int, deps: GatewayDeps) -> None:
    async with instance_lock(deps.pool, SUBMIT_LOCK, instance) as held:
        if held:
            await _submit_locked(instance, deps)


def _due(request: SubmissionRequest, today: date) -> bool:
    """A request is sent on its transmission date (the operator may choose a later day)."""
    return request.transmission_date <= today


async def _submit_locked(instance: int, deps: GatewayDeps) -> None:
    current = await deps.instances.read(instance)
    request = current.request
    if request is None or not _due(request, deps.today()) or str(request.id) in deps.worker.blocked_requests:
        return
    credentials = await _open_request(instance, request, deps)
    if credentials is None:
        return
    zips = sorted((f for f in current.files if f.kind == "730-zip"), key=lambda f: f.part or 0)
    if not zips:
        await _abandon(deps, instance, request, "l'istanza non ha alcun file 730 da inviare")
        return
    parts = [SubmissionPart(key=PartKey(instance, index, f.sha256), parts=len(zips),
                            file_name=file_name_for(instance, index, f.sha256), documents=f.records)
             for index, f in enumerate(zips, start=1)]
    await deps.runner.ledger.register(parts)
    recorded = set(current.ts_submitted)
    for part, f in zip(parts, zips, strict=True):
        with deps.files.open(f.sha256) as src:
            zip_bytes = src.read()
        sent = await deps.runner.send_with_retry(credentials, part.key, zip_bytes)
        if sent.state is PartState.WAITING_FEEDBACK and sent.key.part not in recorded and sent.protocollo:
            await _append(deps, instance, flows.TsSubmitted(
                instance=instance, part=sent.key.part, parts=len(parts), protocollo=sent.protocollo,
                zip_sha256=sent.key.zip_sha256))
    await _poll_all(instance, credentials, parts, set(current.ts_feedback), request.id, deps)


async def _open_request(instance: int, request: SubmissionRequest, deps: GatewayDeps) -> Credentials | None:
    """The credentials of the pending request, from its stored box; None when the request was
    superseded meanwhile (the next pass takes the new one) or abandoned here (Rejected, naming why)."""
    sealed = await boxes.box_of(deps.pool, instance, request.id)
    if sealed is None:
        # recorded before migration 0032, the request carried its box in the event itself
        sealed = request.sealed_credentials
    if sealed is None:
        pending = (await deps.instances.read(instance)).request
        if pending is None or pending.id != request.id:
            return None  # a newer request replaced this one (and its box), or it ended, while we looked
        reason = "le credenziali sigillate di questa richiesta non sono più custodite dal gateway"
    else:
        try:
            return deps.keys.open(sealed)[0]
        except SealError as exc:  # its English is the operators': logged; the reason says it in Italian
            log.warning("ts.box_unopenable", instance=instance, request=str(request.id), error=str(exc))
            reason = _unopenable(sealed, deps.keys.current_id)
    await _abandon(deps, instance, request, f"{reason}; invii di nuovo l'istanza inserendo di nuovo le credenziali")
    return None


def _unopenable(sealed: str, current_key: str) -> str:
    """Why a stored box cannot be opened, in Italian: sealed to a key the gateway no longer holds (rotated, and the
    old one deleted), or not whole."""
    try:
        kid = sealed_key_id(sealed)
    except SealError:
        kid = None
    if kid is not None and kid != current_key:
        return (f"le credenziali cifrate di questa richiesta sono sigillate con la chiave {kid} del gateway TS, che il "
                f"gateway non custodisce più (la sua chiave attuale è {current_key})")
    return "le credenziali cifrate di questa richiesta non si possono aprire: non sono integre"


async def _abandon(deps: GatewayDeps, instance: int, request: SubmissionRequest, reason: str) -> None:
    """Ends the submission Rejected with `reason` (the operator can send again); its box goes. The reason is what
    the operators read (the console's instance page): Italian."""
    log.warning("ts.submission_abandoned", aggregate_id=str(instance), reason=reason)
    await _append(deps, instance, flows.TsFeedbackReceived(
        instance=instance, part=1, parts=1, outcome="rejected", reason=reason, instance_outcome="rejected"),
        ends_request=request.id)


async def _poll_all(instance: int, credentials: Credentials, parts: list[SubmissionPart], announced: set[int],
                    request_id: uuid.UUID, deps: GatewayDeps) -> None:
    states: dict[int, PartState] = {}
    for part in parts:
        current = await deps.runner.ledger.get(part.key)
        if part.key.part in announced:
            states[part.key.part] = current.state
            continue
        errors_file = receipt_file = None
        processed = current.state is PartState.WAITING_FEEDBACK or _processed_unannounced(current)
        if current.state is PartState.WAITING_FEEDBACK:
            feedback = await deps.runner.poll_part(credentials, part.key, request_id=str(request_id))
            current, errors = feedback.part, feedback.errors
        elif processed and current.state is PartState.CONFIRMED_WITH_ERRORS:
            # its outcome is in the ledger, not in the history: the store was full (or the gateway died) when
            # its errors were to be kept; TS keeps them, so they are fetched again rather than announced lost
            errors = await deps.runner.ts.dettaglio_errori(credentials, current.protocollo or "")
        else:
            errors = []
        if errors:
            # StoreFull: the instance waits for space; the write and its fsync run off the event loop
            sha, size = await asyncio.to_thread(deps.files.put_bytes, feedback_csv(errors))
            errors_file = flows.FileRef(name=f"ts_errors_{instance}_p{part.key.part}.csv", kind="ts-errors",
                                        records=len(errors), bytes=size, sha256=sha,
                                        media_type="text/csv", part=part.key.part)
        if processed:
            receipt_file = await _receipt(deps, credentials, instance, current)
        states[part.key.part] = current.state
        if current.state not in FINAL_STATES and current.state is not PartState.UNRESOLVED:
            return  # still in progress (another pass finishes it)
        outcome = combine([states.get(p.key.part, PartState.PENDING) for p in parts])
        await _append(deps, instance, flows.TsFeedbackReceived(
            instance=instance, part=part.key.part, parts=len(parts), protocollo=current.protocollo,
            stato=current.stato, outcome=_OUTCOME[current.state], reason=current.reason, errors_file=errors_file,
            receipt_file=receipt_file, instance_outcome=_OUTCOME[outcome] if outcome is not None else None),
            ends_request=request_id if outcome is not None else None)


def _processed_unannounced(part: SubmissionPart) -> bool:
    """A part TS processed (a protocollo and a stato from EsitoInvii) whose outcome the history has not
    announced yet (the caller looks only at those): the pass that polled it did not get to append it."""
    return part.state in FINAL_STATES and part.protocollo is not None and part.stato is not None


async def _receipt(deps: GatewayDeps, credentials: Credentials, instance: int,
                   part: SubmissionPart) -> flows.FileRef | None:
    """The PDF receipt (RicevutaPdf) of a processed file, kept with the instance's files. The
    outcome does not wait on it: a receipt TS cannot give now is logged, and TS keeps it."""
    if part.protocollo is None or part.state not in FINAL_STATES:
        return None
    try:
        pdf = await deps.runner.ts.ricevuta_pdf(credentials, part.protocollo)
    except TsError as exc:
        log.warning("ts.receipt_unavailable", aggregate_id=str(instance), protocollo=part.protocollo,
                    error=f"{type(exc).__name__}: {exc}")
        return None
    sha, size = await asyncio.to_thread(deps.files.put_bytes, pdf)  # its fsync off the event loop
    return flows.FileRef(name=f"ts_receipt_{instance}_p{part.key.part}_{part.protocollo}.pdf", kind="ts-receipt",
                         records=1, bytes=size, sha256=sha, media_type="application/pdf", part=part.key.part)


async def _append(deps: GatewayDeps, instance: int, payload: flows.Payload,
                  ends_request: uuid.UUID | None = None) -> None:
    """Appends one event wherever the stream is; with `ends_request` (an instance outcome), that request's
    sealed box is deleted in the same transaction: the box lives exactly as long as the submission."""
    at_head = FlowInstance(instance)  # expect=False: appended after whatever the stream holds
    if ends_request is None:
        await deps.instances.append(at_head, payload, expect=False)
        return
    async with deps.pool.acquire() as conn, conn.transaction():
        await deps.instances.append(at_head, payload, expect=False, conn=conn)
        await boxes.forget(conn, instance, ends_request)


async def resume_unfinished(deps: GatewayDeps) -> None:
    """Instances with a due submission request and no outcome yet (a gateway died, TS was slow or
    down, a transmission date arrived): each gets a worker task unless one already runs."""
    asked_at = time.monotonic()
    rows = await deps.pool.fetch(
        "SELECT instance FROM instance_list WHERE flow_type = 'FLUSSO_730' AND state = ANY($1::text[])",
        [InstanceState.FORMATTED.value, InstanceState.WAITING_FEEDBACK.value, InstanceState.REJECTED.value])
    # an instance that waited (for space, or after an interruption) and is no longer listed ended elsewhere (another
    # gateway, a deletion): forgotten, so its figure does not keep an alert firing for work it will never see again
    listed = [int(r["instance"]) for r in rows]
    deps.space.forget_unlisted(listed, asked_at)
    deps.interrupted.forget_unlisted(listed, asked_at)
    await forget_ended_boxes(deps)
    running = set(deps.worker.running())
    for row in rows:
        instance = int(row["instance"])
        if instance in running:
            continue
        request = (await deps.instances.read(instance)).request
        if request is not None and _due(request, deps.today()) and str(request.id) not in deps.worker.blocked_requests:
            # a full store: later, or once space is freed; an interrupted submission: backed off
            if deps.space.due(instance) and deps.interrupted.due(instance):
                deps.worker.start(instance)


async def forget_ended_boxes(deps: GatewayDeps) -> None:
    """Deletes the boxes of requests that no longer run (a newer request superseded it, the instance
    was deleted; an outcome deletes its box itself, in its own transaction), then the retired
    private keys no remaining box is sealed to (keys.py: `GatewayKeys.prune`)."""
    for box in await boxes.stored(deps.pool):
        current = await deps.instances.read(box.instance)
        request = current.request
        deleted = current.state is InstanceState.DELETED
        if request is not None and request.id == box.request_id and not deleted:
            continue
        if await boxes.forget(deps.pool, box.instance, box.request_id):
            why = "instance deleted" if deleted else "request no longer pending"
            log.info("ts.credentials_forgotten", aggregate_id=str(box.instance), reason=why)
    in_use = {box.key_id for box in await boxes.stored(deps.pool)}
    for removed in deps.keys.prune(in_use):
        log.info("ts.gateway_key_removed", key_id=removed, reason="retired, and no submission is sealed to it")
