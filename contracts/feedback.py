"""The feedback of a load, line by line: the field names and problem codes a producer may meet.

A load's feedback file (FileRef kind `feedback`, see contracts.flows.FEEDBACK_FORMAT) is a CSV with
one line per problem; `FeedbackLine` is one line, published as schemas/feedback-line.json, with
every `code` the loader's checks can emit (and its severity) and every `field` they name. The
loader's rules are tested against these lists (tests/unit/test_feedback_contract.py): a new check
cannot ship a code or field the contract does not list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

ERROR, WARNING = "error", "warning"

# code -> (severity, what it means)
PROBLEM_CODES: dict[str, tuple[str, str]] = {
    "DATE_OUTSIDE_PERIOD": (ERROR, "The service is dated after the period, or before the previous one."),
    "DELIVERY_BEFORE_PRESCRIPTION": (ERROR, "The service was delivered before it was prescribed."),
    "BOOKING_AFTER_DELIVERY": (ERROR, "The service was booked after it was delivered."),
    "BIRTH_AFTER_DELIVERY": (ERROR, "The patient was born after the service."),
    "UNKNOWN_SERVICE_CODE": (ERROR, "The service code is not in the catalogue of the load's version."),
    "QUANTITY_NOT_POSITIVE": (ERROR, "The quantity is below 1."),
    "AMOUNT_NEGATIVE": (ERROR, "An amount (tariff, ticket) is negative."),
    "AMOUNT_TOO_LARGE": (ERROR, "An amount overflows its field in the flow (8 characters total, 7 ticket)."),
    "TARIFF_DIFFERS_FROM_CATALOGUE": (WARNING, "The tariff differs from the catalogue's."),
    "TOO_MANY_SERVICES": (ERROR, "The service is beyond row 98 of its prescription (row 99 closes it)."),
    "STRUCTURE_NOT_IN_ENTE": (ERROR, "The structure (STS11) belongs to another entity."),
    "STRUCTURE_TYPE_DIFFERS": (ERROR, "The structure type (1 public, 2 private accredited) differs from the one the "
                                      "regional registry of structures gives the structure."),
    "ANONYMOUS_PATIENT_NAMED": (ERROR, "The codice fiscale is blank (legal anonymity only) but the surname is not "
                                       "ANONIMO: the file would name a protected patient."),
    "SURNAME_TOO_LONG": (WARNING, "The surname, transliterated to ASCII, is longer than its field: it is cut."),
    "NAME_TOO_LONG": (WARNING, "The name, transliterated to ASCII, is longer than its field: it is cut."),
    "CHARSET": (ERROR, "A text the flow's fixed-width layout writes holds a character with no ASCII transliteration "
                       "(Cyrillic, Greek, CJK, a backslash): the file could not be written."),
    "VALUE_NOT_ALLOWED": (ERROR, "A text the flow's fixed-width layout writes is not one of the values its field "
                                 "allows (C PACC: a regional coding letter, a-z)."),
    "VALUE_TOO_LONG": (ERROR, "A text the flow's fixed-width layout writes is longer than its field once "
                              "transliterated to ASCII, and the field does not cut it."),
    "EXEMPTION_REQUIRED": (ERROR, "An SSN prescription with no ticket paid has no exemption code."),
    "AMOUNT_ARITHMETIC": (ERROR, "The ticket paid exceeds the value of the services plus the fixed fee."),
    "DUPLICATE_PRESCRIPTION_NUMBER": (ERROR, "The prescription number is used by another prescription (ID), "
                                             "letter case aside (the file writes it upper case)."),
    "DUPLICATE_PRESCRIPTION_ID": (ERROR, "The prescription ID is another prescription's but for letter case: "
                                         "written upper case, the file would hold one key twice."),
    "PRESCRIPTION_ID_BLANK": (ERROR, "The prescription ID is made of spaces only: the file would write it blank."),
    "PRESCRIPTION_NUMBER_CHARACTERS": (ERROR, "The prescription number (NRE, barcode or progressive) holds a "
                                              "character other than a letter or a digit."),
    "PRESCRIPTION_FIELD_DIFFERS": (ERROR, "The services of one prescription disagree on a value row 99 or every "
                                          "C1 record of it carries."),
    "APPOINTMENT_BEFORE_BOOKING": (ERROR, "The appointment is before the booking."),
    "WAITING_DAYS_TOO_MANY": (ERROR, "The appointment is more than 999 days after the booking: ALPI TA writes the "
                                     "days of waiting in 3 digits."),
    "PAYMENT_AFTER_PERIOD": (ERROR, "The payment is dated after the period."),
    "TS730_RULE": (ERROR, "The payment document breaks a rule of the 730 file (the Sistema TS specification or "
                          "730_precompilata.xsd): the formatter would refuse it. The message says which."),
    "TS730_NO_VAT": (WARNING, "A spending item paid from 2021 on has a tipoSpesa with no VAT nature the platform can "
                              "give (only the exempt health services TK, SR, SP) and the source carries no rate: "
                              "Sistema TS will refuse the document."),
    "DUPLICATE_DOCUMENT": (ERROR, "The payment document's idSpesa (partita IVA, issue date, device, number) is "
                                  "another document's of the load: Sistema TS would take one as a duplicate."),
    "CF_FORMAT": (ERROR, "The codice fiscale is not 16 well-placed letters and digits."),
    "CF_CHECK_CHAR": (ERROR, "The check character of the codice fiscale is wrong (omocodia allowed)."),
    "CF_BIRTH_MISMATCH": (ERROR, "The birth date differs from the one the codice fiscale encodes."),
    "CF_SEX_MISMATCH": (ERROR, "The sex differs from the one the codice fiscale encodes."),
    "NO_SOURCE_DATA": (WARNING, "The entity has no source data for the period: the load is empty. The line's "
                                "record_key is `*` (the whole load) and its field `period`."),
}

# field -> what it is: the source record's field the problem is about (or `row_number`, `period`)
FEEDBACK_FIELDS: dict[str, str] = {
    "delivery_date": "delivered service: date of delivery",
    "booking_date": "delivered service: date of booking",
    "patient_birth_date": "delivered service: patient's birth date",
    "patient_cf": "any record: patient's codice fiscale",
    "patient_surname": "delivered service: patient's surname",
    "patient_name": "delivered service: patient's name",
    "patient_sex": "delivered service: patient's sex",
    "catalogue_code": "delivered service, booking: service code",
    "quantity": "delivered service: quantity",
    "tariff": "delivered service: unit tariff (or a total built from it)",
    "ticket": "delivered service: ticket (or the prescription's ticket)",
    "row_number": "delivered service: its row in the prescription (01..98)",
    "structure_sts11": "any record: structure (STS11)",
    "structure_type": "delivered service: structure type (1 public, 2 private accredited)",
    "exemption_code": "prescription: exemption code",
    "prescription_number": "prescription: number (NRE)",
    "delivery_type": "prescription: delivery type",
    "priority": "prescription: priority class",
    "appointment_date": "booking: appointment date",
    "payment_date": "payment document: payment date",
    "issuer_vat": "payment document: the issuer's partita IVA",
    "issue_date": "payment document: issue date",
    "device": "payment document: device (cash register; 1 for an invoice)",
    "document_number": "payment document: number",
    "document_kind": "payment document: kind (F invoice, D receipt)",
    "items": "payment document: its spending items (voci di spesa)",
    "period": "the whole load: its entity and period",
    "region": "delivered service: charging region",
    "ente": "any record: entity (ASL / hospital)",
    "prescriber_code": "delivered service: prescriber",
    "patient_residence_istat": "delivered service: patient's municipality of residence (ISTAT)",
    "patient_residence_asl": "delivered service: patient's ASL of residence",
    "prescription_id": "prescription: ID",
    "catalogue_coding": "delivered service: catalogue coding (N or a regional letter)",
    "discipline": "delivered service: discipline",
    "access_type": "delivered service: first or subsequent access",
    "source_id": "booking: its source id (ALPI TA writes it)",
}

RECORD_KEY_DESCRIPTION = (
    "Names the record: `<source_id>@<prescription_id>/<row>` for a service row, where row is the row "
    "number in the prescription, 2 digits (`01`..`98`) and never cut: a 100th service is `/100`; "
    "`<source_id of its FIRST row>@<prescription_id>/99` for a problem of a whole prescription (row 99 "
    "carries totals, ticket and exemption); `<source_id>` for a booking or a payment document; `*` for "
    "the whole load (NO_SOURCE_DATA)."
)


def _listed(listing: Mapping[str, object], what: str) -> Any:
    """A string that must be one of `listing`'s keys, published as an enum."""
    def check(value: str) -> str:
        if value not in listing:
            raise ValueError(f"not a {what} of the contract: {value!r}")
        return value

    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", "enum": list(listing)})]


