"""Sending parts and polling outcomes: the submission rules (submission.py) over a ledger and a client.

The submission worker (handlers.py) opens the stored sealed credentials, registers the parts, calls
`send_part` for each (emitting TsSubmitted), then `poll_part` (emitting TsFeedbackReceived). The order inside
`send_part` is the point: record "sending", call TS, record the protocollo; and on a part found
in "sending", reconcile with EsitoInvii before any resend (see submission.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Protocol

from services.ts_gateway.client import TsAuthError, TsIntakeRejected, TsUnavailable
from services.ts_gateway.ledger import PartLedger
from services.ts_gateway.operations import IntakeReceipt, SendStatus
from services.ts_gateway.receipts import DocumentError
from services.ts_gateway.sealing import Credentials
from services.ts_gateway.submission import (
    CLOCK_SKEW,
    TS_ZONE,
    Adopt,
    AskOperator,
    BackoffSchedule,
    PartKey,
    PartState,
    RecoveryDecision,
    SubmissionPart,
    TsRecord,
    decide_recovery,
    may_send,
    needs_recovery,
    parse_data_invio,
    state_for_stato,
)


class TsPort(Protocol):
    """The part of TsClient the runner uses (a fake in unit tests, the real client otherwise)."""

    async def invia_file(self, credentials: Credentials, file_name: str, zip_bytes: bytes) -> IntakeReceipt: ...
    async def esito_invii(self, credentials: Credentials, protocollo: str) -> SendStatus: ...
    async def esiti_between(self, credentials: Credentials, start: date, end: date) -> list[SendStatus]: ...
    async def dettaglio_errori(self, credentials: Credentials, protocollo: str) -> list[DocumentError]: ...
    async def ricevuta_pdf(self, credentials: Credentials, protocollo: str) -> bytes: ...


class PollingGaveUp(TimeoutError):
    pass


class PollingBlocked(Exception):
    """TS refused the credentials while the file was being processed (changed or expired password):
    polling stops for this request, since retrying a refused password locks the TS account."""

    def __init__(self, key: PartKey, request_id: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}; send the instance again with valid credentials to follow it")
        self.request_id = request_id


@dataclass(frozen=True)
class PartFeedback:
    part: SubmissionPart
    errors: list[DocumentError]


def _record(status: SendStatus) -> TsRecord:
    sent_at, sent_on = parse_data_invio(status.data_invio)
    return TsRecord(status.protocollo, sent_at, sent_on, status.n_inviati, status.stato)


@dataclass
class SubmissionRunner:
    ledger: PartLedger
    ts: TsPort
    send_retry: BackoffSchedule = field(default_factory=lambda: BackoffSchedule(initial=5.0, cap=300.0))
    send_attempts: int = 5
    poll_schedule: BackoffSchedule = field(default_factory=lambda: BackoffSchedule(initial=2.0, cap=600.0))
    max_polls: int = 500
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    async def recover(self, credentials: Credentials, part: SubmissionPart) -> RecoveryDecision:
        """Ask TS what it received since the part's first attempt (EsitoInvii by date range)."""
        since = part.sending_since or self.clock()
        start = (since - CLOCK_SKEW).astimezone(TS_ZONE).date()
        end = self.clock().astimezone(TS_ZONE).date()
        statuses = await self.ts.esiti_between(credentials, start, end)
        return decide_recovery(part, [_record(s) for s in statuses], await self.ledger.known_protocolli())

    async def send_part(self, credentials: Credentials, key: PartKey, zip_bytes: bytes) -> SubmissionPart:
        """One attempt; idempotent: a part with a protocollo or an outcome is returned as is.

        TS refusing the user or password (HTTP 401/403) is an outcome, not a failure to retry: the
        part is rejected with that reason (the operator sends again with the right credentials).
        """
        part = await self.ledger.get(key)
        if not may_send(part):
            return part
        try:
            if needs_recovery(part):
                decision = await self.recover(credentials, part)
                if isinstance(decision, Adopt):
                    return await self.ledger.record_submitted(key, decision.protocollo)
                if isinstance(decision, AskOperator):
                    return await self.ledger.record_outcome(key, PartState.UNRESOLVED, None, decision.reason)
            # Recorded before the call: a crash from here on leaves "sending", which the next run reconciles.
            part = await self.ledger.begin_sending(key)
            receipt = await self.ts.invia_file(credentials, part.file_name, zip_bytes)
        except TsIntakeRejected as exc:
            return await self.ledger.record_outcome(key, PartState.REJECTED, None, f"{exc.code} {exc.description}")
        except TsAuthError as exc:  # the part is "sending" here, whether refused in recovery or at intake
            return await self.ledger.record_outcome(key, PartState.REJECTED, None, exc.reason)
        except TsUnavailable as exc:
            await self.ledger.record_failure(key, str(exc))
            raise
        return await self.ledger.record_submitted(key, receipt.protocollo)

    async def send_with_retry(self, credentials: Credentials, key: PartKey, zip_bytes: bytes) -> SubmissionPart:
        """Retry unavailability with backoff; each retry reconciles first (send_part does)."""
        for attempt in range(1, self.send_attempts + 1):
            try:
                return await self.send_part(credentials, key, zip_bytes)
            except TsUnavailable:
                if attempt == self.send_attempts:
                    raise
                await self.sleep(self.send_retry.delay(attempt))
        raise AssertionError("unreachable")

    async def poll_part(self, credentials: Credentials, key: PartKey, request_id: str = "") -> PartFeedback:
        """Poll EsitoInvii until a final stato; fetch the per-document errors for stato 3."""
        part = await self.ledger.get(key)
        if part.state is not PartState.WAITING_FEEDBACK or part.protocollo is None:
            raise ValueError(f"{key} is {part.state}: only a part waiting feedback can be polled")
        for poll in range(1, self.max_polls + 1):
            try:
                status = await self.ts.esito_invii(credentials, part.protocollo)
            except TsUnavailable:
                await self.sleep(self.poll_schedule.delay(poll))
                continue
            except TsAuthError as exc:
                await self.ledger.record_failure(key, str(exc))
                raise PollingBlocked(key, request_id, str(exc)) from None
            state = state_for_stato(status.stato)
            if state is None:
                await self.sleep(self.poll_schedule.delay(poll))
                continue
            errors: list[DocumentError] = []
            if state is PartState.CONFIRMED_WITH_ERRORS:
                errors = await self.ts.dettaglio_errori(credentials, part.protocollo)
            reason = status.descrizione if state is not PartState.CONFIRMED else None
            updated = await self.ledger.record_outcome(key, state, status.stato, reason)
            return PartFeedback(updated, errors)
        raise PollingGaveUp(f"{key}: protocollo {part.protocollo} still in progress after {self.max_polls} polls")
