"""Payloads of the flow-instance lifecycle ("istanza di flusso").

Commands are in the imperative mood of the operator (`LoadRequested` is what an operator or an
external regional system publishes), facts in the past tense (`LoadChecked`). Every payload
carries the instance number once it exists; the Kafka key is that number, so one instance's
events stay in order in one partition.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts.feedback import RECORD_KEY_DESCRIPTION
from contracts.jsontypes import Code, Text
from contracts.topic import EXTERNAL, SECRET_COMMAND_RETENTION_MS, Topic

# strings an operator or an outside system puts in a command: bounded, as intake checks them
Actor = Annotated[Text, Field(max_length=100, description="Operator user id or system name.",
                              examples=["op.rossi"])]
EnteCode = Annotated[Code, Field(pattern=r"^[0-9A-Z]{3}$", description="Health entity code (Ente).",
                                 examples=["201"])]
LayoutVersion = Annotated[Code, Field(pattern=r"^[0-9]{4}$", description="Record layout version (year).")]
Reason = Annotated[Text, Field(max_length=1000)]


class FlowType(StrEnum):
    """The loadable flow types of the "Lista tipi di flusso"."""

    FLUSSO_C = "FLUSSO_C"
    FLUSSO_C_PACC = "FLUSSO_C_PACC"
    FLUSSO_MEF = "FLUSSO_MEF"
    FLUSSO_ALPI_TA = "FLUSSO_ALPI_TA"
    FLUSSO_730 = "FLUSSO_730"


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1


FEEDBACK_FORMAT = (
    "CSV, UTF-8, ';'-separated, RFC 4180 quoting, header `record_key;field;code;severity;message`, one line "
    "per problem, each line as schemas/feedback-line.json says (the fields and codes a load can name). "
    + RECORD_KEY_DESCRIPTION + " severity is `error` (blocks the load) or `warning`. The message is for the "
    "operators, in Italian; the other columns are identifiers."
)


class FileRef(BaseModel):
    """A file produced for an instance, stored by content hash.

    The bytes are in the platform's file store at `sha256/<first 2 hex digits>/<other 62>` (a folder
    of the platform host, an S3-compatible bucket in production); `flows export <instance>` writes
    them out under `name`. Check the bytes against `sha256` after reading them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(examples=["C1_150201_202611_1947.txt"])
    kind: str = Field(description="C1, C2, MEF, ALPI_TA, 730-zip, feedback, ts-errors, ts-receipt ...", examples=["C1"])
    records: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    media_type: str = "text/plain"
    part: int | None = Field(default=None, description="Submission part (730 zips only).")


