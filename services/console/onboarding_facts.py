"""The facts of a document the desk declares when it uploads it on the console, as the CLI's `--meta key=value`.

A non-tracciato document (a resolution, an act, a form) is judged on facts declared with it: the rules of its type
in the requirements data (`present`, `yes`, `one-of:a|b`, `date`, `window`, `sts11`). Each rule becomes one field
with the input it needs, labelled in Italian (labels.FACT_LABELS); what is read from the form is the metadata the
CLI passes, so the onboarding service assesses the document at once with the same events and findings.

- A field left empty is not declared, as a `--meta` not written: the rule's own finding ("manca") says so once
  any other fact of the document is declared; a document with none declared waits for the desk's verdict.
- A value of the wrong shape (a date that is no date, a window like 25:00-26:00, an STS11 of 5 characters, a
  choice the form does not offer) is the declarer's slip, not a fact of the document: the page says it, naming
  the field, and nothing is recorded. Recorded, it would be a finding the structure reads against its document,
  and the same file sent again for the same slot is the same document (a no-op): the slip could not be undone.
  The words are the rule's own (`broken_rule`), so the form refuses exactly what the rule would call malformed.
- A "no" to a yes question (not signed, not on letterhead) is a fact: declared, it is the finding it gives.
- Without JavaScript every document type's facts are on the page (a fieldset each); only the chosen type's are
  read, and facts filled for another type are refused, naming them, rather than silently dropped.

Pure: no I/O, no request; tests/unit/test_console_fact_fields.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from contracts.onboarding import document_label
from services.console.labels import CREDENTIALS_OPTIONS, FACT_LABELS
from services.onboarding.facade import DocumentType, broken_rule

YES, NO = "yes", "no"
# The values a one-of rule offers, in Italian where the value is not already what people say (an annex, "B1").
VALUE_LABELS = {YES: "sì", NO: "no", **CREDENTIALS_OPTIONS}
# The input each rule needs: a yes/no choice, a select of the allowed values, a date, a time window, an STS11 code.
WIDGETS = {"present": "text", "yes": "yesno", "one-of": "select", "date": "date", "window": "window",
           "sts11": "sts11"}
HELP = {"window": "OO:MM-OO:MM, per esempio 09:00-11:00", "sts11": "codice STS11: 6 caratteri, lettere e cifre"}
PREFIX = "dato"  # form fields: dato:<choice>:<key>


@dataclass(frozen=True)
class FactField:
    """One declared fact of one document choice (a document type, or a SPOKE's slot) as a form field."""

    choice: str  # the upload's `tipo`: a document type id or a slot (spoke-closure-act:150456)
    key: str  # the metadata key (protocol, signed ...), as the CLI's --meta
    rule: str
    label: str
    widget: str  # text | yesno | select | date | window | sts11
    options: tuple[tuple[str, str], ...] = ()  # (value, Italian label) of a select or a yes/no choice
    help: str | None = None

    @property
    def name(self) -> str:
        return f"{PREFIX}:{self.choice}:{self.key}"

    @property
    def id(self) -> str:
        """An HTML id of letters, digits and dashes (a slot's colon is not one)."""
        return f"{PREFIX}-{self.choice.replace(':', '-')}-{self.key.replace('_', '-')}"


def fact_label(key: str) -> str:
    return FACT_LABELS.get(key, key)


def value_label(value: str) -> str:
    return VALUE_LABELS.get(value, value)


def fact_fields(choice: str, doc_type: DocumentType, named: Mapping[str, str]) -> list[FactField]:
    """The facts `doc_type`'s rules ask for, in the data's order, as fields of the upload of `choice`. A SPOKE's
    slot already says which SPOKE its act is for (`named`: the service declares it from the slot): not asked."""
    fields = []
    for key, rule in doc_type.meta.items():
        if key in named:
            continue
        name, _, arg = rule.partition(":")
        widget = WIDGETS[name]
        options: tuple[tuple[str, str], ...] = ()
        if widget == "yesno":
            options = ((YES, value_label(YES)), (NO, value_label(NO)))
        elif widget == "select":
            options = tuple((value, value_label(value)) for value in arg.split("|"))
        fields.append(FactField(choice, key, rule, fact_label(key), widget, options, HELP.get(widget)))
    return fields


def _shape_error(field: FactField, value: str) -> str | None:
    """What is wrong with a declared value that its input could not have given, or None (a "no" is a fact)."""
    if field.widget == "yesno":
        return None if value in (YES, NO) else f"è {value!r}, deve essere sì o no"
    if field.widget in ("select", "date", "window", "sts11"):
        return broken_rule(field.rule, value)
    return None


def read_facts(form: Mapping[str, str], choice: str,
               fields_by_choice: Mapping[str, list[FactField]]) -> tuple[dict[str, str], dict[str, str]]:
    """The metadata declared for `choice` (only the fields filled in, stripped, as `--meta key=value`), and the
    errors by field name (each naming its field in Italian). Errors mean nothing is to be recorded."""
    metadata: dict[str, str] = {}
    errors: dict[str, str] = {}
    for field in fields_by_choice.get(choice, []):
        value = str(form.get(field.name) or "").strip()
        if not value:
            continue
        broken = _shape_error(field, value)
        if broken:
            errors[field.name] = f"{field.label}: {broken}."
        else:
            metadata[field.key] = value
    for other, fields in fields_by_choice.items():
        if other == choice:
            continue
        for field in fields:
            if str(form.get(field.name) or "").strip():
                errors[field.name] = (f"{field.label} di «{document_label(other)}»: compilato, ma il documento "
                                      f"caricato è «{document_label(choice)}»; scelga il tipo giusto o svuoti il "
                                      "campo.")
    return metadata, errors


def declared(metadata: Mapping[str, str], doc_type: DocumentType, named: Mapping[str, str]) -> list[tuple[str, str]]:
    """A received document's declared facts as (Italian label, value) for its row on the page, in its rules' order
    (the event's metadata comes back from PostgreSQL in its own): not what its slot names (`named`: the SPOKE, which
    the row says) nor the sheet of a workbook's tracciato (the service's)."""
    keys = [k for k in doc_type.meta if k in metadata] + sorted(set(metadata) - set(doc_type.meta))
    return [(fact_label(key), value_label(metadata[key])) for key in keys if key not in named and key != "sheet"]


def declared_names(form: Mapping[str, str]) -> list[str]:
    """The fact fields of an upload that carry a value: those a structure's user may not send."""
    return [name for name in form if name.startswith(f"{PREFIX}:") and str(form.get(name) or "").strip()]
