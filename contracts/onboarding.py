"""Payloads of the onboarding of private accredited structures (seed 003, domain.md section 8).

A request ("richiesta") of one of five kinds is an event-sourced aggregate, stream
`onboarding-<request_id>`, Kafka key = `request_id`. The same models are the events our
service appends and the messages an outside system (a mailbox reader, a portal, a desk tool)
may publish on the same topics: intake handlers ignore messages whose `ce_source` is our own
(`/flows/onboarding`), because those are our outbox echoing what we already recorded.

Dates and times of a switch are local to Italy (Europe/Rome), written as a plain date and an
`HH:MM` window: the regulation speaks of office hours, not instants.

Documents travel by reference: the publisher first stores the file in the shared file store
(`files_dir` locally, S3 in production) and then publishes `document-received` with `stored_at`.

What people read is Italian (the onboarding desk, the private structures): a problem's message and its
location (`Problem.where`), the completeness summary, the switch reasons and warnings, and the document
labels (`document_label`, the names of seed 003). Ids, kinds, statuses and field names stay as they are:
they are the contract.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.topic import EXTERNAL, Topic

SOURCE = "/flows/onboarding"  # ce_source of what the onboarding service itself records
Sts11 = Field(pattern=r"^[0-9A-Z]{6}$", description="STS11 national facility code (6 characters).")


class RequestKind(StrEnum):
    """The five kinds of request of the So.Re.Sa. note (seed 003)."""

    NEW_AGGREGATION = "new-aggregation"  # Nuova Aggregazione (Laboratorio), annex A1
    AGGREGATOR_REGISTRY_CHANGE = "aggregator-registry-change"  # Variazioni Anagrafiche per Aggregatori, A2
    NEW_ACQUISITION = "new-acquisition"  # Nuova Acquisizione Ente (altre branche), annex B1
    SOFTWARE_HOUSE_CHANGE = "software-house-change"  # Cambio Software House, form B2
    INTEROPERABILITY_CHANGE = "interoperability-change"  # Cambio Modello di Interoperabilità, form C


class Credentials(StrEnum):
    """What the switch does to the credentials; it decides the notice (3 or 4 weeks minimum)."""

    BASIC = "basic"  # only the Basic credentials are updated
    NEW_OAUTH2 = "new-oauth2"  # new OAuth2.0 credentials are issued


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1
    request_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Id of the onboarding request; Kafka key and stream id suffix.",
        examples=["ONB-2026-0007"],
    )


class Spoke(BaseModel):
    """A laboratory joining an aggregation as SPOKE of the HUB."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sts11: str = Sts11
    name: str = Field(min_length=1, max_length=200, examples=["Laboratorio Analisi Partenope"])
    already_on_cup: bool = Field(
        default=False,
        description="Already on the regional CUP as an independent entity or as SPOKE of another HUB: "
        "then its closure or cessation act is required (seed 003, Nuova Aggregazione p.3).",
    )


class RequestOpened(Payload):
    """A request was opened: who asks, for what, and which version of the requirements applies."""

    kind: RequestKind = Field(examples=["new-aggregation"])
    structure_name: str = Field(
        min_length=1,
        max_length=200,
        description="Requesting entity (ente).",
        examples=["Centro Diagnostico Vesuvio"],
    )
    structure_sts11: str = Field(
        pattern=r"^[0-9A-Z]{6}$",
        description="STS11 of the requesting structure; the HUB for aggregations.",
        examples=["150123"],
    )
    municipality_istat: str = Field(
        pattern=r"^[0-9]{6}$",
        description="ISTAT code of the structure's municipality (patron-saint day).",
        examples=["063049"],
    )
    spokes: list[Spoke] = Field(default_factory=list, description="SPOKEs of an aggregation (laboratories).")
    other_structures: list[str] = Field(
        default_factory=list,
        description="STS11 of the entity's other structures that may take services in charge.",
    )
    requirements_version: str = Field(
        description="Version of the required-documents data applied.", examples=["2025"]
    )
    opened_at: datetime
    opened_by: str = Field(min_length=1, max_length=120, examples=["desk:esposito"])

    @field_validator("other_structures")
    @classmethod
    def _sts11s(cls, values: list[str]) -> list[str]:
        for value in values:
            if len(value) != 6 or not value.isalnum() or value.upper() != value:
                raise ValueError(f"other_structures: {value!r} is not an STS11 code (6 characters)")
        return values