class Period(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: date = Field(description="INIZIO RIFERIMENTO")
    end: date = Field(description="FINE RIFERIMENTO")

    @model_validator(mode="after")
    def _ordered(self) -> Period:
        if self.end < self.start:
            raise ValueError(f"period end {self.end} is before its start {self.start}")
        return self


class LoadRequested(Payload):
    """Command: load a flow for an entity and a period (creates an instance)."""

    request_id: UUID = Field(description="Idempotency key of the request: the same id never makes two instances.")
    flow_type: FlowType
    version: LayoutVersion = "2020"
    ente: EnteCode
    period: Period = Field(description="The reference period. It must be over when the load runs (its end before "
                                       "that day, Italian time; the load runs now, or at scheduled_at when later): "
                                       "a request for a period not over makes no instance and goes to the topic's "
                                       ".dlq, its dlq_reason naming period.end.")
    scheduled_at: datetime | None = Field(default=None, description="Start at this time instead of now.")
    requested_by: Actor


class LoadScheduled(Payload):
    instance: int
    request_id: UUID
    flow_type: FlowType
    version: LayoutVersion
    ente: EnteCode
    period: Period
    scheduled_at: datetime
    requested_by: Actor


class LoadRunning(Payload):
    """The instance exists and its load is Running."""

    instance: int = Field(description="ISTANZA FLUSSO: progressive number of the execution.", examples=[1947])
    request_id: UUID
    flow_type: FlowType
    version: LayoutVersion
    ente: EnteCode
    period: Period
    requested_by: Actor


class LoadChecked(Payload):
    instance: int
    source_instance: int = Field(description="ISTANZA FONTE: the source snapshot taken for this load.", examples=[1948])
    counts: dict[str, int] = Field(examples=[{"services": 1200, "prescriptions": 400, "patients": 380}])
    warnings: int = 0
    feedback: FileRef | None = Field(default=None, description="Warnings, when there are any. " + FEEDBACK_FORMAT)


class LoadFailed(Payload):
    """Failed loading: the feedback names every bad record, field and code."""

    instance: int
    source_instance: int | None = None
    errors: int
    warnings: int = 0
    counts: dict[str, int] | None = Field(
        default=None, description="What the load's snapshot held, as a Checked load's counts: the records the "
                                  "errors are counted against. None when the load stopped before its checks "
                                  "counted them (an unexpected failure).",
        examples=[{"services": 1200, "prescriptions": 400, "patients": 380}])
    summary: str = Field(description="One line for the operators, in Italian: how many errors in how many records, "
                                     "and how many of each code.",
                         examples=["3 errori in 2 record: 2 x CF_CHECK_CHAR, 1 x UNKNOWN_SERVICE_CODE"])
    feedback: FileRef | None = Field(default=None, description="Every error and warning. " + FEEDBACK_FORMAT)


SEEN_VERSION = ("The version of the instance's history the requester read when it asked (optional). A request "
                "taken after another request of the same kind was recorded past that version repeats it (asked "
                "twice while the first waited): it is acknowledged and changes nothing.")


class FormatRequested(Payload):
    instance: int
    requested_by: Actor
    seen_version: int | None = Field(default=None, ge=0, description=SEEN_VERSION)


class FormattingStarted(Payload):
    instance: int


class Formatted(Payload):
    instance: int
    files: list[FileRef]


class FormatFailed(Payload):
    instance: int
    reasons: list[str] = Field(min_length=1)
    feedback: FileRef | None = None


class TsSubmissionRequested(Payload):
    """Command: send a Formatted 730 instance to Sistema TS.

    The credentials (TS user, password, pincode, CF proprietario) are sealed to the gateway's
    public key (RSA-OAEP + AES-GCM); nobody but the gateway can read them. The box names the key
    it was sealed to, so it still opens after the gateway rotates its key, until its submission
    ends. The gateway keeps the box only while the submission runs, never in the instance's
    history; this topic keeps the command for a short time only.
    """

    instance: int
    sealed_credentials: str = Field(
        description="Base64 sealed box; never the clear values. Format TSG2: b'TSG2' | key-id length (1 byte) | "
                    "key id (16 hex digits of the SHA-256 of the gateway public key's DER) | wrapped-key length "
                    "(2 bytes, big-endian) | RSA-OAEP-SHA256 wrapped AES-256 key | 12-byte nonce | AES-GCM "
                    "ciphertext+tag of the JSON {user, password, pincode, cf_proprietario}, with magic and key "
                    "id as associated data. TSG1 (no key id) is still accepted.")
    transmission_date: date
    requested_by: Actor
    seen_version: int | None = Field(default=None, ge=0, description=SEEN_VERSION)


class TsSubmitted(Payload):
    """One zip (part) accepted at intake by Sistema TS: the instance is Waiting feedback."""

    instance: int
    part: int
    parts: int
    protocollo: str = Field(pattern=r"^[0-9]{17}$")
    zip_sha256: str
    accepted_at: datetime | None = None


class TsFeedbackReceived(Payload):
    """The outcome of one part, and of the whole instance once every part has one."""

    instance: int
    part: int
    parts: int
    protocollo: str | None = None
    stato: int | None = Field(default=None, description="EsitoInvii stato: 2 ok, 3 with errors, 5/9 rejected.")
    outcome: Literal["confirmed", "confirmed_with_errors", "rejected"]
    reason: str | None = None
    errors_file: FileRef | None = None
    receipt_file: FileRef | None = Field(default=None, description="The PDF receipt TS gives a processed file "
                                                                    "(RicevutaPdf), kind ts-receipt.")
    instance_outcome: Literal["confirmed", "confirmed_with_errors", "rejected"] | None = None


class InstanceDeleted(Payload):
    """Cancella: the instance is marked deleted; its history stays and stays replayable."""

    instance: int
    deleted_by: Actor
    reason: Reason | None = None


# The one pairing of event type and payload class of the instance lifecycle: the topic registry, the
# state machine and every writer take the type from here (`TYPE_OF[type(payload)]`), never a literal.
EVENT_TYPES: dict[str, type[Payload]] = {
    "flows.load-requested": LoadRequested,
    "flows.load-scheduled": LoadScheduled,
    "flows.load-running": LoadRunning,
    "flows.load-checked": LoadChecked,
    "flows.load-failed": LoadFailed,
    "flows.format-requested": FormatRequested,
    "flows.formatting-started": FormattingStarted,
    "flows.formatted": Formatted,
    "flows.format-failed": FormatFailed,
    "flows.ts-submission-requested": TsSubmissionRequested,
    "flows.ts-submitted": TsSubmitted,
    "flows.ts-feedback-received": TsFeedbackReceived,
    "flows.instance-deleted": InstanceDeleted,
}
TYPE_OF: dict[type[Payload], str] = {model: name for name, model in EVENT_TYPES.items()}


# ---- topics -------------------------------------------------------------------------------------

TOPICS = [
    Topic(TYPE_OF[LoadRequested], LoadRequested, "request_id",
          "Command: load a flow for an entity and a period.", (EXTERNAL, "cli"), ("loader",)),
    Topic(TYPE_OF[LoadScheduled], LoadScheduled, "instance", "The load will start at its scheduled time.",
          ("loader",)),
    Topic(TYPE_OF[LoadRunning], LoadRunning, "instance", "An instance was created and is Running.",
          ("loader",)),
    Topic(TYPE_OF[LoadChecked], LoadChecked, "instance", "The load passed its checks: Checked.", ("loader",)),
    Topic(TYPE_OF[LoadFailed], LoadFailed, "instance",
          "Failed loading, with a feedback file naming every bad record.", ("loader",)),
    Topic(TYPE_OF[FormatRequested], FormatRequested, "instance", "Command: format a Checked instance.",
          (EXTERNAL, "cli"), ("formatter",)),
    Topic(TYPE_OF[FormattingStarted], FormattingStarted, "instance", "Formatting in progress.",
          ("formatter",)),
    Topic(TYPE_OF[Formatted], Formatted, "instance", "The files are ready: Formatted.", ("formatter",),
          (EXTERNAL,)),
    Topic(TYPE_OF[FormatFailed], FormatFailed, "instance", "Formatting failed, with reasons.",
          ("formatter",)),
    Topic(TYPE_OF[TsSubmissionRequested], TsSubmissionRequested, "instance",
          "Command: send a Formatted 730 instance to Sistema TS (credentials sealed).", ("cli",),
          ("ts-gateway",), retention_ms=SECRET_COMMAND_RETENTION_MS),
    Topic(TYPE_OF[TsSubmitted], TsSubmitted, "instance",
          "A zip was accepted by Sistema TS with a protocollo: Waiting feedback.", ("ts-gateway",)),
    Topic(TYPE_OF[TsFeedbackReceived], TsFeedbackReceived, "instance",
          "Sistema TS's outcome for a part, and for the instance when all parts have one.", ("ts-gateway",),
          (EXTERNAL,)),
    Topic(TYPE_OF[InstanceDeleted], InstanceDeleted, "instance",
          "Cancella: the instance is marked deleted; history kept.", ("cli",)),
]
