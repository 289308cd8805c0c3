"""Source data ("Fonti dati") published by the CUP: what was delivered, paid and booked.

These are the edge models an external system (the regional CUP, SINFONIA) publishes on the
`sources.*` topics, one record per message, key = the source record id. The loader stores them
idempotently by `source_id`; a record that fails validation gets a `SourceRecordRejected` event
naming the field.

Amounts are decimals in euro with two decimals, dates ISO 8601.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Money = Annotated[Decimal, Field(ge=0, max_digits=9, decimal_places=2)]
Code3 = Annotated[str, Field(pattern=r"^[0-9A-Z]{3}$")]
Sts11 = Annotated[str, Field(pattern=r"^[0-9A-Z]{6}$", description="STS11 facility code (6 characters)")]


class SourceModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class DeliveredService(SourceModel):
    """One outpatient service delivered (prestazione erogata), with its prescription (ricetta) and patient.

    A prescription groups 1-98 services; they share `prescription_id`. Personal data is repeated
    on every service: the loader does not deduplicate it, Flusso C repeats it per row by rule.
    """

    schema_version: Literal[1] = 1
    source_id: str = Field(
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
    patient_cf: str | None = Field(
        default=None,
        max_length=16,
        description="Patient codice fiscale (tax code); null only for legal anonymity.",
        examples=["RSSMRA80A01F839W"],
    )
    patient_surname: str = Field(max_length=60, examples=["ROSSI"])
    patient_name: str = Field(max_length=60, examples=["MARIO"])
    patient_sex: Literal["M", "F"]
    patient_birth_date: date
    patient_residence_istat: str = Field(
        pattern=r"^[0-9]{6}$", description="ISTAT code of the municipality of residence.", examples=["063049"]
    )
    patient_residence_asl: str | None = Field(default=None, max_length=3)
    patient_objection: bool = Field(
        default=False, description="The patient objected to sending spending data to Sistema TS (opposizione)."
    )
    # prescription (ricetta)
    prescription_id: str = Field(
        min_length=1,
        max_length=20,
        description="ID of the prescription: same for every row, unique per year and structure.",
    )
    prescription_number: str = Field(
        min_length=1,
        max_length=16,
        description="Prescription number (NRE / barcode), or a progressive for direct access.",
    )
    prescription_date: date | None = None
    prescriber_code: str | None = Field(default=None, max_length=16)
    priority: Literal["U", "B", "D", "P"] | None = Field(default=None, description="Priority class U/B/D/P.")
    exemption_code: str | None = Field(default=None, max_length=6, description="Ticket exemption code (esenzione).")
    delivery_type: Literal["A", "P", "D", "S"] = Field(
        default="S", description="A direct access, P emergency, D internal, S SSN prescription."
    )
    access_type: Literal["1", "2"] | None = Field(default=None, description="1 first access, 2 subsequent access.")
    # service (prestazione)
    catalogue_code: str = Field(
        min_length=1, max_length=7, description="National catalogue code with dots, or regional.", examples=["89.7"]
    )
    catalogue_coding: str = Field(
        default="N", pattern=r"^[Na-z]$", description="N national; regional lower-case letter."
    )
    quantity: int = Field(ge=1, le=999)
    delivery_date: date = Field(description="Date the service was delivered (for cycles: closing date).")
    booking_date: date | None = Field(default=None, description="Date the booking was made (data prenotazione).")
    first_offered_date: date | None = Field(default=None, description="First date offered to the patient.")
    discipline: str | None = Field(default=None, max_length=3)
    tariff: Money = Field(description="Unit tariff in euro.")
    ticket: Money = Field(default=Decimal("0.00"), description="Ticket paid attributed to this service, in euro.")
    pacc: bool = Field(default=False, description="Delivered inside a PACC (complex coordinated outpatient pathway).")
    pacc_start_date: date | None = None
    regime: Literal["SSN", "ALPI"] = "SSN"


class SpendingItem(SourceModel):
    """One line of a payment document (voce di spesa)."""

    spending_type: Literal["TK", "SR", "SP", "AD", "AS", "CT", "PI", "IC", "AA", "SV", "FC", "FV"] = Field(
        description="Sistema TS tipoSpesa: TK ticket, SR visit / service, ..."
    )
    flag_spending_type: Literal["1", "2"] | None = Field(
        default=None, description="flagTipoSpesa: 2 for intramoenia (ALPI) services."
    )
    amount: Annotated[Decimal, Field(gt=0, max_digits=7, decimal_places=2)]
    service_source_ids: list[str] = Field(default_factory=list, description="Delivered services this line pays for.")


class PaymentDocument(SourceModel):
    """A fiscal document (invoice or receipt) the entity issued for a payment: the source of the 730."""

    schema_version: Literal[1] = 1
    source_id: str = Field(min_length=1, max_length=64)
    ente: Code3
    structure_sts11: Sts11
    issuer_vat: str = Field(pattern=r"^[0-9]{11}$", description="VAT number (partita IVA) of the issuer.")
    issue_date: date
    device: int = Field(ge=1, le=999, description="Issuing device (dispositivo).")
    document_number: str = Field(pattern=r"^[A-Za-z0-9_./\\-]{1,20}$")
    payment_date: date
    traced_payment: bool = Field(description="Paid with a traceable means (pagamentoTracciato).")
    document_kind: Literal["F", "D"] = Field(default="F", description="F invoice, D commercial document.")
    patient_cf: str | None = Field(default=None, max_length=16)
    patient_objection: bool = False
    items: list[SpendingItem] = Field(min_length=1)


class IntramoeniaBooking(SourceModel):
    """A booking of an intramoenia (ALPI) service: the source of ALPI TA waiting-time reporting."""

    schema_version: Literal[1] = 1
    source_id: str = Field(min_length=1, max_length=64)
    ente: Code3
    structure_sts11: Sts11
    catalogue_code: str = Field(min_length=1, max_length=7)
    booking_date: date
    appointment_date: date
    priority: Literal["U", "B", "D", "P"] | None = None
    patient_cf: str | None = Field(default=None, max_length=16)
    index_week: bool = Field(default=False, description="Booked during an AGENAS index week.")


SOURCE_MODELS: dict[str, type[SourceModel]] = {
    "delivered-service": DeliveredService,
    "payment-document": PaymentDocument,
    "intramoenia-booking": IntramoeniaBooking,
}