class DocumentReceived(Payload):
    """A document arrived for a request (by mail, portal or CLI) and is in the file store."""

    document_id: str = Field(min_length=1, max_length=80, examples=["doc-3f2a9c"])
    document_type: str = Field(
        description="Id of the document type in the requirements data.", examples=["tracciato-prestazioni"]
    )
    filename: str = Field(min_length=1, max_length=255, examples=["Prestazioni.xlsx"])
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    stored_at: str = Field(
        description="Location in the file store (relative to files_dir).",
        examples=["onboarding/ONB-2026-0007/3f2a...-Prestazioni.xlsx"],
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="Declared facts of a non-tracciato document (protocol, signed, credentials...).",
        examples=[{"protocol": "2026/1234", "signed": "yes"}],
    )
    received_at: datetime
    received_by: str = Field(min_length=1, max_length=120, examples=["mailbox:progettocup.privati"])


# Italian names of the five kinds of request (seed 003's list, its capitals in sentence case), by RequestKind value:
# the one source for the console, the CLI and the requirements (a kind's `title` in requirements-<version>.toml is
# refused, as a document type's).
KIND_LABELS: dict[str, str] = {
    RequestKind.NEW_AGGREGATION.value: "Nuova aggregazione (laboratorio)",
    RequestKind.AGGREGATOR_REGISTRY_CHANGE.value: "Variazioni anagrafiche per aggregatori (laboratorio)",
    RequestKind.NEW_ACQUISITION.value: "Nuova acquisizione ente sul Sistema CUP regionale (altre branche di "
                                       "accreditamento)",
    RequestKind.SOFTWARE_HOUSE_CHANGE.value: "Cambio software house",
    RequestKind.INTEROPERABILITY_CHANGE.value: "Cambio modello di interoperabilità",
}


# Italian names of the document types (seed 003's wording), by the ids of requirements-<version>.toml; a slot
# `<id>:<STS11>` (one document per SPOKE already on the CUP) is labelled with its STS11 after the name.
# `tracciati` is no document type: it is the upload of a workbook whose sheets are several tracciati.
DOCUMENT_LABELS: dict[str, str] = {
    "tracciati": "Tracciati (cartella di lavoro con più fogli)",
    "tracciato-erogatore": "Tracciato Erogatore",
    "tracciato-strutture": "Tracciato Strutture",
    "tracciato-sedi": "Tracciato Sedi",
    "tracciato-raggruppamenti-unita": "Tracciato Raggruppamenti Unità",
    "tracciato-unita-eroganti": "Tracciato Unità Eroganti",
    "tracciato-prestazioni": "Tracciato Prestazioni",
    "tracciato-agende": "Tracciato Agende",
    "tracciato-utenze": "Tracciato Utenze",
    "accreditation-resolution": "Delibera di accreditamento",
    "suap-authorisation": "Autorizzazione SUAP",
    "spoke-reconfiguration-act": "Documento formale di riconfigurazione come Spoke dell'HUB",
    # seed 003: "la chiusura come Ente indipendente; oppure la cessazione come Spoke di altro HUB" (both cases)
    "spoke-closure-act": "Atto di chiusura come ente indipendente o di cessazione come SPOKE di altro HUB",
    "formal-request-aggregation": "Richiesta formale di nuova Aggregazione",
    "formal-request-acquisition": "Richiesta formale di nuova acquisizione sul Sistema CUP Regionale",
    "formal-request-software-house-change": "Richiesta formale di cambio Software House",
    "formal-request-interoperability-change": "Richiesta formale di cambio modello di interoperabilità",
    "endpoint-form-b1": "Form di abilitazione degli endpoint per l'ambiente di produzione (Allegato B1)",
    "endpoint-form-b2": "Form di abilitazione degli endpoint per l'ambiente di produzione (Allegato B2)",
    "endpoint-form-c": "Form di abilitazione degli endpoint per l'ambiente di produzione (Allegato C)",
    "switch-date-request": "Data e fascia oraria desiderate per lo switch",
}


