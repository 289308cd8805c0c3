"""The submission of a 730 instance to Sistema TS, as pure rules (no I/O).

Vocabulary. An instance's 730 output is one or more zips ("parts", at most 5 MB each). Each part
is sent on its own with `inviaFileMtom` and gets its own protocollo (17 digits). Part states:

    pending -> sending -> waiting_feedback (protocollo recorded) -> confirmed            (stato 2)
                  |                                             -> confirmed_with_errors (stato 3)
                  |                                             -> rejected              (stato 5, 9)
                  +--> rejected (intake error code, e.g. 104 PINCODE ERRATO)
                  +--> unresolved (after a crash, TS shows several files that could be ours)

The instance outcome combines its parts (`instance_outcome`): any part rejected -> rejected;
else any part with errors -> confirmed with errors; else confirmed; undecided while a part is not
final.

Idempotency. Sistema TS has no idempotency key: `inviaFileMtom` creates a new protocollo on every
call, and `EsitoInvii` answers by protocollo or by date range (dataInizio/dataFine) with
protocollo, dataInvio, stato and document counts, never the file name (ricevute-spec-2015 2.5-2.6).
So a part is keyed by (instance, part, zip sha256); the gateway records "sending" BEFORE calling
TS and "waiting_feedback(protocollo)" after. A part found in "sending" (crash, timeout, 5xx) is
never blindly resent: the gateway first asks EsitoInvii for the sends since the first attempt and
`decide_recovery` picks the one protocollo that is not already ours, sent at or after that moment,
with the same number of documents. None -> resend; exactly one -> adopt it; several -> unresolved
(an operator decides; resending could file the expenses twice, which TS would then reject or,
worse, count twice). The file name still carries the zip sha256 prefix so the receipts (PDF,
TS web portal) let an operator match a protocollo to a zip by eye.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from contracts.deadlines import ITALY, italian_time
from contracts.states import IllegalTransition  # one exception for every illegal state change


class PartState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    WAITING_FEEDBACK = "waiting_feedback"
    CONFIRMED = "confirmed"
    CONFIRMED_WITH_ERRORS = "confirmed_with_errors"
    REJECTED = "rejected"
    UNRESOLVED = "unresolved"


FINAL_STATES = frozenset({PartState.CONFIRMED, PartState.CONFIRMED_WITH_ERRORS, PartState.REJECTED})
SENDABLE_STATES = frozenset({PartState.PENDING, PartState.SENDING})


@dataclass(frozen=True)
class PartKey:
    """Idempotency key of a submission attempt: a different zip for the same part is a new attempt."""

    instance: int
    part: int
    zip_sha256: str

    def __str__(self) -> str:
        return f"instance {self.instance} part {self.part} (zip {self.zip_sha256[:12]})"


@dataclass(frozen=True)
class SubmissionPart:
    key: PartKey
    parts: int
    file_name: str
    documents: int
    state: PartState = PartState.PENDING
    protocollo: str | None = None
    attempts: int = 0
    last_error: str | None = None
    sending_since: datetime | None = None
    stato: int | None = None
    reason: str | None = None
    earlier_protocolli: tuple[str, ...] = ()  # of sends TS discarded before a resend (see ledger.reopen_rejected)


# nomeFileAllegato: 6-60 basic latin characters ending in .zip (ws-asincrono-spec-v2.5 4.5, code 101)
_FILE_NAME = re.compile(r"^[\x20-\x7e]{2,56}\.zip$")
PROTOCOLLO = re.compile(r"^[0-9]{17}$")


def file_name_for(instance: int, part: int, zip_sha256: str) -> str:
    """The nomeFileAllegato of a part: readable, and carrying the zip hash prefix for operators."""
    if not re.fullmatch(r"[0-9a-f]{64}", zip_sha256):
        raise ValueError(f"{instance}/{part}: zip_sha256 {zip_sha256!r} is not a sha256 hex digest")
    name = f"730_{instance}_p{part}_{zip_sha256[:16]}.zip"
    if not _FILE_NAME.fullmatch(name):
        raise ValueError(f"{instance}/{part}: file name {name!r} breaks the TS nomeFileAllegato rule")
    return name


def is_valid_file_name(name: str) -> bool:
    return bool(_FILE_NAME.fullmatch(name))


def state_for_stato(stato: int) -> PartState | None:
    """The part state an EsitoInvii stato leads to; None while TS is still processing.

    stato values: ricevute-spec-2015 par. 2.6 (0/1 in progress, 2 ok, 3 errors, 5/9 rejected).
    """
    if stato in (0, 1):
        return None
    if stato == 2:
        return PartState.CONFIRMED
    if stato == 3:
        return PartState.CONFIRMED_WITH_ERRORS
    if stato in (5, 9):
        return PartState.REJECTED
    raise ValueError(f"EsitoInvii stato {stato} is not one of 0, 1, 2, 3, 5, 9")


def instance_outcome(states: Sequence[PartState]) -> PartState | None:
    """Combine the parts: rejected beats errors beats confirmed; None until every part is final."""
    if not states:
        raise ValueError("an instance submission has at least one part")
    if any(state not in FINAL_STATES for state in states):
        return None
    if PartState.REJECTED in states:
        return PartState.REJECTED
    if PartState.CONFIRMED_WITH_ERRORS in states:
        return PartState.CONFIRMED_WITH_ERRORS
    return PartState.CONFIRMED


def may_send(part: SubmissionPart) -> bool:
    """A part may go to TS only while it has no protocollo and no final outcome."""
    return part.state in SENDABLE_STATES and part.protocollo is None


def needs_recovery(part: SubmissionPart) -> bool:
    """A part in 'sending' may already be at TS (crash between the call and the record)."""
    return part.state is PartState.SENDING and part.protocollo is None


_ALLOWED = {
    PartState.PENDING: {PartState.SENDING},
    PartState.SENDING: {PartState.SENDING, PartState.WAITING_FEEDBACK, PartState.REJECTED, PartState.UNRESOLVED},
    # an operator (or a later EsitoInvii look) may settle an unresolved part either way
    PartState.UNRESOLVED: {PartState.WAITING_FEEDBACK, PartState.SENDING},
    PartState.WAITING_FEEDBACK: {PartState.CONFIRMED, PartState.CONFIRMED_WITH_ERRORS, PartState.REJECTED},
}


def check_transition(key: PartKey, current: PartState, target: PartState) -> None:
    """Final states are final; a protocollo, once recorded, is never replaced by a resend."""
    if target not in _ALLOWED.get(current, set()):
        raise IllegalTransition(f"{key}: cannot go from {current} to {target}")


@dataclass(frozen=True)
class BackoffSchedule:
    """Delays between polls or retries: initial, initial*factor, ... capped (2s, 4s, 8s ... 5 min)."""

    initial: float = 2.0
    factor: float = 2.0
    cap: float = 300.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.cap < self.initial:
            raise ValueError(f"backoff needs initial > 0, factor >= 1, cap >= initial; got {self}")

    def delay(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        return min(self.cap, self.initial * self.factor ** (attempt - 1))

    def delays(self) -> Iterator[float]:
        attempt = 1
        while True:
            yield self.delay(attempt)
            attempt += 1


# ---- recovery after a crash ------------------------------------------------------------------


@dataclass(frozen=True)
class TsRecord:
    """One send as EsitoInvii lists it (by date range)."""

    protocollo: str
    sent_at: datetime | None  # None when TS gives the day only
    sent_on: date
    documents: int | None  # nInviati
    stato: int


@dataclass(frozen=True)
class Adopt:
    protocollo: str


@dataclass(frozen=True)
class Resend:
    pass


@dataclass(frozen=True)
class AskOperator:
    reason: str


RecoveryDecision = Adopt | Resend | AskOperator

# Clocks of the gateway and of TS differ; a send is ours if TS saw it at most this long before we
# recorded "sending" (we write "sending" before the call, so TS can only be later, minus skew).
CLOCK_SKEW = timedelta(minutes=5)
TS_ZONE = ITALY  # Sistema TS writes its times in Italian local time


def parse_data_invio(text: str) -> tuple[datetime | None, date]:
    """dataInvio 'dd-mm-yyyy[ hh:mm:ss]' (ricevute-spec-2015 2.6), Italian local time."""
    text = text.strip()
    try:
        if len(text) > 10:
            moment = datetime.strptime(text, "%d-%m-%Y %H:%M:%S").replace(tzinfo=TS_ZONE)
            return moment, moment.date()
        return None, datetime.strptime(text, "%d-%m-%Y").date()
    except ValueError as exc:
        raise ValueError(f"EsitoInvii dataInvio {text!r} is not dd-mm-yyyy[ hh:mm:ss]") from exc


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _could_be_ours(part: SubmissionPart, record: TsRecord, known: set[str]) -> bool:
    if record.protocollo in known:
        return False
    if part.documents and record.documents is not None and record.documents != part.documents:
        return False
    if part.sending_since is None:
        return True
    earliest = _aware(part.sending_since) - CLOCK_SKEW
    if record.sent_at is not None:
        return _aware(record.sent_at) >= earliest
    return record.sent_on >= earliest.astimezone(TS_ZONE).date()


def decide_recovery(part: SubmissionPart, records: Sequence[TsRecord], known: set[str]) -> RecoveryDecision:
    """Given what TS lists since the part's first attempt, resend, adopt, or ask an operator."""
    if not needs_recovery(part):
        raise ValueError(f"{part.key} is {part.state}, not an unconfirmed send: nothing to recover")
    candidates = [record for record in records if _could_be_ours(part, record, known)]
    if not candidates:
        return Resend()
    if len(candidates) == 1:
        return Adopt(candidates[0].protocollo)
    listed = ", ".join(record.protocollo for record in candidates)
    # the reason the operators read (an unresolved part): Italian
    # (no tool here picks one of them: the operator looks them up where TS shows them, and the help desk records it)
    since = (f" dal {italian_time(_aware(part.sending_since), '%d/%m/%Y %H:%M')}" if part.sending_since is not None
             else "")  # (no time: an old ledger row; the format of None would raise)
    return AskOperator(
        f"istanza {part.key.instance} parte {part.key.part}: Sistema TS elenca {len(candidates)} invii con "
        f"{part.documents} documenti{since} che qui non risultano ({listed}); "
        "un nuovo invio potrebbe registrare due volte le spese: prima di inviare di nuovo l'istanza, verifichi sul "
        "portale di Sistema TS quale di questi protocolli è di questa istanza e lo comunichi all'assistenza"
    )