ProblemCode = _listed(PROBLEM_CODES, "problem code")  # type: Any
FeedbackField = _listed(FEEDBACK_FIELDS, "feedback field")  # type: Any


class FeedbackLine(BaseModel):
    """One line of a load's feedback CSV (`record_key;field;code;severity;message`): one problem."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record_key: str = Field(min_length=1, max_length=200, description=RECORD_KEY_DESCRIPTION,
                            examples=["CUP-201-2026-11-000001@150A0000000001/01"])
    field: FeedbackField = Field(description="The field the problem is about: "
                                 + "; ".join(f"`{k}` {v}" for k, v in FEEDBACK_FIELDS.items()) + ".")
    code: ProblemCode = Field(description="What is wrong: "
                              + "; ".join(f"`{k}` ({s}) {d}" for k, (s, d) in PROBLEM_CODES.items()))
    severity: Literal["error", "warning"] = Field(
        description="`error` blocks the load (Failed loading); `warning` does not. Each code has one severity, "
                    "given in the description of `code`.")
    message: str = Field(min_length=1, description="Text for the operators, in Italian, naming the offending "
                                                   "values (and, where there is one, the expected value). Not an "
                                                   "identifier: match on `code` and `field`, never on the message.",
                         examples=["il carattere di controllo del codice fiscale RSSMRA80A01F839X dovrebbe essere W, "
                                   "non X"])