def document_label(document_id: str) -> str:
    """The Italian name of a document type or slot: `spoke-closure-act:150456` is "Atto di chiusura come ente
    indipendente o di cessazione come SPOKE di altro HUB (SPOKE 150456)" (a slot's STS11 is always a SPOKE's; bare
    after the name it read as the HUB's). An id without a label (a type of a newer note not named here yet) is
    returned as it is: a page shows the id rather than fail (tests/unit/test_onboarding_labels.py holds every
    required type to a label)."""
    base, sep, sts11 = document_id.partition(":")
    label = DOCUMENT_LABELS.get(base)
    if label is None:
        return document_id
    return f"{label} (SPOKE {sts11})" if sep else label


def problem_where(
    message: str, sheet: str | None, row: int | None, column: str | None, cell: str | None
) -> str:
    """A problem as one line, its place first: "foglio Prestazioni, riga 4, campo IUP_SSA_CODE, cella D4: ..."
    ("campo" is the note's own word for a column: "il campo IUP_SSA_CODE deve essere valorizzato")."""
    parts = [
        text
        for text in (
            f"foglio {sheet}" if sheet else None,
            f"riga {row}" if row else None,
            f"campo {column}" if column else None,
            f"cella {cell}" if cell else None,
        )
        if text
    ]
    return (", ".join(parts) + ": " if parts else "") + message


