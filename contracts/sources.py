"""Source data ("Fonti dati") published by the CUP: what was delivered, paid and booked.

These are the edge models an external system (the regional CUP, SINFONIA) publishes on the
`sources.*` topics, one record per message, key = the source record id. The loader stores them
idempotently by `source_id`; a record that fails validation gets a `SourceRecordRejected` event
naming the field.

Amounts are euro as decimal strings with two decimals at most ("12.34"), dates ISO 8601 strings
("2026-11-03"), integers and booleans JSON's own: the types of contracts.jsontypes make the
published schemas say exactly what intake accepts (lengths, patterns, ranges, enums).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.jsontypes import Code, CodiceFiscale, IsoDate, Money, SchemaVersion1, StrictBool, StrictInt, Text
from contracts.topic import EXTERNAL, Topic

Amount = Annotated[Decimal, Money(7)]  # numeric(9,2): up to 9999999.99
Code3 = Annotated[Code, Field(pattern=r"^[0-9A-Z]{3}$")]
Sts11 = Annotated[Code, Field(pattern=r"^[0-9A-Z]{6}$", description="STS11 facility code (6 characters)")]
SourceId = Annotated[Text, Field(max_length=64)]


class SourceModel(BaseModel):
    # no whitespace stripping: a value is taken as sent, or refused, exactly as the schema says
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeliveredService(SourceModel):
    """One outpatient service delivered (prestazione erogata), with its prescription (ricetta) and patient.

    A prescription groups 1-98 services; they share `prescription_id`. Personal data is repeated
    on every service: the loader does not deduplicate it, Flusso C repeats it per row by rule.
    """

    schema_version: SchemaVersion1 = 1
    source_id: SourceId = Field(
        min_length=1,
        max_length=64,
        description="Unique id of this record at the source; idempotency key.",
        examples=["CUP-201-2026-11-000001"],
    )
    ente: Code3 = Field(description="Health entity (ASL / hospital) code, e.g. 201.", examples=["201"])
    region: Code3 = Field(default="150", description="Charging region code (Campania = 150).")
    structure_sts11: Sts11 = Field(description="Delivering structure, STS11.", examples=["000123"])
    structure_type: Literal["1", "2"] = Field(default="1", description="1 public, 2 private accredited.")
    # patient
    patient_cf: CodiceFiscale | None = Field(
        default=None,
        description="Patient codice fiscale (tax code); null only for legal anonymity.",
        examples=["RSSMRA80A01F839W"],
    )
    patient_surname: Text = Field(max_length=60, examples=["ROSSI"])
    patient_name: Text = Field(max_length=60, examples=["MARIO"])
    patient_sex: Literal["M", "F"]
    patient_birth_date: IsoDate
    patient_residence_istat: Code = Field(
        pattern=r"^[0-9]{6}$", description="ISTAT code of the municipality of residence.", examples=["063049"]
    )
    patient_residence_asl: Code3 | None = None
    patient_objection: StrictBool = Field(
        default=False, description="The patient objected to sending spending data to Sistema TS (opposizione)."
    )
    # prescription (ricetta)
    prescription_id: Text = Field(
        min_length=1,
        max_length=20,
        description="ID of the prescription: same for every row, unique per year and structure.",
    )
    prescription_number: Text = Field(
        min_length=1,
        max_length=16,
        description="Prescription number (NRE / barcode), or a progressive for direct access.",
    )
    prescription_date: IsoDate | None = None
    prescriber_code: Text | None = Field(default=None, max_length=16)
    priority: Literal["U", "B", "D", "P"] | None = Field(default=None, description="Priority class U/B/D/P.")
    exemption_code: Text | None = Field(default=None, max_length=6, description="Ticket exemption code (esenzione).")
    delivery_type: Literal["A", "P", "D", "S"] = Field(
        default="S", description="A direct access, P emergency, D internal, S SSN prescription."
    )
    access_type: Literal["1", "2"] | None = Field(default=None, description="1 first access, 2 subsequent access.")
    # service (prestazione)
    catalogue_code: Text = Field(
        min_length=1, max_length=7, description="National catalogue code with dots, or regional.", examples=["89.7"]
    )
    catalogue_coding: Code = Field(
        default="N", pattern=r"^[Na-z]$", description="N national; regional lower-case letter."
    )
    quantity: StrictInt = Field(ge=1, le=999)
    delivery_date: IsoDate = Field(description="Date the service was delivered (for cycles: closing date).")
    booking_date: IsoDate | None = Field(default=None, description="Date the booking was made (data prenotazione).")
    first_offered_date: IsoDate | None = Field(default=None, description="First date offered to the patient.")
    discipline: Text | None = Field(default=None, max_length=3)
    tariff: Amount = Field(description="Unit tariff in euro.")
    ticket: Amount = Field(default=Decimal("0.00"), description="Ticket paid attributed to this service, in euro.")
    pacc: StrictBool = Field(default=False,
                             description="Delivered inside a PACC (complex coordinated outpatient pathway).")
    pacc_start_date: IsoDate | None = None
    regime: Literal["SSN", "ALPI"] = "SSN"


class SpendingItem(SourceModel):
    """One line of a payment document (voce di spesa)."""

    spending_type: Literal["TK", "SR", "SP", "AD", "AS", "CT", "PI", "IC", "AA", "SV", "FC", "FV"] = Field(
        description="Sistema TS tipoSpesa: TK ticket, SR visit / service, ..."
    )
    flag_spending_type: Literal["1", "2"] | None = Field(
        default=None, description="flagTipoSpesa: 1 on the ticket (TK) of an emergency-room (pronto soccorso) "
                                  "service, 2 on an intramoenia (ALPI) service (SR); none otherwise."
    )
    amount: Annotated[Decimal, Money(5, positive=True)]  # numeric(7,2), more than 0
    service_source_ids: list[SourceId] = Field(default_factory=list, max_length=1000,
                                              description="Delivered services this line pays for (1000 at most).")


class PaymentDocument(SourceModel):
    """A fiscal document (invoice or receipt) the entity issued for a payment: the source of the 730."""

    schema_version: SchemaVersion1 = 1
    source_id: SourceId = Field(min_length=1, max_length=64)
    ente: Code3
    structure_sts11: Sts11
    issuer_vat: Code = Field(pattern=r"^[0-9]{11}$", description="VAT number (partita IVA) of the issuer.")
    issue_date: IsoDate
    device: StrictInt = Field(ge=1, le=999, description="Issuing device (dispositivo): the cash register of a D; 1 on "
                                                        "an invoice (F), as Sistema TS wants it.")
    document_number: Code = Field(pattern=r"^[A-Za-z0-9_./\\-]{1,20}$")
    payment_date: IsoDate
    traced_payment: StrictBool = Field(description="Paid with a traceable means (pagamentoTracciato).")
    document_kind: Literal["F", "D"] = Field(default="F", description="F invoice, D commercial document.")
    patient_cf: CodiceFiscale | None = None
    patient_objection: StrictBool = False
    items: list[SpendingItem] = Field(min_length=1, max_length=100)


class IntramoeniaBooking(SourceModel):
    """A booking of an intramoenia (ALPI) service: the source of ALPI TA waiting-time reporting."""

    schema_version: SchemaVersion1 = 1
    source_id: SourceId = Field(min_length=1, max_length=64)
    ente: Code3
    structure_sts11: Sts11
    catalogue_code: Text = Field(min_length=1, max_length=7)
    booking_date: IsoDate
    appointment_date: IsoDate
    priority: Literal["U", "B", "D", "P"] | None = None
    patient_cf: CodiceFiscale | None = None
    index_week: StrictBool = Field(default=False, description="Booked during an AGENAS index week.")


SOURCE_MODELS: dict[str, type[SourceModel]] = {
    "delivered-service": DeliveredService,
    "payment-document": PaymentDocument,
    "intramoenia-booking": IntramoeniaBooking,
}


# ---- topics -------------------------------------------------------------------------------------

TOPICS = [
    Topic("sources.delivered-service", DeliveredService, "source_id",
          "A delivered outpatient service with its prescription and patient.", (EXTERNAL,), ("loader",)),
    Topic("sources.payment-document", PaymentDocument, "source_id",
          "A fiscal document of a payment (source of the 730).", (EXTERNAL,), ("loader",)),
    Topic("sources.intramoenia-booking", IntramoeniaBooking, "source_id",
          "A booking of an intramoenia service (source of ALPI TA).", (EXTERNAL,), ("loader",)),
]




class SourceRecordRejected(BaseModel):
    """A source record the loader could not accept; nothing else in its batch is lost."""

    schema_version: int = 1
    kind: str
    source_id: str | None
    errors: list[dict[str, str]]


TOPICS.append(Topic("sources.record-rejected", SourceRecordRejected, "source_id",
                           "A source record was rejected: each error names the field.", ("loader",), (EXTERNAL,)))


class SourcesStored(BaseModel):
    """Intake watermark: every message of `topic` partition `partition` up to `offset` (inclusive) is
    stored (or rejected, or dead-lettered): an external system learns when its records are in."""

    schema_version: int = 1
    topic: str
    partition: int
    offset: int
    messages: int  # how many of this partition's messages the batch held (up to `offset`)


TOPICS.append(Topic("sources.stored", SourcesStored, "topic_partition",
                    "Intake watermark per source topic partition: the highest offset stored.", ("loader",),
                    (EXTERNAL,)))