class Problem(BaseModel):
    """One reason a document is not compliant, located as precisely as possible (sheet, row, column)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    message: str = Field(
        description="What is wrong, in Italian, naming the wrong value.",
        examples=["150999 non è l'STS11 dell'HUB 150123"],
    )
    sheet: str | None = Field(default=None, examples=["Prestazioni"])
    row: int | None = Field(
        default=None, ge=1, description="Spreadsheet row number (header = row 1).", examples=[4]
    )
    column: str | None = Field(default=None, examples=["IUP_SSA_CODE"])
    cell: str | None = Field(
        default=None, description="A1 reference of the cell, when there is one.", examples=["D4"]
    )

    def where(self) -> str:
        return problem_where(self.message, self.sheet, self.row, self.column, self.cell)


class DocumentAssessed(Payload):
    """The verdict on one document: compliant, or not with every problem named."""

    document_id: str = Field(min_length=1, max_length=80)
    document_type: str
    compliant: bool
    problems: list[Problem] = Field(default_factory=list)
    assessed_by: str = Field(description="`automatic` or the desk operator.", examples=["automatic"])
    assessed_at: datetime


class CompletenessChanged(Payload):
    """The state of the dossier after any change: what is present, missing, non-compliant."""

    required: int = Field(ge=0)
    present: int = Field(ge=0)
    compliant: int = Field(ge=0)
    missing: list[str] = Field(description="Required document slots with no document yet.")
    pending: list[str] = Field(default_factory=list, description="Present, not yet assessed.")
    non_compliant: dict[str, list[str]] = Field(
        default_factory=dict, description="Slot -> problems of its latest document."
    )
    summary: str = Field(
        description="The same in one Italian sentence, documents by their labels (document_label).",
        examples=["3 di 5 presenti, 1 non conforme: Tracciato Prestazioni (foglio Prestazioni, riga 4, "
                  "campo IUP_SSA_CODE, cella D4: 150999 non è l'STS11 dell'HUB 150123), "
                  "mancanti: Delibera di accreditamento, Autorizzazione SUAP"],
    )


class RequestComplete(Payload):
    """Every required document is present and assessed compliant."""

    completed_on: date = Field(
        description="Italian day the complete, compliant documentation was received: the latest received day of "
        "the required documents (not the day of the last verdict). The handling time and the switch notice run "
        "from it (seed 003: 'decorrenti dalla ricezione della documentazione completa e conforme')."
    )


class TakenInCharge(Payload):
    """The desk took the request in charge; handling takes 4-6 weeks (seed 003)."""

    taken_on: date = Field(description="Italian day the request was found complete and taken in charge.")
    expected_completion_from: date = Field(description="completed_on + 4 weeks.")
    expected_completion_to: date = Field(description="completed_on + 6 weeks.")


class SwitchScheduled(Payload):
    """A switch slot (software house or interoperability change) was accepted, or asked for."""

    switch_date: date = Field(examples=["2026-09-21"])
    window_start: str = Field(pattern=r"^[0-2][0-9]:[0-5][0-9]$", examples=["09:00"])
    window_end: str = Field(pattern=r"^[0-2][0-9]:[0-5][0-9]$", examples=["11:00"])
    credentials: Credentials
    warning: str | None = Field(
        default=None,
        description="Set (in Italian) when the notice is under the upper bound (4 or 6 weeks), or the "
        "municipality's patron-saint day is not known.",
    )


class SwitchRefused(Payload):
    """A desired switch slot breaks a rule; the earliest valid slot is proposed."""

    switch_date: date
    window_start: str
    window_end: str
    reasons: list[str] = Field(
        description="Why the slot is refused, in Italian (then any warning).",
        examples=[["il 19/09/2028 è la festa del santo patrono di Napoli (San Gennaro)"]],
    )
    proposed_date: date
    proposed_window_start: str
    proposed_window_end: str


EVENT_TYPES: dict[str, type[Payload]] = {
    "onboarding.request-opened": RequestOpened,
    "onboarding.document-received": DocumentReceived,
    "onboarding.document-assessed": DocumentAssessed,
    "onboarding.completeness-changed": CompletenessChanged,
    "onboarding.request-complete": RequestComplete,
    "onboarding.taken-in-charge": TakenInCharge,
    "onboarding.switch-scheduled": SwitchScheduled,
    "onboarding.switch-refused": SwitchRefused,
}
TYPE_OF: dict[type[Payload], str] = {model: name for name, model in EVENT_TYPES.items()}

_EXT = EXTERNAL  # mailbox reader, portal, desk tool
_DESCRIPTIONS = {
    "onboarding.request-opened": ("A request of one of the five kinds was opened.", ("onboarding", _EXT)),
    "onboarding.document-received": ("A document arrived (file in the file store).", ("onboarding", _EXT)),
    "onboarding.document-assessed": (
        "A document was judged compliant or not, problems named.",
        ("onboarding", _EXT),
    ),
    "onboarding.completeness-changed": ("What is present, missing and non-compliant.", ("onboarding",)),
    "onboarding.request-complete": ("All required documents present and compliant.", ("onboarding", _EXT)),
    "onboarding.taken-in-charge": (
        "Taken in charge, with the expected completion dates.",
        ("onboarding", _EXT),
    ),
    "onboarding.switch-scheduled": (
        "A switch slot accepted (or asked for, from outside).",
        ("onboarding", _EXT),
    ),
    "onboarding.switch-refused": ("A switch slot refused, with the earliest valid slot.", ("onboarding",)),
}
_CONSUMED = {
    "onboarding.request-opened",
    "onboarding.document-received",
    "onboarding.document-assessed",
    "onboarding.request-complete",
    "onboarding.taken-in-charge",
    "onboarding.switch-scheduled",
}

TOPICS = [
    Topic(
        name,
        model,
        "request_id",
        _DESCRIPTIONS[name][0],
        _DESCRIPTIONS[name][1],
        ("onboarding",) if name in _CONSUMED else (_EXT,),
    )
    for name, model in EVENT_TYPES.items()
]
